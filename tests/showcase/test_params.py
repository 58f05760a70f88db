"""Parameter parsing and bounds shared by the twins."""

from __future__ import annotations

from django.http import QueryDict
from django.test import SimpleTestCase, override_settings

from apps.showcase import params
from apps.showcase.params import IntParam, ParamError


class IntParamTests(SimpleTestCase):
    param = IntParam("n", default=5, low=-3, high=10)

    def test_default_when_absent(self):
        self.assertEqual(self.param.parse(QueryDict("other=1")), 5)

    def test_bounds_are_inclusive(self):
        self.assertEqual(self.param.parse(QueryDict("n=-3")), -3)
        self.assertEqual(self.param.parse(QueryDict("n=10")), 10)
        self.assertEqual(self.param.parse(QueryDict("n=%2B7")), 7)

    def test_last_value_wins(self):
        self.assertEqual(self.param.parse(QueryDict("n=1&n=2")), 2)

    def test_refusals_say_what_is_wrong(self):
        cases = [
            ("n=11", "n must be between -3 and 10, got 11"),
            ("n=-4", "n must be between -3 and 10, got -4"),
            ("n=", "n must be an integer, got ''"),
            ("n=%201", "n must be an integer, got ' 1'"),
            ("n=0x1", "n must be an integer, got '0x1'"),
            ("n=" + "9" * 13, "n must be an integer"),
            ("n=\u0663", "n must be an integer"),  # an Arabic-Indic digit: int() would take it
        ]
        for query, message in cases:
            with self.subTest(query=query):
                with self.assertRaisesMessage(ParamError, message) as caught:
                    self.param.parse(QueryDict(query))
                self.assertEqual(caught.exception.status, 400)

    def test_echo_of_the_bad_value_is_shortened(self):
        with self.assertRaises(ParamError) as caught:
            self.param.parse(QueryDict("n=" + "x" * 1000))
        self.assertLess(len(caught.exception.message), 100)


class StreamParamsTests(SimpleTestCase):
    def test_defaults(self):
        self.assertEqual(params.stream(QueryDict()), (5, 200))

    def test_whole_stream_is_bounded(self):
        self.assertEqual(params.stream(QueryDict("events=61&interval=1000")), (61, 1000))
        with self.assertRaisesMessage(ParamError, "got 61 x 1000 ms"):
            params.stream(QueryDict("events=62&interval=1000"))


class ItemParamsTests(SimpleTestCase):
    def test_item_id_is_optional(self):
        self.assertIsNone(params.item_id(QueryDict()))
        self.assertEqual(params.item_id(QueryDict("id=12")), 12)

    def test_new_item_defaults(self):
        self.assertEqual(params.new_item(QueryDict()), ("posted", 0))
        self.assertEqual(params.new_item(QueryDict("name=a%20b&value=-9")), ("a b", -9))


class UploadLimitTests(SimpleTestCase):
    def test_default_limit(self):
        self.assertEqual(params.upload_max_bytes(), 64 * 1024 * 1024)

    @override_settings(SHOWCASE_UPLOAD_MAX_BYTES=10)
    def test_setting_overrides_the_limit(self):
        self.assertEqual(params.upload_max_bytes(), 10)

    def test_declared_length(self):
        self.assertIsNone(params.declared_length({}, 10))
        self.assertIsNone(params.declared_length({"CONTENT_LENGTH": ""}, 10))
        self.assertEqual(params.declared_length({"CONTENT_LENGTH": "10"}, 10), 10)

    def test_declared_length_over_the_limit_is_a_413(self):
        with self.assertRaisesMessage(ParamError, "body of 11 bytes is over the limit") as caught:
            params.declared_length({"CONTENT_LENGTH": "11"}, 10)
        self.assertEqual(caught.exception.status, 413)

    def test_malformed_length_is_a_400(self):
        for raw in ("-1", "ten", "1e3"):
            with self.subTest(raw=raw), self.assertRaises(ParamError) as caught:
                params.declared_length({"CONTENT_LENGTH": raw}, 10)
            self.assertEqual(caught.exception.status, 400)


class JsonItemTests(SimpleTestCase):
    def test_json_item(self):
        self.assertEqual(params.new_item_json(b'{"name": "j", "value": -4}'), ("j", -4))
        self.assertEqual(params.new_item_json(b"{}"), ("posted", 0))

    def test_refused_json_names_the_problem(self):
        cases = {
            b'{"name": "x", "value":': "JSON body is malformed: Expecting value at character 22",
            b"[1, 2]": "JSON body must be an object, got list",
            b'{"name": "\xff"}': "JSON body is not UTF-8 (byte 10)",
            b"[" * 100_000: "JSON body is nested too deeply",
            b'{"value": ' + b"9" * 10_000 + b"}": "JSON body is refused: Exceeds the limit",
            b'{"name": 7}': "name must be a string, got int",
            b'{"value": "7"}': "value must be an integer, got str",
            b'{"value": true}': "value must be an integer, got bool",
            b'{"value": 4294967296}': "value must be between",
            b'{"name": ""}': "name must be 1 to 100 printable characters",
        }
        for body, message in cases.items():
            with self.subTest(body=body[:30]), self.assertRaisesMessage(ParamError, message) as e:
                params.new_item_json(body)
            self.assertEqual(e.exception.status, 400)

    def test_is_json_reads_the_media_type_only(self):
        self.assertTrue(params.is_json({"CONTENT_TYPE": "application/json; charset=utf-8"}))
        self.assertTrue(params.is_json({"CONTENT_TYPE": "Application/JSON"}))
        self.assertFalse(params.is_json({"CONTENT_TYPE": "application/x-www-form-urlencoded"}))
        self.assertFalse(params.is_json({}))


class CompleteBodyTests(SimpleTestCase):
    def test_whole_or_undeclared_bodies_pass(self):
        params.complete_body({"CONTENT_LENGTH": "5"}, 5)
        params.complete_body({}, 0)
        params.complete_body({"CONTENT_LENGTH": ""}, 3)

    def test_body_shorter_than_declared_is_a_400(self):
        with self.assertRaisesMessage(ParamError, "body ended after 9 of 50 bytes") as caught:
            params.complete_body({"CONTENT_LENGTH": "50"}, 9)
        self.assertEqual(caught.exception.status, 400)
