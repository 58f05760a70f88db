# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""Every serving mode's config serves every showcase endpoint, logs, and probes right."""

from __future__ import annotations

import re
import uuid

import pytest

from lab.servers import Server, interface_of_mode
from tests.serving.conftest import client_for
from tests.serving.exchanges import INTERFACE_HEADER, PROBES, Probe, answer

pytestmark = pytest.mark.serving


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.name)
def test_mode_serves_every_endpoint_on_its_interface(probe: Probe, mode_server: Server) -> None:
    interface = interface_of_mode(mode_server.mode)
    with client_for(mode_server) as client:
        sync_response = probe.send(client, "sync")
        async_response = probe.send(client, "async")
    assert sync_response.headers[INTERFACE_HEADER] == interface
    assert async_response.headers[INTERFACE_HEADER] == interface
    sync_answer = answer(probe, sync_response)
    probe.check(sync_answer)
    assert answer(probe, async_response) == sync_answer


def test_mode_answers_health_probes(mode_server: Server) -> None:
    with client_for(mode_server) as client:
        liveness = client.get("/healthz")
        readiness = client.get("/readyz")
    assert (liveness.status_code, liveness.json()) == (200, {"status": "ok"})
    assert (readiness.status_code, readiness.json()) == (200, {"status": "ok"})


def test_access_log_has_duration_and_request_id(mode_server: Server) -> None:
    request_id = f"serving-{uuid.uuid4().hex}"
    with client_for(mode_server) as client:
        response = client.get("/sync/sleep/?ms=30", headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id
    line = r'"GET /sync/sleep/\?ms=30 HTTP/1\.1" 200 \d+ .* (?P<ms>\d+)ms ' + re.escape(request_id)
    # The line is written once the response is sent: give the worker a moment (bounded).
    assert mode_server.wait_for_output(line + "$", timeout=10), mode_server.tail()
    found = re.search(line, mode_server.output())
    assert found
    # The duration covers the view's 30 ms wait: proof it is the request time, not a constant.
    assert int(found["ms"]) >= 30


def test_mode_config_is_the_one_running(mode_server: Server) -> None:
    with client_for(mode_server) as client:
        assert client.get("/healthz").status_code == 200
    ready = re.search(r"dualserve ready: app=(\S+) worker_class=(\S+)", mode_server.output())
    assert ready, mode_server.tail()
    expected_app = f"project.{interface_of_mode(mode_server.mode)}:application"
    expected_worker = {
        "wsgi_sync": "sync",
        "wsgi_gthread": "deploy.workers.ThreadWorker",
        "asgi_uvicorn": "deploy.workers.UvicornWorker",
        "asgi_gunicorn": "asgi",
    }[mode_server.mode]
    assert ready.groups() == (expected_app, expected_worker)
