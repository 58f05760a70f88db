# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""The app's in-process database tests (Django test cases) run again on PostgreSQL.

The suite itself runs them on SQLite; here a child pytest runs the same classes with
DATABASE_URL set, so pytest-django creates its test database on the PostgreSQL server.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lab.servers import REPO_ROOT, merged_environment
from tests.db.conftest import Database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DATABASE_TESTS = (
    "tests/showcase/test_views.py::DbTests",
    "tests/showcase/test_views.py::DbJsonTests",
    "tests/showcase/test_models.py",
    "tests/dualserve/test_middleware.py::HealthCheckTests",
    "tests/dualserve/test_asgi.py::RetiredThreadTests",
)


def test_app_database_tests_pass_on_postgresql(postgres_database: Database) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.db.report_database",
            "-p",
            "no:cacheprovider",
            *DATABASE_TESTS,
        ],
        cwd=REPO_ROOT,
        env=merged_environment({**postgres_database.env, "DJANGO_SETTINGS_MODULE": None}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"database: django.db.backends.postgresql {postgres_database.name}" in output
    summary = output.strip().splitlines()[-1]
    # Every test ran and passed: none skipped, none deselected.
    assert re.search(r"\d+ passed", summary), summary
    assert not re.search(r"failed|skipped|error|deselected|xfail|xpass", summary), summary
