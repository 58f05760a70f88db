"""Small purpose-named views for the middleware tests (mounted by tests.core.urls)."""

from __future__ import annotations

import logging
import threading
import time

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import decorator_from_middleware

from apps.core.logging import request_id_var
from apps.core.native import CsrfViewMiddleware

logger = logging.getLogger("tests.core")
csrf_protect_native = decorator_from_middleware(CsrfViewMiddleware)


async def async_ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def sync_ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


async def async_session_write(request: HttpRequest) -> HttpResponse:
    await request.session.aset("visits", await request.session.aget("visits", 0) + 1)
    return JsonResponse({"visits": await request.session.aget("visits")})


def sync_session_write(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


async def async_session_flush(request: HttpRequest) -> HttpResponse:
    await request.session.aflush()
    return HttpResponse("flushed")


async def async_post(request: HttpRequest) -> HttpResponse:
    return HttpResponse("posted")


async def async_add_message(request: HttpRequest) -> HttpResponse:
    messages.info(request, "hello from async")
    return HttpResponse("added")


def sync_read_messages(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"messages": [str(m) for m in messages.get_messages(request)]})


async def async_whoami(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    return JsonResponse({"authenticated": user.is_authenticated})


def sync_log(request: HttpRequest) -> HttpResponse:
    logger.warning("inside the view")
    return JsonResponse({"request_id": request_id_var.get()})


async def async_log(request: HttpRequest) -> HttpResponse:
    logger.warning("inside the view")
    return JsonResponse({"request_id": request_id_var.get()})


def sync_thread(request: HttpRequest) -> HttpResponse:
    """Name the thread a sync view runs on (under ASGI: the request's executor thread)."""
    time.sleep(float(request.GET.get("sleep", "0")))
    return JsonResponse({"thread": threading.current_thread().name})


@csrf_protect_native
async def async_protected(request: HttpRequest) -> HttpResponse:
    """An async view behind a decorator built from the native CSRF middleware."""
    return HttpResponse("protected")
