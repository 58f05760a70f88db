"""Run Django's own test suites with our classes substituted for Django's, against a baseline.

    .venv/bin/python -m tests.django_suite.run [--labels csrf_tests ...] [--substitute A=B ...]

Fetches the sdist of exactly the installed Django from the package index (cached under
var/django-suite/), then runs Django's tests/runtests.py twice on the same labels: once as
shipped (the baseline) and once with every class of the substitution table patched into
Django's modules (by default the Django entries of apps.dualserve.native.REPLACEMENTS). Prints the
counts per label and exits 1 when our classes fail a test that Django's classes pass, when a
label ran no test, or when a substituted class was never instantiated.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from tests.django_suite.child import (
    ERROR,
    EXPECTED_FAILURE,
    FAILED,
    PASSED,
    SKIPPED,
    UNEXPECTED_SUCCESS,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "var" / "django-suite"
DEFAULT_INDEX = "https://pypi.org/simple/"

# The suites of the middlewares apps.dualserve.native replaces (issue 2). auth_tests runs whole:
# test_middleware, but also the login/logout views, RemoteUserMiddleware and the decorators
# go through AuthenticationMiddleware and the session, and the whole module takes seconds.
# decorators.test_csrf: csrf_protect, requires_csrf_token and ensure_csrf_cookie are
# CsrfViewMiddleware applied per view (decorator_from_middleware), sync and async views.
DEFAULT_LABELS = [
    "csrf_tests",
    "sessions_tests",
    "messages_tests",
    "middleware",
    "auth_tests",
    "decorators.test_csrf",
    # LocaleMiddleware (i18n_patterns, language redirects) and CurrentSiteMiddleware; GZip,
    # ConditionalGet (middleware) and LoginRequired (auth_tests) are in the labels above.
    "i18n.patterns",
    "sites_tests",
]
# A mapping "django.path.Class" -> "our.path.Class"; entries outside django.* are ignored.
DEFAULT_TABLE = "apps.dualserve.native.REPLACEMENTS"
# Built from CsrfViewMiddleware at import time (csrf_protect & co.), before the patch can run:
# re-run so Django's decorator tests exercise our class too.
DEFAULT_RELOADS = ["django.views.decorators.csrf"]
RUN_TIMEOUT = 600  # seconds per runtests.py run; the default labels take about 30 s here
DOWNLOAD_TIMEOUT = 120
NOT_PASSED = (FAILED, ERROR, UNEXPECTED_SUCCESS)


# --- The Django source distribution -----------------------------------------------------------


def index_url() -> str:
    """Return the package index to download from: the one pip or uv is configured with."""
    for name in ("PIP_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/") + "/"
    return DEFAULT_INDEX


def find_sdist(django_version: str) -> tuple[str, str]:
    """Return the URL and sha256 of Django's sdist from the index's simple page (PEP 503)."""
    page_url = urllib.parse.urljoin(index_url(), "django/")
    with urllib.request.urlopen(page_url, timeout=DOWNLOAD_TIMEOUT) as page:
        html = page.read().decode()
    # Files of old releases are named Django-x.y.tar.gz; PEP 625 names are lower case.
    wanted = f"django-{django_version}.tar.gz"
    for href in re.findall(r'href="([^"]+)"', html):
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if url.rsplit("/", 1)[-1].lower() == wanted:
            if not fragment.startswith("sha256="):
                raise SystemExit(f"{page_url} gives no sha256 for {wanted}: refusing to use it.")
            return url, fragment.removeprefix("sha256=")
    raise SystemExit(f"{wanted} is not on {page_url}.")


def download_sdist(django_version: str, cache: Path) -> Path:
    """Return the cached sdist, downloading and checking it against the index's sha256 first."""
    archive = cache / f"django-{django_version}.tar.gz"
    if archive.exists():
        return archive
    url, sha256 = find_sdist(django_version)
    print(f"Downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SystemExit(f"{url}: sha256 mismatch, expected {sha256}.")
    cache.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(archive)
    return archive


def django_tests_dir(django_version: str, cache: Path = CACHE_DIR) -> Path:
    """Return Django's tests/ directory for `django_version`, extracted from the cached sdist."""
    target = cache / f"django-{django_version}" / "tests"
    if (target / "runtests.py").exists():
        return target
    archive = download_sdist(django_version, cache)
    prefix = f"django-{django_version}/tests/"
    with tempfile.TemporaryDirectory(dir=cache) as scratch, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise SystemExit(f"{archive} holds no {prefix}.")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(scratch, members=members, filter="data")
        else:  # Python < 3.11.4: refuse what the "data" filter would refuse
            for member in members:
                if not (member.isfile() or member.isdir()) or ".." in Path(member.name).parts:
                    raise SystemExit(f"{archive}: unsafe member {member.name!r}.")
            tar.extractall(scratch, members=members)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Whole directory or nothing: an interrupted extraction is not mistaken for a cache.
        shutil.rmtree(target, ignore_errors=True)
        Path(scratch, prefix).rename(target)
    return target


# --- Running runtests.py ----------------------------------------------------------------------


def run_bounded(
    command: list[str], *, timeout: float, cwd: Path, env: dict[str, str] | None, out: IO[str]
) -> int:
    """Run `command` in its own process group; kill the whole group if it outlives `timeout`.

    runtests.py forks worker processes: killing only the direct child would orphan them.
    """
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return process.wait(timeout=timeout)
    finally:
        # Also reaps workers left behind by a child that crashed or timed out.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Run:
    """The outcome of one runtests.py run."""

    name: str
    returncode: int
    log: Path
    outcomes: dict[str, str] = field(default_factory=dict)
    substituted: list[str] = field(default_factory=list)
    instances: dict[str, dict[str, int]] = field(default_factory=dict)


def run_suite(
    name: str,
    tests_dir: Path,
    labels: list[str],
    *,
    substitutions: list[str],
    table: str | None,
    reloads: list[str],
    parallel: int,
    workdir: Path,
) -> Run:
    """Run runtests.py on `labels` in a child process; return its per-test outcomes."""
    results = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "tests.django_suite.child",
        f"--tests-dir={tests_dir}",
        f"--results={results}",
        f"--parallel={parallel}",
    ]
    command += [f"--substitute={item}" for item in substitutions]
    command += [f"--table={table}"] if table else []
    command += [f"--reload={module}" for module in reloads]
    command += ["--", "--settings=test_sqlite", "--noinput", *labels]
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.pop("PYTHONPATH", None)
    with log.open("w") as out:
        returncode = run_bounded(command, timeout=RUN_TIMEOUT, cwd=REPO_ROOT, env=env, out=out)
    run = Run(name=name, returncode=returncode, log=log)
    if not results.exists() and parallel > 1:
        # Without tblib, one failing test in a worker crashes runtests' whole parallel run
        # ("cannot pickle 'traceback' object"): rerun serially to learn which tests fail.
        print(f"The {name} run crashed; running it again with --parallel=1.", file=sys.stderr)
        return run_suite(
            name,
            tests_dir,
            labels,
            substitutions=substitutions,
            table=table,
            reloads=reloads,
            parallel=1,
            workdir=workdir,
        )
    if results.exists():
        data = json.loads(results.read_text())
        run.outcomes = data["outcomes"]
        run.substituted = data["substituted"]
        run.instances = data["instances"]
    return run


