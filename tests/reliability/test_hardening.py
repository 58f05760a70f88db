# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""Production hardening through real servers and nginx: security headers on every response,
HSTS only over HTTPS, the index page under its CSP, CSRF behind the proxy.

Both stacks run with production settings (DJANGO_ENV=production). One change, stated: the
HTTPS redirect is off, because nginx here speaks plain HTTP on loopback and every request would
otherwise be a 301 to an https:// URL nothing serves. A real deployment terminates TLS in
front of (or in) nginx and keeps the redirect on; HSTS and the secure CSRF checks depend on
the request being HTTPS, not on the redirect, and are tested with a request marked HTTPS by a
trusted proxy: X-Forwarded-Proto from 127.0.0.1, which gunicorn and uvicorn trust through
forwarded_allow_ips and turn into the request's scheme. The same header from 127.0.0.2, a
peer outside forwarded_allow_ips, must not make a request HTTPS.

nginx runs as it would behind a load balancer that ends TLS: NGINX_TRUSTED_PROXIES=127.0.0.1,
so a client connecting from 127.0.0.1 plays the balancer (its X-Forwarded-Proto is passed on)
and a client from 127.0.0.2 plays anyone else on the internet (its claim is replaced by nginx's
own scheme). Linux routes all of 127.0.0.0/8 to loopback.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import secrets
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name

from lab.stack import Stack, start_stack
from tests.dualserve.test_csp import page_violations
from tests.support import require_nginx

