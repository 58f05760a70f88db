"""The showcase's hello and JSON answers in Starlette: a lean async framework's ceiling.

`gunicorn -c deploy/gunicorn/asgi_uvicorn.py lab.bench.frameworks.starlette_app:app` serves
it on the same uvicorn workers, worker count and CPUs as Django's ASGI contender. The
bodies come from lab.bench.bare; the JSON is serialised per request, as Django does.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from lab.bench.bare import BODY, JSON_TYPE, TEXT_TYPE, json_body


async def hello(request: Request) -> Response:
    """Answer the plain-text greeting."""
    return PlainTextResponse(BODY, media_type=TEXT_TYPE)


async def json_document(request: Request) -> Response:
    """Answer the small JSON document, encoded as Django's JsonResponse encodes it."""
    # Not JSONResponse: it drops the spaces after separators, and the bytes must match.
    return Response(json_body(), media_type=JSON_TYPE)


# Both twins' paths, so a WSGI- or ASGI-shaped request gets the same answer; /healthz for the
# harness's start-up probe. Starlette answers lifespan itself (the config runs it "on").
app = Starlette(
    routes=[
        *(Route(f"/{twin}/hello/", hello) for twin in ("sync", "async")),
        *(Route(f"/{twin}/json/", json_document) for twin in ("sync", "async")),
        Route("/healthz", hello),
    ]
)
