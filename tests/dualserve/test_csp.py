"""apps.dualserve.csp: the policy header in both modes, the nonce, pages that obey the policy."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.test import AsyncClient, Client, SimpleTestCase, TestCase, override_settings
from django.urls import path

from apps.dualserve.checks import check_middleware
from apps.dualserve.csp import (
    CSP,
    HEADER,
    REPORT_ONLY_HEADER,
    ContentSecurityPolicyMiddleware,
    build_policy,
)
from tests.dualserve.test_native import asgi_handler, hops_of_one_request
from tests.support import asgi_request

CSP_PATH = "apps.dualserve.csp.ContentSecurityPolicyMiddleware"
VIEW_POLICY = "default-src 'none'"
NONCE_TEMPLATE = '<script nonce="{{ csp_nonce }}">1</script>'


def sync_plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


async def async_plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def sync_own_policy(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("own")
    response.headers[HEADER] = VIEW_POLICY
    return response


async def async_own_policy(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("own")
    response.headers[HEADER] = VIEW_POLICY
    return response


def sync_nonce_page(request: HttpRequest) -> HttpResponse:
    template = engines["django"].from_string(NONCE_TEMPLATE)
    return HttpResponse(template.render({}, request))


async def async_nonce_page(request: HttpRequest) -> HttpResponse:
    template = engines["django"].from_string(NONCE_TEMPLATE)
    return HttpResponse(template.render({}, request))


def sync_fails(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug, for Django's technical 500 page")


async def async_fails(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug, for Django's technical 500 page")


urlpatterns = [
    path("sync/fails/", sync_fails),
    path("async/fails/", async_fails),
    path("sync/plain/", sync_plain),
    path("async/plain/", async_plain),
    path("sync/own/", sync_own_policy),
    path("async/own/", async_own_policy),
    path("sync/nonce/", sync_nonce_page),
    path("async/nonce/", async_nonce_page),
]


# --- Checking a page against its policy ----------------------------------------------------------


def parse_policy(header: str) -> dict[str, list[str]]:
    """Return a policy header as {directive: sources}; CSP ignores a repeated directive."""
    policy: dict[str, list[str]] = {}
    for part in header.split(";"):
        tokens = part.split()
        if tokens:
            policy.setdefault(tokens[0].lower(), tokens[1:])
    return policy


def governing_sources(policy: dict[str, list[str]], *directives: str) -> list[str] | None:
    """Return the sources of the first directive present (CSP's fallback order); None: no limit."""
    for directive in (*directives, "default-src"):
        if directive in policy:
            return policy[directive]
    return None


def url_allowed(sources: list[str] | None, url: str, page_url: str) -> bool:
    """Return whether `url` (relative to `page_url`) matches one of `sources`."""
    if sources is None:
        return True
    target = urlsplit(urljoin(page_url, url))
    page = urlsplit(page_url)
    for source in sources:
        if source == "*" and target.scheme in {"http", "https"}:
            return True
        if source == "'self'" and (target.scheme, target.netloc) == (page.scheme, page.netloc):
            return True
        if source.endswith(":") and target.scheme == source[:-1]:
            return True
        if "://" in source and urlsplit(source)[:2] == target[:2]:
            return True
    return False


def inline_allowed(sources: list[str] | None, nonce: str | None) -> bool:
    """Return whether inline code runs under `sources` (with the element's nonce, if any)."""
    if sources is None:
        return True
    if nonce and f"'nonce-{nonce}'" in sources:
        return True
    # 'unsafe-inline' is ignored by browsers when a nonce or hash is present (CSP Level 2+).
    has_nonce_or_hash = any(s.startswith(("'nonce-", "'sha")) for s in sources)
    return "'unsafe-inline'" in sources and not has_nonce_or_hash


class PolicyViolations(HTMLParser):
    """Collect what a browser would block on an HTML page under a CSP header."""

    def __init__(self, policy: dict[str, list[str]], page_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.policy = policy
        self.page_url = page_url
        self.violations: list[str] = []
        self.counts = {"script": 0, "stylesheet": 0}
        self._inline_script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): value or "" for name, value in attrs}
        script_inline = governing_sources(self.policy, "script-src-attr", "script-src")
        for name, value in values.items():
            if name.startswith("on") and not inline_allowed(script_inline, None):
                self.violations.append(f"<{tag} {name}=...>: inline event handler")
            if name in {"href", "src", "action"} and value.strip().lower().startswith(
                "javascript:"
            ):
                self.violations.append(f"<{tag} {name}=javascript:...>")
        style_attr = governing_sources(self.policy, "style-src-attr", "style-src")
        if "style" in values and not inline_allowed(style_attr, None):
            self.violations.append(f"<{tag} style=...>: inline style attribute")
        if tag == "script":
            self.counts["script"] += 1
            sources = governing_sources(self.policy, "script-src-elem", "script-src")
            if "src" in values:
                if not url_allowed(sources, values["src"], self.page_url):
                    self.violations.append(f"<script src={values['src']}>")
            elif not inline_allowed(sources, values.get("nonce")):
                self.violations.append("<script> inline")
        elif tag == "style":
            sources = governing_sources(self.policy, "style-src-elem", "style-src")
            if not inline_allowed(sources, values.get("nonce")):
                self.violations.append("<style> inline")
        elif tag == "link" and "stylesheet" in values.get("rel", "").lower().split():
            self.counts["stylesheet"] += 1
            sources = governing_sources(self.policy, "style-src-elem", "style-src")
            if not url_allowed(sources, values.get("href", ""), self.page_url):
                self.violations.append(f"<link stylesheet {values.get('href')}>")
        elif tag in {"img", "source"} and "src" in values:
            if not url_allowed(
                governing_sources(self.policy, "img-src"), values["src"], self.page_url
            ):
                self.violations.append(f"<{tag} src={values['src']}>")
        elif tag in {"iframe", "frame"}:
            sources = governing_sources(self.policy, "frame-src", "child-src")
            if not url_allowed(sources, values.get("src", ""), self.page_url):
                self.violations.append(f"<{tag} src={values.get('src')}>")
        elif tag in {"object", "embed"}:
            if governing_sources(self.policy, "object-src") == ["'none'"]:
                self.violations.append(f"<{tag}>: plugins")
        elif tag == "form" and "form-action" in self.policy:
            action = values.get("action") or self.page_url
            if not url_allowed(self.policy["form-action"], action, self.page_url):
                self.violations.append(f"<form action={action}>")
        elif tag == "base" and not url_allowed(
            # base-uri has no fallback to default-src.
            self.policy.get("base-uri"),
            values.get("href", ""),
            self.page_url,
        ):
            self.violations.append(f"<base href={values.get('href')}>")