# --- The report -------------------------------------------------------------------------------


def label_of(test_id: str, labels: list[str]) -> str | None:
    """Return the most specific label that selected `test_id`."""
    matches = [label for label in labels if test_id == label or test_id.startswith(label + ".")]
    return max(matches, key=len) if matches else None


def counts(outcomes: dict[str, str]) -> dict[str, int]:
    """Return how many tests passed, did not pass, or were skipped (incl. expected failures)."""
    values = list(outcomes.values())
    return {
        "passed": values.count(PASSED),
        "not_passed": sum(values.count(outcome) for outcome in NOT_PASSED),
        "skipped": values.count(SKIPPED) + values.count(EXPECTED_FAILURE),
    }


def compare(baseline: Run, ours: Run, labels: list[str]) -> dict[str, Any]:
    """Return the per-label counts of both runs and the tests only Django's classes pass."""
    per_label: dict[str, Any] = {}
    for label in labels:
        base = {k: v for k, v in baseline.outcomes.items() if label_of(k, labels) == label}
        mine = {k: v for k, v in ours.outcomes.items() if label_of(k, labels) == label}
        lost = sorted(k for k, v in base.items() if v == PASSED and mine.get(k) != PASSED)
        per_label[label] = {"django": counts(base), "ours": counts(mine), "lost": lost}
    # Errors raised outside any label (a module that failed to import, a class setup).
    unlabelled = sorted(
        k
        for k, v in ours.outcomes.items()
        if label_of(k, labels) is None and v in NOT_PASSED and baseline.outcomes.get(k) != v
    )
    return {"labels": per_label, "unlabelled_failures": unlabelled}


