"""The showcase's hello and JSON answers in Sanic, on Sanic's own server (uvloop, its parser).

`sanic lab.bench.frameworks.sanic_app:app --host 127.0.0.1 --port N --workers W
--no-access-logs --no-motd` serves it; lab.bench.contenders builds that command, pinned to
the servers' CPUs like every other contender. The bodies come from lab.bench.bare; the JSON
is serialised per request with json.dumps' defaults, as Django's JsonResponse does.
"""

from __future__ import annotations

import json

from sanic import Request, Sanic
from sanic.response import HTTPResponse, text
from sanic.response import json as json_response

from lab.bench.bare import BODY, JSON_PAYLOAD, TEXT_TYPE

app = Sanic("dualserve_bench")
# As deployed: no access log (the CLI flag says it too), no banner, no debug (the default).
app.config.ACCESS_LOG = False
app.config.MOTD = False


async def hello(request: Request) -> HTTPResponse:
    """Answer the plain-text greeting."""
    return text(BODY.decode(), content_type=TEXT_TYPE)


async def json_document(request: Request) -> HTTPResponse:
    """Answer the small JSON document, encoded as Django's JsonResponse encodes it."""
    # Sanic's default dumps drops the spaces after separators: the bytes must match.
    return json_response(JSON_PAYLOAD, dumps=json.dumps)


for twin in ("sync", "async"):
    app.add_route(hello, f"/{twin}/hello/", name=f"{twin}_hello")
    app.add_route(json_document, f"/{twin}/json/", name=f"{twin}_json")
app.add_route(hello, "/healthz", name="healthz")
