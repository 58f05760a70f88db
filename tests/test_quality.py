"""The quality gates run as tests, so `make test` (and CI) enforce them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a command from the repo root and capture its output."""
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_ruff_lint() -> None:
    result = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    """pyproject's [tool.importlinter] layers: the runtime never imports the tooling."""
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_no_missing_migrations() -> None:
    result = run(sys.executable, "manage.py", "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_repository_cites_nothing_outside_it() -> None:
    """Code and docs explain themselves: no reference to the team's notes, which do not ship."""
    tracked = run("git", "ls-files", "-z").stdout.split("\0")
    citing = [
        name
        for name in tracked
        if name
        and name != "tests/test_quality.py"
        and (ROOT / name).is_file()
        and "FIELD_NOTES" in (ROOT / name).read_text(errors="replace")
    ]
    assert citing == []


def test_asgiref_is_declared_for_the_executor_argument() -> None:
    """apps.dualserve.asgi passes ThreadSensitiveContext(executor=...), new in asgiref 3.13."""
    import tomllib

    from packaging.requirements import Requirement

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (asgiref,) = [Requirement(d) for d in dependencies if Requirement(d).name == "asgiref"]
    assert not asgiref.specifier.contains("3.12.1")
    assert asgiref.specifier.contains("3.13.0")


def test_one_uv_version_for_the_makefile_the_image_and_the_lock() -> None:
    """Another uv rewrites uv.lock on its next `uv add`: all three places name the same one."""
    import re
    import tomllib

    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    assert makefile is not None
    assert dockerfile is not None
    assert dockerfile[1] == makefile[1]
    assert required["required-version"] == f"=={makefile[1]}"
