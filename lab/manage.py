"""manage.py in a subprocess: how the lab and the tests migrate and collect static files.

`make up`, the benchmark, the test stacks and the database tests all prepare state for servers
they start in other processes: the command runs in a process of its own too, with our
interpreter, from the repository root, on the environment those servers get (DJANGO_VAR_DIR,
DATABASE_URL, ...), not on this process's Django settings. Its output is captured and shown only
when it fails, in the caller's own error.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from lab.servers import REPO_ROOT, merged_environment

# Migrating an empty PostgreSQL database on a loaded CI machine takes well under a minute.
TIMEOUT_S = 300.0


class ManageError(RuntimeError):
    """A manage.py command failed or did not finish; the message holds its output."""


def run(
    args: Sequence[str], env: Mapping[str, str | None], *, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run `manage.py *args` with `env` over this process's environment; return it finished.

    A None value in `env` removes the variable (a developer's DATABASE_URL must not leak in).
    """
    return subprocess.run(  # noqa: S603  (our own interpreter and manage.py, no shell)
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=merged_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_checked(
    args: Sequence[str],
    env: Mapping[str, str | None],
    *,
    what: str = "",
    timeout: float = TIMEOUT_S,
    error: type[Exception] = ManageError,
) -> None:
    """Run `manage.py *args`; raise `error` with its output when it fails or times out.

    `what` names the step in the message ("migrating the database"); the command line otherwise.
    """
    what = what or shlex.join(["manage.py", *args])
    try:
        done = run(args, env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} did not finish within {timeout:g} s.\n{output_of(exc)}") from None
    if done.returncode != 0:
        raise error(f"{what} failed:\n{done.stdout}{done.stderr}")


def output_of(expired: subprocess.TimeoutExpired) -> str:
    """Return what a command wrote before its timeout (bytes on POSIX even in text mode)."""
    parts = (expired.stdout, expired.stderr)
    return "".join(
        part.decode(errors="replace") if isinstance(part, bytes) else part or "" for part in parts
    )
