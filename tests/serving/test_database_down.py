"""An unreachable database on real servers: 503 with Retry-After, and the worker serves on.

Every mode runs with DATABASE_URL pointing at a loopback port nothing listens on (connections
are refused at once; psycopg's pool is off, or every request would wait out its 30 s timeout
first). The test URLconf's /sync/groups/ and /async/groups/ (tests.cluster.urls) query the
database; /healthz does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.dualserve.errors import RETRY_AFTER_S
from lab.servers import MODES, free_port, interface_of_mode, start_mode
from tests.serving.conftest import Env, client_for

pytestmark = [pytest.mark.serving]


@pytest.mark.parametrize("mode", MODES)
def test_an_unreachable_database_answers_503_and_the_worker_keeps_serving(
    mode: str, serving_env: Env, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens there: PostgreSQL refuses at once
    env: Env = {
        **serving_env,
        "DJANGO_SETTINGS_MODULE": "tests.cluster.settings",
        "DATABASE_URL": f"postgres://app:secret@127.0.0.1:{closed}/app",
        "DJANGO_DB_POOL": "false",
        # Django's own debug page replaces handler500 under DEBUG.
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    side = "sync" if interface_of_mode(mode) == "wsgi" else "async"
    with start_mode(mode, env=env, workdir=tmp_path) as server, client_for(server) as client:
        for path in ("/sync/groups/", "/async/groups/"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == str(RETRY_AFTER_S)
            assert "Traceback" not in response.text
            assert "refused" not in response.text
        # The worker is still there and still serves.
        assert client.get(f"/{side}/hello/").status_code == 200
        assert server.running()
    # The failure is logged for the operator, with its cause.
    assert "OperationalError" in server.output()
