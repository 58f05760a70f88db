"""The stand-in upstream server: real sockets on free loopback ports."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.test import SimpleTestCase

from apps.showcase.upstream import BadRequest, parse_head, start_in_thread, wait_ms

REPO = Path(__file__).resolve().parents[2]


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and return everything until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


class ParseTests(SimpleTestCase):
    def test_request_head(self):
        request = parse_head(b"GET /?ms=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(
            (request.method, request.target, request.version), ("GET", "/?ms=5", "HTTP/1.1")
        )
        self.assertEqual(request.headers, {"host": "x", "connection": "close"})
        self.assertFalse(request.keep_alive)
        self.assertEqual(wait_ms(request), 5)

    def test_keep_alive_follows_the_version(self):
        self.assertTrue(parse_head(b"GET / HTTP/1.1\r\n\r\n").keep_alive)
        self.assertFalse(parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive)
        self.assertTrue(parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive)

    def test_ms_defaults_to_zero(self):
        self.assertEqual(wait_ms(parse_head(b"GET / HTTP/1.1\r\n\r\n")), 0)

    def test_refused_requests(self):
        cases = [
            (b"GET /?ms=abc HTTP/1.1\r\n\r\n", 400, "ms must be an integer from 0 to 60000"),
            (b"GET /?ms=-1 HTTP/1.1\r\n\r\n", 400, "got '-1'"),
            (b"GET /?ms=60001 HTTP/1.1\r\n\r\n", 400, "got '60001'"),
            ("GET /?ms=\u00b2 HTTP/1.1\r\n\r\n".encode("latin-1"), 400, "ms must be an integer"),
            (b"GET /other HTTP/1.1\r\n\r\n", 404, "no such path '/other'"),
            (b"POST / HTTP/1.1\r\n\r\n", 405, "method POST not allowed"),
            (b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 400, "takes no request body"),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "no request body"),
            (b"GET /\r\n\r\n", 400, "malformed request line"),
            (b"GET / HTTP/2.0\r\n\r\n", 400, "unsupported protocol"),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, "malformed header line"),
        ]
        for head, status, message in cases:
            with self.subTest(head=head):
                with self.assertRaises(BadRequest) as caught:
                    wait_ms(parse_head(head))
                self.assertEqual(caught.exception.status, status)
                self.assertIn(message, str(caught.exception))


class ServerTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.running = start_in_thread()
        cls.addClassCleanup(cls.running.stop)
        cls.port = cls.running.server.port

    def connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(connection.close)
        return connection

    def test_answers_after_the_wait(self):
        connection = self.connection()
        connection.request("GET", "/?ms=20")
        response = connection.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Content-Type"), "application/json")
        self.assertEqual(json.loads(response.read()), {"service": "upstream", "ms": 20})

    def test_keeps_the_connection_alive(self):
        connection = self.connection()
        connection.request("GET", "/?ms=0")
        connection.getresponse().read()
        first_socket = connection.sock
        connection.request("GET", "/?ms=1")
        response = connection.getresponse()
        self.assertEqual(json.loads(response.read())["ms"], 1)
        self.assertIs(connection.sock, first_socket)

    def test_bad_input_is_a_400_json_error(self):
        connection = self.connection()
        connection.request("GET", "/?ms=lots")
        response = connection.getresponse()
        self.assertEqual(response.status, 400)
        self.assertIn("ms must be an integer", json.loads(response.read())["error"])

    def test_other_methods_are_refused(self):
        connection = self.connection()
        connection.request("DELETE", "/")
        response = connection.getresponse()
        self.assertEqual(response.status, 405)
        self.assertEqual(response.getheader("Allow"), "GET")

    def test_malformed_request_is_answered_then_closed(self):
        answer = raw_exchange(self.port, b"NONSENSE\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertIn(b"Connection: close", answer)

    def test_oversized_head_is_a_431(self):
        answer = raw_exchange(self.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:80])

    def test_http_10_connection_is_closed_after_the_answer(self):
        answer = raw_exchange(self.port, b"GET /?ms=0 HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b'{"service":"upstream","ms":0}'))

    def test_pipelined_requests_are_answered_in_order(self):
        answer = raw_exchange(
            self.port,
            b"GET /?ms=5 HTTP/1.1\r\n\r\nGET /?ms=0 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 2)
        self.assertLess(answer.index(b'"ms":5'), answer.index(b'"ms":0'))


class ConcurrencyTests(SimpleTestCase):
    async def test_holds_hundreds_of_concurrent_waits(self):
        # 2 s each: the 200 connections must all be set up before the first wait ends, on a
        # loop that shares the GIL with this client (a loaded machine is slow at that).
        clients, wait_ms_each = 200, 2000
        running = await asyncio.to_thread(start_in_thread)
        try:

            async def one_request() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", running.server.port)
                try:
                    writer.write(
                        f"GET /?ms={wait_ms_each} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
                    )
                    await writer.drain()
                    return await reader.read()
                finally:
                    writer.close()
                    await writer.wait_closed()

            started = time.monotonic()
            answers = await asyncio.wait_for(
                asyncio.gather(*(one_request() for _ in range(clients))), timeout=60
            )
            elapsed = time.monotonic() - started
        finally:
            await asyncio.to_thread(running.stop)
        ok = [answer for answer in answers if answer.startswith(b"HTTP/1.1 200 OK")]
        self.assertEqual(len(ok), clients)
        # Every client was waiting at the same moment: the waits overlapped, none queued
        # behind another (serially they would take clients x 2 s = 400 s).
        self.assertEqual(running.server.peak_waiting, clients, f"{elapsed:.2f} s")
        self.assertEqual(running.server.waiting, 0)


class LifecycleTests(SimpleTestCase):
    def test_stop_closes_idle_connections_and_the_port(self):
        running = start_in_thread()
        try:
            sock = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
            self.addCleanup(sock.close)
            sock.sendall(b"GET /?ms=0 HTTP/1.1\r\n\r\n")
            self.assertTrue(sock.recv(65536).startswith(b"HTTP/1.1 200 OK"))
        finally:
            running.stop()
        self.assertEqual(sock.recv(65536), b"")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", running.server.port), timeout=5).close()

    def test_stop_ends_a_wait_in_progress(self):
        running = start_in_thread()
        self.addCleanup(running.stop)
        sock = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /?ms=60000 HTTP/1.1\r\n\r\n")
        deadline = time.monotonic() + 10
        while not running.server.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(running.server.waiting, 1)
        running.stop()
        self.assertEqual(sock.recv(65536), b"")

    def test_port_in_use_is_reported(self):
        with (
            start_in_thread() as running,
            self.assertRaisesMessage(RuntimeError, "failed to start"),
        ):
            start_in_thread(port=running.server.port)


class CommandTests(SimpleTestCase):
    @pytest.mark.serving
    def test_module_serves_until_sigterm(self):
        for loop, module in [("asyncio", "asyncio"), ("uvloop", "uvloop")]:
            with self.subTest(loop=loop):
                log = self.serve_one_request_then_stop(loop)
                self.assertIn(f"upstream event loop: {module}", log)
                self.assertIn("upstream stopped after 1 requests", log)

    def serve_one_request_then_stop(self, loop: str) -> str:
        """Run the command on a free port, send one request, SIGTERM it; return its log."""
        process = subprocess.Popen(
            [sys.executable, "-m", "apps.showcase.upstream", "--port", "0", "--loop", loop],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            line = process.stdout.readline()
            self.assertTrue(line.startswith("upstream listening on http://127.0.0.1:"), line)
            port = int(line.split()[-1].rsplit(":", 1)[1].rstrip("/"))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/?ms=5")
            self.assertEqual(json.loads(connection.getresponse().read())["ms"], 5)
            connection.close()
            process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(timeout=10), 0)
            return process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            process.stdout.close()
            process.stderr.close()

    def test_busy_port_exits_with_a_message(self):
        with start_in_thread() as running:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "apps.showcase.upstream",
                    "--port",
                    str(running.server.port),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"cannot listen on 127.0.0.1:{running.server.port}", result.stderr)