MODE_PAIRS = [("wsgi_gthread", "asgi_uvicorn"), ("wsgi_sync", "asgi_gunicorn")]
HOSTS = "127.0.0.1,localhost"
PRODUCTION = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
    "DJANGO_ALLOWED_HOSTS": HOSTS,
    # nginx speaks plain HTTP here (see the module docstring).
    "DJANGO_SECURE_SSL_REDIRECT": "false",
}
# What production sends on every response (project/settings.py).
EXPECTED_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "content-security-policy": (
        "default-src 'self'; base-uri 'self'; object-src 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}
HSTS = "max-age=31536000; includeSubDomains; preload"
BALANCER = "127.0.0.1"
OUTSIDER = "127.0.0.2"
CLAIM_HTTPS = {"X-Forwarded-Proto": "https"}
FOREIGN_ORIGIN = "https://evil.example"
LOGIN_PATH = "/admin/login/"
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
CSRF_COOKIE = re.compile(r"csrftoken=([^;]+)")
# Every kind of answer the template gives: the page, both twins of an endpoint, Django's 404,
# the showcase's 400 for a bad parameter.
PATHS = {
    "/": 200,
    "/sync/hello/": 200,
    "/async/hello/": 200,
    "/sync/json/": 200,
    "/async/json/": 200,
    "/sync/sleep/?ms=nope": 400,
    "/async/sleep/?ms=nope": 400,
    "/no/such/page/": 404,
    LOGIN_PATH: 200,
}


@pytest.fixture(scope="module", params=MODE_PAIRS, ids="+".join)
def stack(
    request: pytest.FixtureRequest, var_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    require_nginx()
    wsgi_mode, asgi_mode = request.param
    with start_stack(
        wsgi_mode,
        asgi_mode,
        var_dir,
        tmp_path_factory.mktemp("stack"),
        server_env={**PRODUCTION, "WEB_CONCURRENCY": "1"},
        nginx_env={"NGINX_TRUSTED_PROXIES": BALANCER},
    ) as running:
        yield running


def direct_url(stack: Stack, interface: str, path: str) -> str:
    """Return the URL of `path` on the WSGI or ASGI server itself, not through nginx."""
    return stack.server(interface).base_url + path


def client_from(source: str) -> httpx.Client:
    """Return a client whose connections come from the loopback address `source`."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=20)


def assert_security_headers(response: httpx.Response) -> None:
    """Fail unless `response` carries every production security header."""
    found = {name: response.headers.get(name) for name in EXPECTED_HEADERS}
    assert found == EXPECTED_HEADERS, (response.request.url, response.status_code)


# --- Headers on every response --------------------------------------------------------------------


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["hybrid", "wsgi", "asgi"])
def test_every_answer_through_nginx_carries_the_security_headers(stack: Stack, entry: str) -> None:
    with httpx.Client(timeout=20) as client:
        for path, status in PATHS.items():
            response = client.get(stack.url(entry, path))
            assert response.status_code == status, (path, response.text[:300])
            assert_security_headers(response)
            # Plain HTTP: a browser ignores HSTS there, and Django must not send it.
            assert "strict-transport-security" not in response.headers, path
        # What nginx answers itself: a static file, and its own 404 for a missing one.
        stylesheet = re.search(
            r'<link rel="stylesheet" href="([^"]+)"', client.get(stack.url(entry, "/")).text
        )
        assert stylesheet
        for path, status in ((stylesheet[1], 200), ("/static/no-such-file.css", 404)):
            response = client.get(stack.url(entry, path))
            assert response.status_code == status, path
            assert response.headers["server"] == "nginx"
            found = {name: response.headers.get(name) for name in EXPECTED_HEADERS}
            policy = found.pop("content-security-policy") or ""
            assert found == {k: EXPECTED_HEADERS[k] for k in found}, path
            assert "frame-ancestors 'none'" in policy, path
            assert "unsafe" not in policy, path


@pytest.mark.serving
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_disallowed_host_gets_a_400_with_the_headers(stack: Stack, interface: str) -> None:
    # nginx drops unknown hosts itself (444); the server reached directly answers Django's 400.
    response = httpx.get(
        direct_url(stack, interface, "/sync/hello/"), headers={"Host": "evil.example"}
    )
    assert response.status_code == 400
    assert "Traceback" not in response.text
    assert_security_headers(response)


@pytest.mark.serving
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_hsts_only_when_a_trusted_proxy_says_https(stack: Stack, interface: str) -> None:
    url = direct_url(stack, interface, "/sync/hello/")
    secure = httpx.get(url, headers={"X-Forwarded-Proto": "https"})
    assert secure.headers.get("strict-transport-security") == HSTS
    assert_security_headers(secure)
    plain = httpx.get(url)
    assert "strict-transport-security" not in plain.headers
    assert plain.headers["x-interface"] == secure.headers["x-interface"] == interface


@pytest.mark.serving
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_peer_outside_forwarded_allow_ips_cannot_claim_https(
    stack: Stack, interface: str
) -> None:
    # Linux routes all of 127.0.0.0/8 to loopback: 127.0.0.2 is a client that is not the proxy.
    url = direct_url(stack, interface, "/")
    claim = {"X-Forwarded-Proto": "https"}
    for source, scheme in (("127.0.0.2", "http"), ("127.0.0.1", "https")):
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=20) as client:
            response = client.get(url, headers=claim)
        assert response.status_code == 200
        assert f'<strong id="client">{source}</strong>' in response.text
        assert f'<strong id="scheme">{scheme}</strong>' in response.text, source
        assert ("strict-transport-security" in response.headers) is (scheme == "https")


@pytest.mark.serving
def test_through_nginx_only_the_balancer_can_say_https(stack: Stack) -> None:
    url = stack.url("hybrid", "/")
    for source, scheme in ((OUTSIDER, "http"), (BALANCER, "https")):
        with client_from(source) as client:
            response = client.get(url, headers=CLAIM_HTTPS)
        assert f'<strong id="scheme">{scheme}</strong>' in response.text, source
        assert ("strict-transport-security" in response.headers) is (scheme == "https")
        assert_security_headers(response)


# --- The index page under its own policy ----------------------------------------------------------


@pytest.mark.serving
@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_index_loads_under_its_policy(stack: Stack, entry: str) -> None:
    page_url = stack.url(entry, "/")
    with httpx.Client(timeout=20) as client:
        page = client.get(page_url)
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        violations, counts = page_violations(page.text, policy, page_url)
        assert violations == []
        assert counts["stylesheet"] >= 1
        # What the policy allows must also load: the stylesheets come from nginx, hashed.
        for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text):
            asset = client.get(httpx.URL(page_url).join(href))
            assert asset.status_code == 200, href
            assert asset.headers["content-type"].startswith("text/css")


# --- CSRF behind the proxy ------------------------------------------------------------------------


def login_form(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[str, str]:
    """GET the admin login page; return its CSRF cookie value and its form token."""
    page = client.get(url, headers=headers)
    assert page.status_code == 200
    cookie = CSRF_COOKIE.search(page.headers.get("set-cookie", ""))
    assert cookie, page.headers
    token = CSRF_INPUT.search(page.text)
    assert token, page.text[:500]
    return cookie[1], token[1]


def post_login(
    client: httpx.Client, url: str, origin: str, headers: dict[str, str]
) -> httpx.Response:
    """Fetch a token, then POST the login form with it from `origin` (a wrong password)."""
    cookie, token = login_form(client, url, headers)
    return client.post(
        url,
        data={"csrfmiddlewaretoken": token, "username": "nobody", "password": "wrong"},
        # By hand: the cookie is Secure in production, and httpx keeps those for https URLs.
        headers={**headers, "Cookie": f"csrftoken={cookie}", "Origin": origin, "Referer": url},
    )


def assert_csrf_passed(response: httpx.Response) -> None:
    """Fail unless Django's login view (not the CSRF check) answered the POST."""
    assert response.status_code == 200, response.text[:500]
    assert "Please enter the correct username and password" in response.text


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_csrf_through_nginx_behind_a_tls_balancer(stack: Stack, entry: str) -> None:
    url = stack.url(entry, LOGIN_PATH)
    https_origin = stack.url(entry, "").replace("http://", "https://")
    with client_from(BALANCER) as balancer:
        assert_csrf_passed(post_login(balancer, url, https_origin, CLAIM_HTTPS))
        refused = post_login(balancer, url, FOREIGN_ORIGIN, CLAIM_HTTPS)
        assert refused.status_code == 403
        # DEBUG is off, so the reason is in the server's log (django.security.csrf), not the page.
        reason = f"Origin checking failed - {FOREIGN_ORIGIN} does not match any trusted origins"
        assert stack.server(entry).wait_for_output(re.escape(reason), timeout=10)
    with client_from(OUTSIDER) as outsider:
        # Anyone else's claim is replaced by nginx's http: an https Origin is another origin.
        assert post_login(outsider, url, https_origin, CLAIM_HTTPS).status_code == 403


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_csrf_through_nginx_over_plain_http(stack: Stack, entry: str) -> None:
    url = stack.url(entry, LOGIN_PATH)
    with client_from(OUTSIDER) as client:
        assert_csrf_passed(post_login(client, url, stack.url(entry, ""), {}))
        assert post_login(client, url, FOREIGN_ORIGIN, {}).status_code == 403


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_csrf_over_https_from_a_trusted_proxy(stack: Stack, interface: str) -> None:
    url = direct_url(stack, interface, LOGIN_PATH)
    https_origin = direct_url(stack, interface, "").replace("http://", "https://")
    https = {"X-Forwarded-Proto": "https"}
    with httpx.Client(timeout=20) as client:
        page = client.get(url, headers=https)
        assert "Secure" in page.headers["set-cookie"]
        assert page.headers["x-interface"] == interface
        assert_csrf_passed(post_login(client, url, https_origin, https))
        assert post_login(client, url, FOREIGN_ORIGIN, https).status_code == 403
        # The same host over plain http is another origin: a downgrade is refused too.
        downgraded = https_origin.replace("https://", "http://")
        assert post_login(client, url, downgraded, https).status_code == 403


# --- The dependency audit -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
VULNERABLE = "django"
ADVISORY_ID = "PYSEC-0000-TEST"


class FakeOSV(ThreadingHTTPServer):
    """An OSV query endpoint on loopback: what pip-audit asked, and the answers it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OSVHandler)
        self.queried: set[str] = set()
        self.advisories: dict[str, list[dict[str, Any]]] = {}
        self.status = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/query"


class OSVHandler(BaseHTTPRequestHandler):
    server: FakeOSV

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = query["package"]["name"]
        self.server.queried.add(name)
        vulns = self.server.advisories.get(name)
        body = json.dumps({"vulns": vulns} if vulns else {}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def osv() -> Iterator[FakeOSV]:
    server = FakeOSV()
    thread = threading.Thread(target=server.serve_forever, name="fake-osv", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_audit(osv: FakeOSV) -> tuple[int, str]:
    """Run `make audit` against `osv` (the venv is already installed: -o install).

    Return the exit status and the output (pip-audit writes its summary to stderr).
    """
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "install",
            "audit",
            "AUDIT_SERVICE=osv",
            f"AUDIT_ARGS=--osv-url {osv.url} --timeout 10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def locked_packages_for_this_machine() -> set[str]:
    """Return the packages uv.lock installs here (markers evaluated), the project excluded."""
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    installed = {
        canonicalize_name(dist.metadata["Name"]) for dist in importlib.metadata.distributions()
    }
    names = {canonicalize_name(package["name"]) for package in lock["package"]}
    # A package the lock lists only for another platform (colorama on Windows) is not exported.
    return {name for name in names if name in installed}


def test_audit_checks_every_locked_package_and_passes_when_none_is_known(osv: FakeOSV) -> None:
    status, output = make_audit(osv)
    assert status == 0, output
    assert "No known vulnerabilities found" in output
    assert osv.queried == locked_packages_for_this_machine()


def test_audit_fails_on_a_known_vulnerability(osv: FakeOSV) -> None:
    osv.advisories[VULNERABLE] = [
        {
            "id": ADVISORY_ID,
            "summary": "test advisory",
            "affected": [
                {
                    "package": {"name": VULNERABLE, "ecosystem": "PyPI"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                }
            ],
        }
    ]
    status, output = make_audit(osv)
    assert status != 0
    assert re.search(rf"^{VULNERABLE} +\S+ +{ADVISORY_ID}", output, re.MULTILINE), output


def test_audit_fails_when_the_service_cannot_answer(osv: FakeOSV) -> None:
    osv.status = 503
    status, output = make_audit(osv)
    assert status != 0
    assert "No known vulnerabilities found" not in output
    assert "503" in output
