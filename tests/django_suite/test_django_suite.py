"""Django's own tests pass with apps.dualserve.native's classes wherever they pass with Django's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.django_suite.run import DEFAULT_LABELS, REPO_ROOT, RUN_TIMEOUT, run_bounded

pytestmark = pytest.mark.slow

# Two runtests.py runs (each may be rerun serially), plus the sdist download.
TIMEOUT = 4 * RUN_TIMEOUT + 300


def run_script(tmp_path: Path, *args: str) -> tuple[int, str, Any]:
    """Run tests.django_suite.run with `args`; return its exit code, output and JSON report."""
    report = tmp_path / "report.json"
    output = tmp_path / "output.txt"
    command = [sys.executable, "-m", "tests.django_suite.run", f"--json={report}", *args]
    with output.open("w") as out:
        returncode = run_bounded(command, timeout=TIMEOUT, cwd=REPO_ROOT, env=None, out=out)
    text = output.read_text()
    print(text)
    assert report.exists(), text[-3000:]
    return returncode, text, json.loads(report.read_text())


def test_native_middlewares_pass_every_test_djangos_pass(tmp_path: Path) -> None:
    returncode, output, report = run_script(tmp_path)

    assert report["problems"] == [], output
    assert list(report["labels"]) == DEFAULT_LABELS
    for label, row in report["labels"].items():
        assert row["lost"] == [], label
        assert row["django"]["passed"] > 0, label
        assert row["ours"]["passed"] >= row["django"]["passed"], label
    assert returncode == 0
    # The tests really ran our classes, and those of startproject's list that Django's suite
    # puts in its own MIDDLEWARE also ran in async mode (through the test AsyncClient).
    substituted = {line.split(" -> ")[-1] for line in report["substituted"] if " -> " in line}
    assert set(report["instances"]) == substituted
    assert "apps.dualserve.native.SessionMiddleware" in substituted
    for cls, modes in report["instances"].items():
        assert modes["sync"] > 0, cls
    for name in ("Session", "Common", "CsrfView", "Authentication", "Message"):
        assert report["instances"][f"apps.dualserve.native.{name}Middleware"]["async"] > 0, name


def test_a_broken_replacement_is_reported(tmp_path: Path) -> None:
    returncode, _, report = run_script(
        tmp_path,
        "--labels=middleware.test_security",
        "--substitute=django.middleware.security.SecurityMiddleware="
        "tests.django_suite.controls.SecurityMiddlewareWithoutNosniff",
    )

    assert returncode == 1
    row = report["labels"]["middleware.test_security"]
    assert row["django"]["passed"] > 0
    assert "middleware.test_security.SecurityMiddlewareTest.test_content_type_on" in row["lost"]
    assert all("content_type" in test for test in row["lost"])
    assert row["ours"]["passed"] == row["django"]["passed"] - len(row["lost"])


def test_pooled_asgi_handler_passes_djangos_asgi_and_handler_tests(tmp_path: Path) -> None:
    # django.core.asgi binds ASGIHandler at import: reload it so get_asgi_application() (what
    # the asgi tests call) builds the pooled handler.
    returncode, output, report = run_script(
        tmp_path,
        "--labels",
        "asgi",
        "handlers",
        "--substitute=django.core.handlers.asgi.ASGIHandler=apps.dualserve.asgi.PooledThreadASGIHandler",
        "--reload=django.core.asgi",
    )

    assert report["problems"] == [], output
    for label in ("asgi", "handlers"):
        row = report["labels"][label]
        assert row["lost"] == [], label
        assert row["django"]["passed"] > 0, label
        assert row["ours"]["passed"] >= row["django"]["passed"], label
    assert report["instances"]["apps.dualserve.asgi.PooledThreadASGIHandler"]["sync"] > 0
    assert returncode == 0
