"""lab.hostile: case files, payload templates, the layer classifier and the CLI."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.hostile import __main__ as cli
from lab.hostile.corpus import (
    CORPUS_DIR,
    Case,
    CaseError,
    load_corpus,
    multipart_files,
    parse_case,
    select,
)
from lab.hostile.replay import (
    APP,
    GUNICORN,
    NGINX,
    NOBODY,
    UVICORN,
    Answer,
    classify,
    exchange,
    judge,
    parse_responses,
    replay,
)

GET = b"about: A plain GET.\nexpect: 2xx\nwhy: it is fine\n---\nGET / HTTP/1.1\nHost: {{host}}\n\n"


def answer_of(raw: bytes) -> Answer:
    """Return the Answer for bytes a server sent, then closed."""
    responses, _ = parse_responses(raw, closed=True)
    return Answer(raw, responses, "answered" if responses else "closed", 0.0)


# --- Case files ------------------------------------------------------------------------------


def test_the_corpus_loads_and_is_large() -> None:
    cases = load_corpus()
    assert len(cases) >= 60
    assert sum(case.smuggle for case in cases) >= 5
    assert len({case.id for case in cases}) == len(cases)


def test_crlf_is_applied_unless_the_case_says_no() -> None:
    crlf = parse_case(GET, "001-get.http")
    bare = parse_case(GET.replace(b"why: it is fine\n", b"why: ok\ncrlf: no\n"), "002-get.http")
    assert crlf.payload("example.org") == b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
    assert bare.payload("example.org") == b"GET / HTTP/1.1\nHost: example.org\n\n"


def test_the_bare_lf_cases_of_the_corpus_keep_their_bytes() -> None:
    case = select(load_corpus(), ["bare-lf-line-endings"])[0]
    assert b"\r" not in case.payload()


def test_metadata_is_parsed() -> None:
    text = (
        b"about: Hidden.\nexpect: 4xx 501 closed\nwhy: unknown coding\nrefute: secret\n"
        b"gap: uvicorn gunicorn-asgi\nhalf-close: yes\ntimeout: 1.5\nsmuggle: yes\n---\n"
        b"POST / HTTP/1.1\n\nGET {{smuggle}} HTTP/1.1\n\n"
    )
    case = parse_case(text, "007-hidden.http")
    assert (case.id, case.name, case.label) == ("007", "hidden", "007-hidden")
    assert case.expect == ("4xx", "501", "closed")
    assert (case.refute, case.half_close, case.timeout, case.smuggle) == ("secret", True, 1.5, True)
    assert case.gap == frozenset({"uvicorn", "gunicorn-asgi"})
    assert b"GET /smuggled-abc-007/ HTTP/1.1" in case.payload(tag="abc")


@pytest.mark.parametrize(
    ("text", "filename", "message"),
    [
        (GET, "get.http", "named NNN-name.http"),
        (b"about: x\nexpect: 4xx\nGET / HTTP/1.1\n", "001-a.http", "no line '---'"),
        (b"about: x\nexpect: 4xx\ncolour: red\n---\n", "001-a.http", "expected one of"),
        (b"about: x\nabout: y\nexpect: 4xx\n---\n", "001-a.http", "about is given twice"),
        (b"expect: 4xx\n---\n", "001-a.http", "about is required"),
        (b"about: x\nexpect: 4xx maybe\n---\n", "001-a.http", "'maybe' is not a status"),
        (b"about: x\nexpect: 200\n---\n", "001-a.http", "say why"),
        (b"about: x\nexpect: 4xx\nsmuggle: yes\n---\nGET /\n", "001-a.http", "no {{smuggle}}"),
        (b"about: x\nexpect: 4xx\ncrlf: maybe\n---\n", "001-a.http", "crlf must be yes or no"),
        (b"about: x\nexpect: 4xx\ngap: apache\n---\n", "001-a.http", "unknown servers"),
        (b"about: x\nexpect: 4xx\ntimeout: 99\n---\n", "001-a.http", "at most 30 s"),
        (b"about: x\nexpect: 4xx\n---\n{{nope}}", "001-a.http", "unknown placeholder"),
        (b"about: x\nexpect: 4xx\n---\n{{hex:zz}}", "001-a.http", "no hex bytes"),
        (b"about: x\nexpect: 4xx\n---\n{{repeat:a:99999999}}", "001-a.http", "beyond"),
        (b"about: x\nexpect: 4xx\n---\nCL: {{body-length}}", "001-a.http", "blank line"),
    ],
)
def test_a_bad_case_file_is_refused_with_its_name(text: bytes, filename: str, message: str) -> None:
    with pytest.raises(CaseError, match=message) as caught:
        parse_case(text, filename)
    assert filename in str(caught.value)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001-a.http").write_bytes(GET)
    (tmp_path / "001-b.http").write_bytes(GET)
    with pytest.raises(CaseError, match="001-b: id 001 is also used by 001-a"):
        load_corpus(tmp_path)


def test_select_by_id_name_or_label_and_refuse_unknown() -> None:
    cases = load_corpus()
    picked = select(cases, ["001", "trace-method", "041-duplicate-host"])
    assert [case.label for case in picked] == [
        "001-lowercase-method",
        "018-trace-method",
        "041-duplicate-host",
    ]
    assert select(cases, []) == cases
    with pytest.raises(CaseError, match="no such case: nothing-here"):
        select(cases, ["nothing-here"])


# --- Templates -------------------------------------------------------------------------------


def template(body: str) -> Case:
    """Return a case whose request is `body` (LF kept as LF)."""
    return parse_case(f"about: t\nexpect: 4xx\ncrlf: no\n---\n{body}".encode(), "001-t.http")


def test_repeat_hex_and_bare_line_ends() -> None:
    case = template("a{{repeat:xy:3}}{{hex:000d0a}}{{cr}}{{lf}}")
    assert case.payload() == b"axyxyxy\x00\r\n\r\n"


def test_body_length_counts_the_expanded_body() -> None:
    case = template("POST / HTTP/1.1\nContent-Length: {{body-length}}\n\n{{repeat:a=1&:1001}}")
    head, body = case.payload().split(b"\n\n", 1)
    assert len(body) == 4004
    assert head.endswith(b"Content-Length: 4004")


def test_headers_and_files_generators() -> None:
    headers = template("{{headers:3:5}}").payload()
    assert headers == b"X-Hostile-0: aaaaa\r\nX-Hostile-1: aaaaa\r\nX-Hostile-2: aaaaa\r\n"
    files = multipart_files(101)
    assert files.count(b'filename="f.txt"') == 101
    assert files.endswith(b"--hostile--\r\n")


# --- Reading answers and the classifier --------------------------------------------------------


NGINX_400 = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 59\r\nConnection: close\r\n\r\n"
    b"<html><center>400 Bad Request</center><center>nginx</center>"
)
GUNICORN_400 = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/html\r\n"
    b"Content-Length: 40\r\n\r\n<html><h1><p>Bad Request</p></h1></html>"
)
GUNICORN_ASGI_501 = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
    b"Connection: close\r\n\r\nfrob"
)
UVICORN_400 = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 30\r\nconnection: close\r\n\r\nInvalid HTTP request received."
)
# gunicorn's refusal of a request line, passed on by nginx: its words are close to uvicorn's.
GUNICORN_400_VIA_NGINX = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 69\r\n\r\n"
    b"<html><h1><p>Bad Request</p></h1>Invalid HTTP request line: ''</html>"
)
APP_404_VIA_NGINX = (
    b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nX-Request-ID: 0123abcd\r\nX-Interface: wsgi\r\n\r\n{}"
)
DJANGO_ASGI_400 = (
    b"HTTP/1.1 400 Bad Request\r\nserver: uvicorn\r\ncontent-type: text/html\r\n"
    b"content-length: 26\r\n\r\n<h1>Bad Request (400)</h1>"
)


@pytest.mark.parametrize(
    ("raw", "layer"),
    [
        (NGINX_400, NGINX),
        (GUNICORN_400, GUNICORN),
        (GUNICORN_ASGI_501, GUNICORN),
        (GUNICORN_400_VIA_NGINX, GUNICORN),
        (GUNICORN_ASGI_501.replace(b"Connection: close", b"Server: nginx"), GUNICORN),
        (UVICORN_400, UVICORN),
        (APP_404_VIA_NGINX, APP),
        (DJANGO_ASGI_400, APP),
        (b"", NOBODY),
    ],
)
def test_classifier_names_the_layer(raw: bytes, layer: str) -> None:
    assert classify(answer_of(raw)) == layer


def test_parse_responses_handles_chunked_and_pipelined_answers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        + APP_404_VIA_NGINX
    )
    responses, complete = parse_responses(chunked, closed=False)
    assert complete
    assert [(r.status, r.body) for r in responses] == [
        (200, b"5\r\nhello\r\n0\r\n\r\n"),
        (404, b"{}"),
    ]
    responses, complete = parse_responses(APP_404_VIA_NGINX[:-1], closed=False)
    assert (responses, complete) == ([], False)


def test_judge_accepts_only_what_the_case_expects() -> None:
    case = parse_case(b"about: x\nexpect: 4xx closed\n---\nGET /\n", "001-a.http")
    assert judge(case, answer_of(NGINX_400), NGINX) == []
    assert judge(case, answer_of(b""), NOBODY) == []
    app_500 = APP_404_VIA_NGINX.replace(b"404 Not Found", b"500 Internal Server Error")
    assert judge(case, answer_of(app_500), APP) == [
        "answered 500, expected 4xx or closed",
        "the app answered 500",
    ]
    traceback = GUNICORN_400.replace(b"<html><h1><p>Bad Requ", b"Traceback (most recen")
    assert "a traceback in the answer" in judge(case, answer_of(traceback), GUNICORN)


def test_judge_flags_a_served_hidden_request_and_refuted_text() -> None:
    case = parse_case(
        b"about: x\nexpect: 4xx\nrefute: {}\nsmuggle: yes\n---\nGET {{smuggle}}\n", "001-a.http"
    )
    problems = judge(case, answer_of(APP_404_VIA_NGINX * 2), APP)
    assert problems == [
        "the answer contains '{}'",
        "the answer contains '{}'",
        "2 responses: the hidden request was served",
    ]


# --- Against a socket, and the CLI -------------------------------------------------------------


class CannedHandler(socketserver.BaseRequestHandler):
    """Answer a request line with a canned response: /sync/hello/ 200, anything else 400."""

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        if data.startswith(b"GET /sync/hello/ HTTP/1.1\r\n"):
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nServer: uvicorn\r\nX-Request-ID: 1\r\n"
                b"Content-Length: 3\r\nConnection: close\r\n\r\nhi\n"
            )
        else:
            self.request.sendall(UVICORN_400)


@pytest.fixture
def canned() -> Iterator[int]:
    """Serve CannedHandler on a free loopback port; return the port."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), CannedHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(5)


