"""The commands users type serve the project: `gunicorn project.wsgi` and `gunicorn
project.asgi:application -k <UvicornWorker>` from the repo root, no config file, no options.

Each serves a Django page through the whole middleware stack with X-Interface naming the
interface that served it (and, with the showcase, every /sync/<kind>/ and /async/<kind>/ pair
gives the same answer through WSGI and through ASGI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.servers import Server
from tests.serving.conftest import USED_BY_COMMANDS, client_for

# showcase:begin
from tests.serving.exchanges import PROBES, Answer, Probe, answer

# showcase:end

pytestmark = [pytest.mark.serving, pytest.mark.slow]

INTERFACE_HEADER = "X-Interface"


def test_each_command_serves_a_page_from_the_interface_it_names(
    used_by_servers: dict[str, Server],
) -> None:
    for name, server in used_by_servers.items():
        with client_for(server) as client:
            page = client.get("/admin/login/")
            probe = client.get("/readyz")
        assert page.status_code == 200, (name, page.status_code)
        assert page.headers[INTERFACE_HEADER] == USED_BY_COMMANDS[name][1], name
        assert 'name="csrfmiddlewaretoken"' in page.text, name
        assert (probe.status_code, probe.json()["status"]) == (200, "ok"), name


# showcase:begin


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.name)
def test_every_pair_answers_alike_through_wsgi_and_asgi(
    probe: Probe, used_by_servers: dict[str, Server]
) -> None:
    answers: dict[tuple[str, str], Answer] = {}
    for name, server in used_by_servers.items():
        interface = USED_BY_COMMANDS[name][1]
        with client_for(server) as client:
            for side in ("sync", "async"):
                response = probe.send(client, side)
                assert response.headers[INTERFACE_HEADER] == interface, (name, side)
                answers[name, side] = answer(probe, response)
    reference = answers["wsgi", "sync"]
    probe.check(reference)
    different = {where: got for where, got in answers.items() if got != reference}
    assert not different, f"wsgi/sync answered {reference}, but: {different}"


# showcase:end


def test_used_by_commands_log_no_traceback(used_by_servers: dict[str, Server]) -> None:
    with client_for(used_by_servers["wsgi"]) as client:
        assert client.get("/admin/login/").status_code == 200
    for name, server in used_by_servers.items():
        assert server.running(), name
        assert "Traceback" not in server.output(), f"{name}:\n{server.tail()}"


def test_used_by_commands_side_by_side_open_no_shared_control_socket(
    used_by_servers: dict[str, Server], shared_runtime_dir: Path
) -> None:
    """gunicorn's default control socket is one path per user: ./gunicorn.conf.py turns it off."""
    for name, server in used_by_servers.items():
        assert "Control socket" not in server.output(), f"{name}:\n{server.tail()}"
    assert sorted(os.listdir(shared_runtime_dir)) == []