def page_violations(html: str, header: str, page_url: str) -> tuple[list[str], dict[str, int]]:
    """Return what `header` would block on the page, and how many scripts and stylesheets it has."""
    checker = PolicyViolations(parse_policy(header), page_url)
    checker.feed(html)
    checker.close()
    return checker.violations, checker.counts


class PageCheckerTests(SimpleTestCase):
    """The checker itself: it must find what a browser blocks, or its green means nothing."""

    POLICY = "default-src 'self'; object-src 'none'"
    PAGE = "http://testserver/"

    def test_finds_inline_code_and_foreign_sources(self) -> None:
        bad = {
            "<script>alert(1)</script>": "<script> inline",
            "<style>p{}</style>": "<style> inline",
            '<p style="color:red">': "inline style attribute",
            '<button onclick="x()">': "inline event handler",
            '<a href="javascript:x()">': "javascript:",
            '<script src="https://cdn.example/x.js"></script>': "<script src=https://cdn",
            '<link rel="stylesheet" href="//cdn.example/x.css">': "<link stylesheet",
            "<object data=x></object>": "plugins",
        }
        for html, expected in bad.items():
            with self.subTest(html=html):
                violations, _ = page_violations(html, self.POLICY, self.PAGE)
                self.assertEqual(len(violations), 1, violations)
                self.assertIn(expected, violations[0])

    def test_allows_own_files_and_a_matching_nonce(self) -> None:
        html = (
            '<link rel="stylesheet" href="/static/a.css"><script src="/static/a.js"></script>'
            '<script nonce="abc">1</script>'
        )
        policy = "default-src 'self'; script-src 'self' 'nonce-abc'"
        violations, counts = page_violations(html, policy, self.PAGE)
        self.assertEqual(violations, [])
        self.assertEqual(counts, {"script": 2, "stylesheet": 1})
        wrong_nonce, _ = page_violations('<script nonce="abd">1</script>', policy, self.PAGE)
        self.assertEqual(wrong_nonce, ["<script> inline"])


# --- The header -----------------------------------------------------------------------------------


