# showcase: this file goes with the showcase
"""The live page (/live/) in a real browser: Debian's chromium driven by Playwright.

One stack for the module: wsgi_gthread and asgi_uvicorn behind nginx, on a private
redis-server as the channel layer, so an event published by a WSGI worker reaches the ASGI
workers that hold the SSE stream and the WebSocket. The page is loaded from nginx's hybrid
entry, as `make up` serves it. Waits are bounded; nothing asserts how fast anything was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from lab.stack import Stack, start_stack
from tests.redis_server import running_redis
from tests.support import require_nginx

pytestmark = [pytest.mark.serving, pytest.mark.slow]

CHROMIUM_INSTALL_HINT = (
    "chromium is not installed: install Debian's package with `sudo apt-get install chromium` "
    "(Playwright drives it; no browser download)."
)
# Bounds on every wait in the browser, in ms: a hang fails, it never stalls the run.
LOAD_TIMEOUT_MS = 15_000
VOLLEY_TIMEOUT_MS = 30_000
EVENT_TIMEOUT_MS = 5_000
# A small volley: N answers per row, each after MS milliseconds.
N = 8
MS = 300
# Publishes tried before the feeds must have shown one. The SSE view sends its headers before
# it has joined the live group, so an event published the moment the stream opens can pass it.
PUBLISH_ATTEMPTS = 3
# Recorded in the page before any of its own scripts runs: every CSP violation, whether or not
# the browser also reports it on the console.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


def chromium_binary() -> str:
    """Return Debian's chromium; without it, fail under CI=true and skip elsewhere."""
    binary = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {CHROMIUM_INSTALL_HINT}")
        pytest.skip(CHROMIUM_INSTALL_HINT)
    return binary


@pytest.fixture(scope="module")
def stack(var_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_nginx()
    with (
        running_redis(tmp_path_factory.mktemp("redis")) as redis_url,
        start_stack(
            "wsgi_gthread",
            "asgi_uvicorn",
            var_dir,
            tmp_path_factory.mktemp("stack"),
            server_env={"REDIS_URL": redis_url},
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, headless=True)
        yield launched
        launched.close()


class LivePage:
    """The live page open in a fresh browser context, with every error it reported."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.headers: dict[str, str] = {}
        page.on("console", self.on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def csp_violations(self) -> list[str]:
        violations: list[str] = self.page.evaluate("window.__cspViolations")
        return violations

    def wait_for_feeds(self) -> None:
        """Wait until the SSE stream and the WebSocket are both open."""
        for feed in ("sse", "ws"):
            self.page.wait_for_selector(
                f'#feed-{feed} .state[data-state="open"]', timeout=LOAD_TIMEOUT_MS
            )

    def wait_for_event(self, text: str) -> bool:
        """Wait (bounded) until both feeds list `text`; return whether they did."""
        try:
            self.page.wait_for_function(
                """text => ["sse", "ws"].every(feed => Array.from(
                    document.querySelectorAll(`#feed-${feed} .events .text`)
                ).some(element => element.textContent === text))""",
                arg=text,
                timeout=EVENT_TIMEOUT_MS,
            )
        except PlaywrightTimeout:
            return False
        return True

    def feed_texts(self, feed: str) -> list[str]:
        return self.page.locator(f"#feed-{feed} .events .text").all_inner_texts()


@pytest.fixture
def live_page(browser: Browser, stack: Stack) -> Iterator[LivePage]:
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    live = LivePage(page)
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    response = page.goto(stack.url("hybrid", "/live/"), wait_until="load")
    assert response is not None
    assert response.status == 200
    live.headers = response.headers
    live.wait_for_feeds()
    yield live
    # Left as a person leaves it, so the browser ends the SSE stream and closes the WebSocket
    # (code 1001, going away) before the servers stop.
    page.goto("about:blank")
    context.close()


def test_the_page_loads_under_the_csp_without_an_error(live_page: LivePage) -> None:
    page = live_page.page
    assert "default-src 'self'" in live_page.headers["content-security-policy"]
    # Its script ran (it drew nothing yet, but it opened both feeds: the fixture waited).
    assert page.locator("#interface").inner_text() == "WSGI"
    assert live_page.csp_violations() == []
    assert live_page.errors == []


def test_the_page_sets_the_csrf_cookie_its_publish_button_sends(live_page: LivePage) -> None:
    cookies = {cookie["name"] for cookie in live_page.page.context.cookies()}
    assert "csrftoken" in cookies


def test_fire_draws_a_mark_per_answer_labelled_with_its_interface(live_page: LivePage) -> None:
    page = live_page.page
    page.fill("#volley-n", str(N))
    page.fill("#volley-ms", str(MS))
    page.click("#fire")
    page.wait_for_function(
        "n => document.querySelectorAll('#chart .mark').length === n",
        arg=2 * N,
        timeout=VOLLEY_TIMEOUT_MS,
    )
    marks = page.locator("#chart .mark")
    drawn = [
        (
            mark.get_attribute("data-row"),
            mark.get_attribute("data-interface"),
            mark.get_attribute("data-status"),
        )
        for mark in marks.all()
    ]
    assert sorted(drawn) == [("async", "asgi", "200")] * N + [("sync", "wsgi", "200")] * N
    # What a person reads: each bar labelled with its answer's X-Interface header.
    labels = page.locator("#chart .mark text").all_text_contents()
    assert sorted(labels) == ["asgi"] * N + ["wsgi"] * N
    # No answer came before its wait was over: the bars are drawn at the times measured.
    times = [int(mark.get_attribute("data-ms") or -1) for mark in marks.all()]
    assert min(times) >= MS
    assert page.locator("#summary-sync .count").inner_text() == f"{N}/{N}"
    assert page.locator("#summary-async .interfaces").inner_text() == f"asgi: {N}"
    assert live_page.csp_violations() == []
    assert live_page.errors == []


def test_a_published_event_reaches_both_feeds(live_page: LivePage) -> None:
    page = live_page.page
    for _ in range(PUBLISH_ATTEMPTS):
        text = f"browser test {uuid.uuid4().hex[:8]}"
        page.fill("#publish-text", text)
        page.click("#publish")
        page.wait_for_function(
            "() => document.querySelector('#publish-status').value !== 'Publishing …'",
            timeout=EVENT_TIMEOUT_MS,
        )
        status = page.locator("#publish-status").inner_text()
        assert status.startswith("Published"), status
        if live_page.wait_for_event(text):
            break
    seen = {feed: live_page.feed_texts(feed) for feed in ("sse", "ws")}
    assert text in seen["sse"], seen
    assert text in seen["ws"], seen
    # Published through WSGI, received through ASGI: the bus crosses processes.
    assert status.endswith("through wsgi."), status
    assert live_page.csp_violations() == []
    assert live_page.errors == []