def problems_of(baseline: Run, ours: Run, summary: dict[str, Any]) -> list[str]:
    """Return why the comparison fails (empty when our classes pass all Django's do)."""
    problems = []
    for run in (baseline, ours):
        if not run.outcomes:
            problems.append(f"the {run.name} run produced no results (exit {run.returncode})")
    for label, row in summary["labels"].items():
        if row["django"]["passed"] == 0 or row["ours"]["passed"] == 0:
            problems.append(f"{label}: no passing test in one of the runs (wrong label?)")
        problems.extend(f"{label}: fails with our classes: {test}" for test in row["lost"])
    problems.extend(f"fails with our classes: {test}" for test in summary["unlabelled_failures"])
    for cls, modes in ours.instances.items():
        if sum(modes.values()) == 0:
            problems.append(f"{cls} was never instantiated: these labels do not test it")
    return problems


def print_report(
    django_version: str, baseline: Run, ours: Run, summary: dict[str, Any], problems: list[str]
) -> None:
    """Print the table of counts, the substitutions and any problem."""
    print(f"\nDjango {django_version}'s own tests: Django's classes vs ours")
    width = max(len(label) for label in [*summary["labels"], "total"])
    header = (
        f"{'label':<{width}} {'Django passed':>13} {'ours passed':>11} {'lost':>5} {'skipped':>8}"
    )
    print(header)
    print("-" * len(header))
    total = {"django": 0, "ours": 0, "lost": 0}
    for label, row in summary["labels"].items():
        skipped = f"{row['django']['skipped']}/{row['ours']['skipped']}"
        print(
            f"{label:<{width}} {row['django']['passed']:>13} {row['ours']['passed']:>11}"
            f" {len(row['lost']):>5} {skipped:>8}"
        )
        total["django"] += row["django"]["passed"]
        total["ours"] += row["ours"]["passed"]
        total["lost"] += len(row["lost"])
    print(f"{'total':<{width}} {total['django']:>13} {total['ours']:>11} {total['lost']:>5}")
    print("(lost: passed with Django's classes, not with ours; skipped: incl. expected failures)")
    print("\nSubstituted in the 'ours' run:")
    for line in ours.substituted:
        print(f"  {line}")
    print("Instances of the substituted classes created by the tests (sync mode / async mode):")
    for cls, modes in ours.instances.items():
        print(f"  {cls:<45} {modes['sync']:>5} / {modes['async']}")
    print(f"Logs: {baseline.log}, {ours.log}")
    for problem in problems:
        print(f"PROBLEM: {problem}")


def main(argv: list[str] | None = None) -> int:
    """Fetch Django's tests, run them both ways, print the comparison; return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", nargs="+", default=DEFAULT_LABELS, help="runtests labels")
    parser.add_argument(
        "--substitute",
        action="append",
        default=[],
        metavar="DJANGO_PATH=OUR_PATH",
        help="patch one attribute (repeatable); given, it replaces the --table entries",
    )
    parser.add_argument("--table", default=DEFAULT_TABLE, help="dotted path of a mapping")
    parser.add_argument(
        "--reload", action="append", default=None, metavar="MODULE", help="re-run after patching"
    )
    parser.add_argument("--parallel", type=int, default=2, help="runtests processes")
    parser.add_argument("--tests-dir", type=Path, help="an extracted Django tests/ to use")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    options = parser.parse_args(argv)

    django_version = version("django")
    tests_dir = options.tests_dir or django_tests_dir(django_version)
    reloads = DEFAULT_RELOADS if options.reload is None else options.reload
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        workdir = Path(scratch)
        common: dict[str, Any] = {"parallel": options.parallel, "workdir": workdir}
        baseline = run_suite(
            "django", tests_dir, options.labels, substitutions=[], table=None, reloads=[], **common
        )
        ours = run_suite(
            "ours",
            tests_dir,
            options.labels,
            substitutions=options.substitute,
            table=None if options.substitute else options.table,
            reloads=reloads,
            **common,
        )
        # Keep the logs of the last run next to the cache, for the failures' tracebacks.
        for run in (baseline, ours):
            kept = CACHE_DIR / f"last-{run.name}.log"
            shutil.copyfile(run.log, kept)
            run.log = kept
    summary = compare(baseline, ours, options.labels)
    problems = problems_of(baseline, ours, summary)
    print_report(django_version, baseline, ours, summary, problems)
    if options.json:
        report = {
            "django_version": django_version,
            "substituted": ours.substituted,
            "instances": ours.instances,
            "problems": problems,
            **summary,
        }
        options.json.write_text(json.dumps(report, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