class BuildPolicyTests(SimpleTestCase):
    def test_directives_in_order_with_their_sources(self) -> None:
        config = {"default-src": [CSP.SELF], "img-src": [CSP.SELF, "data:"], "report-uri": "/r/"}
        self.assertEqual(
            build_policy(config), "default-src 'self'; img-src 'self' data:; report-uri /r/"
        )

    def test_true_is_a_bare_directive_and_false_or_none_drop_it(self) -> None:
        config = {"upgrade-insecure-requests": True, "sandbox": False, "img-src": None}
        self.assertEqual(build_policy(config), "upgrade-insecure-requests")

    def test_a_set_renders_in_a_stable_order(self) -> None:
        config = {"script-src": {"https://b.example", CSP.SELF, "https://a.example"}}
        self.assertEqual(
            build_policy(config), "script-src 'self' https://a.example https://b.example"
        )

    def test_nonce_placeholder_is_replaced_or_dropped(self) -> None:
        config = {"script-src": [CSP.SELF, CSP.NONCE]}
        self.assertEqual(build_policy(config, "abc"), "script-src 'self' 'nonce-abc'")
        self.assertEqual(build_policy(config, None), "script-src 'self'")

    def test_shipped_policy_has_no_unsafe_source(self) -> None:
        header = build_policy(settings.SECURE_CSP)
        self.assertIn("default-src 'self'", header)
        self.assertIn("frame-ancestors 'none'", header)
        self.assertNotIn("unsafe", header)


@override_settings(ROOT_URLCONF="tests.dualserve.test_csp")
class MiddlewareTests(TestCase):
    def expected(self) -> str:
        return build_policy(settings.SECURE_CSP)

    def test_policy_header(self) -> None:
        response = self.client.get("/sync/plain/")
        self.assertEqual(response.headers[HEADER], self.expected())
        self.assertNotIn(REPORT_ONLY_HEADER, response.headers)

    async def test_async_policy_header(self) -> None:
        response = await self.async_client.get("/async/plain/")
        self.assertEqual(response.headers[HEADER], self.expected())
        self.assertNotIn(REPORT_ONLY_HEADER, response.headers)

    def test_error_page_carries_the_policy(self) -> None:
        response = self.client.get("/nowhere/")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.headers[HEADER], self.expected())

    async def test_async_error_page_carries_the_policy(self) -> None:
        response = await self.async_client.get("/nowhere/")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.headers[HEADER], self.expected())

    def test_view_header_is_kept(self) -> None:
        self.assertEqual(self.client.get("/sync/own/").headers[HEADER], VIEW_POLICY)

    async def test_async_view_header_is_kept(self) -> None:
        response = await self.async_client.get("/async/own/")
        self.assertEqual(response.headers[HEADER], VIEW_POLICY)

    @override_settings(SECURE_CSP={}, SECURE_CSP_REPORT_ONLY={"default-src": [CSP.SELF]})
    def test_report_only_alone(self) -> None:
        response = self.client.get("/sync/plain/")
        self.assertNotIn(HEADER, response.headers)
        self.assertEqual(response.headers[REPORT_ONLY_HEADER], "default-src 'self'")

    @override_settings(SECURE_CSP={}, SECURE_CSP_REPORT_ONLY={"default-src": [CSP.SELF]})
    async def test_async_report_only_alone(self) -> None:
        response = await self.async_client.get("/async/plain/")
        self.assertNotIn(HEADER, response.headers)
        self.assertEqual(response.headers[REPORT_ONLY_HEADER], "default-src 'self'")

    @override_settings(SECURE_CSP={"script-src": [CSP.SELF, CSP.NONCE]})
    def test_nonce_used_by_the_page_is_in_the_header(self) -> None:
        pages = [self.client.get("/sync/nonce/") for _ in range(2)]
        nonces = []
        for response in pages:
            nonce = response.content.decode().split('nonce="')[1].split('"')[0]
            self.assertGreaterEqual(len(nonce), 22)
            self.assertEqual(response.headers[HEADER], f"script-src 'self' 'nonce-{nonce}'")
            nonces.append(nonce)
        self.assertNotEqual(nonces[0], nonces[1])
        # A page that never read its nonce gets none: its header stays cacheable.
        self.assertEqual(self.client.get("/sync/plain/").headers[HEADER], "script-src 'self'")

    @override_settings(SECURE_CSP={"script-src": [CSP.SELF, CSP.NONCE]})
    async def test_async_nonce_used_by_the_page_is_in_the_header(self) -> None:
        response = await self.async_client.get("/async/nonce/")
        nonce = response.content.decode().split('nonce="')[1].split('"')[0]
        self.assertEqual(response.headers[HEADER], f"script-src 'self' 'nonce-{nonce}'")
        plain = await self.async_client.get("/async/plain/")
        self.assertEqual(plain.headers[HEADER], "script-src 'self'")


