"""Facts about the machine and the software a benchmark ran on, for results.json and the report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from deploy import nginx
from lab import servers

PACKAGES = (
    "django",
    "asgiref",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "uvloop",
    "httptools",
    "whitenoise",
    "httpx",
    "granian",
    "starlette",
    "sanic",
    "rich",
    "matplotlib",
)


def loadavg() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total_bytes() -> int:
    """Return the machine's memory (MemTotal), 0 when unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def os_release() -> str:
    """Return the distribution's PRETTY_NAME, or the platform string."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def governor() -> str:
    """Return CPU 0's frequency governor, or "" when the kernel does not expose it."""
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""


def package_versions() -> dict[str, str]:
    """Return the installed version of each package that shapes the figures."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_quietly(argv: list[str]) -> str:
    """Return the first line a command prints (stdout or stderr), or "" when it fails."""
    try:
        done = subprocess.run(  # noqa: S603  (fixed commands of this module)
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def git_revision() -> str:
    """Return the checkout's commit, with "+dirty" when files differ from it."""
    commit = run_quietly(["git", "-C", str(servers.REPO_ROOT), "rev-parse", "--short", "HEAD"])
    if not commit:
        return "unknown"
    status = subprocess.run(  # noqa: S603
        ["git", "-C", str(servers.REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return commit + ("+dirty" if status.stdout.strip() else "")


def facts(wrk_version: str) -> dict[str, Any]:
    """Return the machine and software facts of a run."""
    binary = nginx.nginx_binary()
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        "memory_bytes": memory_total_bytes(),
        "os": os_release(),
        "kernel": platform.release(),
        "governor": governor(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "wrk": wrk_version,
        "nginx": run_quietly([binary, "-v"]) if binary else "not installed",
        "git": git_revision(),
    }