def test_exchange_reports_a_peer_that_closes_unanswered() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(exchange, "127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", 5.0)
            connection, _ = listener.accept()
            connection.close()
            answer = future.result()
    assert (answer.outcome, answer.responses, answer.summary()) == ("closed", [], "closed")


def test_replay_judges_and_sends_the_canary(canned: int) -> None:
    lowercase = select(load_corpus(), ["lowercase-method"])[0]
    result = replay(lowercase, "127.0.0.1", canned, front=UVICORN)
    assert (result.answer.status, result.layer, result.canary, result.passed) == (
        400,
        UVICORN,
        200,
        True,
    )
    # A known gap of the front server is recorded, not failed; another server fails.
    gap = parse_case(
        b"about: x\nexpect: 2xx\nwhy: y\ngap: uvicorn\n---\nGET /x HTTP/1.1\n\n", "001-g.http"
    )
    known = replay(gap, "127.0.0.1", canned, front=UVICORN)
    assert (known.passed, known.gaps) == (True, ["answered 400, expected 2xx"])
    failed = replay(gap, "127.0.0.1", canned, front=GUNICORN)
    assert (failed.passed, failed.problems) == (False, ["answered 400, expected 2xx"])


def test_cli_json_on_chosen_cases(canned: int, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main([f"127.0.0.1:{canned}", "001", "bare-lf-line-endings", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["front"] == UVICORN
    assert [(r["id"], r["answer"], r["layer"]) for r in report["results"]] == [
        ("001", "400", UVICORN),
        ("022", "400", UVICORN),
    ]


def test_cli_fails_on_a_wrong_answer_and_prints_markdown(
    canned: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "001-hello.http").write_bytes(GET)
    status = cli.main([f"127.0.0.1:{canned}", "--corpus", str(tmp_path), "--markdown"])
    out = capsys.readouterr().out
    assert status == 1
    assert "| 001-hello | 2xx | 400 | uvicorn | 200 | FAIL: answered 400, expected 2xx |" in out


def test_cli_refuses_a_remote_target_without_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["192.0.2.1:80", "001"])
    assert caught.value.code == 2
    assert "not a loopback address: pass --allow-remote" in capsys.readouterr().err


def test_cli_lists_the_cases(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["127.0.0.1:1", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list(CORPUS_DIR.glob("*.http")))
    assert lines[0].startswith("001-lowercase-method")


def test_cli_canary_path_must_answer_200(canned: int, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main([f"127.0.0.1:{canned}", "001", "--canary-path", "/elsewhere/"])
    assert status == 1
    assert "canary after the case got 400, not 200" in capsys.readouterr().out
