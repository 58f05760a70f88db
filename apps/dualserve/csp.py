"""Content-Security-Policy headers, native in both modes, configured as in Django 6.0.

Django 5.2 has no CSP support. Django 6.0 adds
`django.middleware.csp.ContentSecurityPolicyMiddleware`, configured by two settings,
SECURE_CSP and SECURE_CSP_REPORT_ONLY: dicts that map a directive to its sources (a list, or
one string; True for a directive without sources such as `upgrade-insecure-requests`; None or
False to leave it out), with a placeholder for a per-request nonce. This module reads the
same two settings in the same shape, so a project that moves to Django 6.0 replaces
`apps.dualserve.csp.ContentSecurityPolicyMiddleware` with Django's in MIDDLEWARE,
`apps.dualserve.csp.CSP` with `django.utils.csp.CSP`, and `apps.dualserve.csp.context_processor`
with `django.template.context_processors.csp`, and keeps its policy as it is.

- Content-Security-Policy comes from SECURE_CSP, Content-Security-Policy-Report-Only from
  SECURE_CSP_REPORT_ONLY; an empty setting sends no header.
- A header the view (or an inner middleware) already set is left alone: a page that needs a
  different policy sets its own.
- `request.csp_nonce` is a random value created on first use; templates get it as
  `{{ csp_nonce }}` through `context_processor`. CSP.NONCE in a directive becomes
  `'nonce-<value>'` only on responses whose request used the nonce, so pages without inline
  code keep a policy that a cache may share.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from apps.dualserve.middleware import BothModesMiddleware

HEADER = "Content-Security-Policy"
REPORT_ONLY_HEADER = "Content-Security-Policy-Report-Only"
# (response header, setting name): the enforced policy and the one only reported.
POLICIES = ((HEADER, "SECURE_CSP"), (REPORT_ONLY_HEADER, "SECURE_CSP_REPORT_ONLY"))
# 128 bits, as CSP Level 3 recommends for a nonce; token_urlsafe is base64url.
NONCE_BYTES = 16


class CSP(StrEnum):
    """Source keywords for SECURE_CSP values (the quotes are part of the CSP syntax)."""

    SELF = "'self'"
    NONE = "'none'"
    UNSAFE_INLINE = "'unsafe-inline'"
    UNSAFE_EVAL = "'unsafe-eval'"
    UNSAFE_HASHES = "'unsafe-hashes'"
    STRICT_DYNAMIC = "'strict-dynamic'"
    REPORT_SAMPLE = "'report-sample'"
    WASM_UNSAFE_EVAL = "'wasm-unsafe-eval'"
    # Replaced by 'nonce-<value>' when the request used its nonce, dropped otherwise.
    NONCE = "<csp-nonce>"


class LazyNonce:
    """A per-request nonce, generated the first time a template or view reads it."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: str | None = None

    def __str__(self) -> str:
        if self._value is None:
            self._value = secrets.token_urlsafe(NONCE_BYTES)
        return self._value

    def __bool__(self) -> bool:
        return True

    @property
    def used(self) -> str | None:
        """Return the nonce if it was read during the request, else None."""
        return self._value


def render_sources(sources: Any, nonce: str | None) -> list[str]:
    """Return the source expressions of one directive, the nonce placeholder resolved."""
    if isinstance(sources, str):
        sources = [sources]
    elif isinstance(sources, set | frozenset):
        sources = sorted(sources)  # a stable header for the same setting
    rendered = []
    for source in sources:
        if source == CSP.NONCE:
            if nonce is not None:
                rendered.append(f"'nonce-{nonce}'")
        else:
            rendered.append(str(source))
    return rendered


def build_policy(config: Mapping[str, Any], nonce: str | None = None) -> str:
    """Return the header value for a SECURE_CSP-style dict (empty when it has no directive)."""
    directives = []
    for directive, sources in config.items():
        if sources is None or sources is False:
            continue
        if sources is True:
            directives.append(directive)
            continue
        directives.append(" ".join([directive, *render_sources(sources, nonce)]))
    return "; ".join(directives)


# Django's own DEBUG pages (the technical 404 and 500 pages, the CSRF failure page) are built
# with inline <style>, <script> and event handlers, which the shipped policy blocks: they would
# render unstyled and without their toggles. With DEBUG on, HTML error responses allow inline
# code; with DEBUG off (production) nothing changes.
DEBUG_INLINE_DIRECTIVES = ("script-src", "style-src")


def is_debug_error_page(response: HttpResponseBase) -> bool:
    """Return whether `response` may be one of Django's DEBUG pages: DEBUG on, an HTML error."""
    return (
        settings.DEBUG
        and response.status_code >= 400
        and response.headers.get("Content-Type", "").startswith("text/html")
    )


def with_inline_code(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return `config` with 'unsafe-inline' for scripts and styles, and no nonce there.

    A nonce in a directive makes browsers ignore its 'unsafe-inline' (CSP Level 2), so the
    nonce goes; a directive left unset falls back to default-src's sources, as browsers do.
    """
    relaxed = dict(config)
    for directive in DEBUG_INLINE_DIRECTIVES:
        sources = relaxed.get(directive, config.get("default-src"))
        if isinstance(sources, str):
            sources = [sources]
        elif not isinstance(sources, list | tuple | set | frozenset):
            sources = []
        kept = [source for source in sources if source != CSP.NONCE]
        relaxed[directive] = [*kept, CSP.UNSAFE_INLINE]
    return relaxed


def before_view(request: HttpRequest) -> None:
    """Give the request its lazy nonce."""
    request.csp_nonce = LazyNonce()  # type: ignore[attr-defined]


def after_view(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """Add the configured policies that the response does not carry yet."""
    nonce = getattr(request, "csp_nonce", None)
    used = nonce.used if isinstance(nonce, LazyNonce) else None
    debug_page = is_debug_error_page(response)
    for header, setting in POLICIES:
        config = getattr(settings, setting, None)
        if not config or header in response.headers:
            continue
        if debug_page:
            config = with_inline_code(config)
        policy = build_policy(config, used)
        if policy:
            response.headers[header] = policy
    return response


class ContentSecurityPolicyMiddleware(BothModesMiddleware):
    """Send Content-Security-Policy (and -Report-Only) from SECURE_CSP settings."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        before_view(request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return after_view(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        before_view(request)
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        return after_view(request, response)


def context_processor(request: HttpRequest) -> dict[str, Any]:
    """Expose the request's nonce to templates as `csp_nonce`."""
    return {"csp_nonce": getattr(request, "csp_nonce", "")}