# Pinned to the CSP middleware: a project's DEBUG-only middleware (a debug toolbar) must not
# change what these pages are.
@override_settings(ROOT_URLCONF="tests.dualserve.test_csp", DEBUG=True, MIDDLEWARE=[CSP_PATH])
class DebugPagesTests(TestCase):
    """With DEBUG on, Django's technical pages render under the policy (inline code allowed)."""

    # The 500 page's "share this traceback on a public website" form posts to dpaste.com:
    # form-action keeps it blocked, so a traceback is never sent off the machine by a click.
    SHARE_FORM = "<form action=https://dpaste.com/>"

    def assert_renders(self, response: Any, status: int, blocked: tuple[str, ...] = ()) -> None:
        self.assertEqual(response.status_code, status)
        violations, _ = page_violations(
            response.content.decode(), response.headers[HEADER], "http://testserver/"
        )
        self.assertEqual(violations, list(blocked))

    def test_technical_404(self) -> None:
        self.assert_renders(self.client.get("/nowhere/"), 404)

    async def test_async_technical_404(self) -> None:
        self.assert_renders(await self.async_client.get("/nowhere/"), 404)

    def test_technical_500(self) -> None:
        client = Client(raise_request_exception=False)
        self.assert_renders(client.get("/sync/fails/"), 500, (self.SHARE_FORM,))

    async def test_async_technical_500(self) -> None:
        client = AsyncClient(raise_request_exception=False)
        self.assert_renders(await client.get("/async/fails/"), 500, (self.SHARE_FORM,))

    def test_pages_that_are_no_error_keep_the_policy(self) -> None:
        response = self.client.get("/sync/plain/")
        self.assertEqual(response.headers[HEADER], build_policy(settings.SECURE_CSP))

    @override_settings(SECURE_CSP={"default-src": [CSP.SELF], "script-src": [CSP.NONCE]})
    def test_a_nonce_gives_way_to_inline_code(self) -> None:
        # Browsers ignore 'unsafe-inline' next to a nonce.
        response = self.client.get("/nowhere/")
        self.assertIn("script-src 'unsafe-inline'", response.headers[HEADER])
        self.assertNotIn("nonce", response.headers[HEADER])

    @override_settings(DEBUG=False)
    def test_without_debug_error_pages_keep_the_policy(self) -> None:
        response = self.client.get("/nowhere/")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.headers[HEADER], build_policy(settings.SECURE_CSP))


class NativeInBothModesTests(SimpleTestCase):
    def test_check_finds_no_hop(self) -> None:
        self.assertEqual(check_middleware([CSP_PATH]), [])
        self.assertIn(CSP_PATH, settings.MIDDLEWARE)

    async def test_async_mode_is_a_coroutine_function(self) -> None:
        async def inner(request: HttpRequest) -> HttpResponse:
            return HttpResponse()

        self.assertTrue(iscoroutinefunction(ContentSecurityPolicyMiddleware(inner)))
        self.assertFalse(iscoroutinefunction(ContentSecurityPolicyMiddleware(sync_plain)))

    @override_settings(ROOT_URLCONF="tests.dualserve.test_csp")
    async def test_async_request_makes_no_thread_hop(self) -> None:
        floor = await hops_of_one_request(asgi_handler([]), "/async/plain/")
        with_csp = await hops_of_one_request(asgi_handler([CSP_PATH]), "/async/plain/")
        self.assertEqual(with_csp, floor)
        _, headers, _ = await asgi_request(asgi_handler([CSP_PATH]), "/async/plain/")
        self.assertIn("content-security-policy", headers)


class TemplatePagesObeyThePolicyTests(TestCase):
    """The template's own pages load under the shipped policy: nothing a browser would block."""

    # showcase:begin
    def test_index(self) -> None:
        response = self.client.get("/")
        self.assertEqual(response.status_code, 200)
        violations, counts = page_violations(
            response.content.decode(), response.headers[HEADER], "http://testserver/"
        )
        self.assertEqual(violations, [])
        self.assertGreaterEqual(counts["stylesheet"], 1)

    async def test_async_index(self) -> None:
        response = await self.async_client.get("/")
        violations, _ = page_violations(
            response.content.decode(), response.headers[HEADER], "http://testserver/"
        )
        self.assertEqual(violations, [])

    # showcase:end
    def test_admin_login(self) -> None:
        response = self.client.get("/admin/login/")
        self.assertEqual(response.status_code, 200)
        violations, counts = page_violations(
            response.content.decode(), response.headers[HEADER], "http://testserver/admin/login/"
        )
        self.assertEqual(violations, [])
        self.assertGreaterEqual(counts["script"], 1)
