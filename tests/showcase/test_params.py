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
