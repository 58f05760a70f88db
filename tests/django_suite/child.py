"""Run Django's runtests.py in this process, optionally with classes substituted for Django's.

Started by `tests.django_suite.run` in a subprocess (never imported by pytest), so the patched
Django modules die with the process:

    python -m tests.django_suite.child --tests-dir DIR --results OUT.json
        [--table module.MAPPING] [--substitute django.x.Class=apps.y.Class ...]
        [--reload django.z] [--parallel N] -- <runtests args>

The repository root must come first on sys.path (`-m` from the root does that): Django's tests
directory also holds a top-level package named `apps`, which must not shadow ours.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import multiprocessing
import os
import runpy
import sys
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Outcome names written to the results file; a test's worst outcome wins (a failed subtest
# fails its test even though unittest then reports no success for it).
PASSED = "passed"
FAILED = "failed"
ERROR = "error"
SKIPPED = "skipped"
EXPECTED_FAILURE = "expected_failure"
UNEXPECTED_SUCCESS = "unexpected_success"
_SEVERITY = {
    PASSED: 0,
    SKIPPED: 1,
    EXPECTED_FAILURE: 1,
    UNEXPECTED_SUCCESS: 2,
    FAILED: 3,
    ERROR: 3,
}


def split_dotted(path: str) -> tuple[str, str]:
    """Split "package.module.Name" into ("package.module", "Name")."""
    module, _, name = path.rpartition(".")
    if not module or not name:
        raise SystemExit(f"{path!r} is not a dotted path to a module attribute.")
    return module, name


def load_table(path: str) -> dict[str, str]:
    """Return the Django entries of the mapping at `path` ("module.NAME")."""
    module, name = split_dotted(path)
    table: dict[str, str] = getattr(importlib.import_module(module), name)
    # Django's suite can only speak for replacements of Django's own classes.
    return {target: new for target, new in table.items() if target.startswith("django.")}


class InstanceCounter:
    """Count the instances of each substituted class, across runtests' forked workers."""

    def __init__(self, classes: list[type]) -> None:
        self.names = [f"{cls.__module__}.{cls.__qualname__}" for cls in classes]
        # Shared memory, created before runtests forks its workers, so their counts add up.
        self.counts = multiprocessing.Array("l", 2 * len(classes))
        for index, cls in enumerate(classes):
            self.wrap(cls, index)

    def wrap(self, cls: type, index: int) -> None:
        """Make `cls.__init__` (also reached by subclasses) count sync and async instances."""
        original = cls.__init__  # type: ignore[misc]
        counts = self.counts

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            slot = 2 * index + int(bool(getattr(self, "async_mode", False)))
            with counts.get_lock():
                counts[slot] += 1

        cls.__init__ = __init__  # type: ignore[misc]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Return {class path: {"sync": n, "async": n}}."""
        return {
            name: {"sync": self.counts[2 * i], "async": self.counts[2 * i + 1]}
            for i, name in enumerate(self.names)
        }


def apply_substitutions(
    substitutions: dict[str, str], reloads: list[str]
) -> tuple[list[str], list[type]]:
    """Point each Django attribute at its replacement; return the changes and the new classes.

    Run after django.setup(): the replacements may import models. Each replacement must
    subclass what it replaces, so Django's own isinstance/issubclass checks keep holding.
    """
    done = []
    classes = []
    for target, replacement in substitutions.items():
        target_module, target_name = split_dotted(target)
        module = importlib.import_module(target_module)
        original = getattr(module, target_name)
        new_module, new_name = split_dotted(replacement)
        new = getattr(importlib.import_module(new_module), new_name)
        if not (isinstance(new, type) and isinstance(original, type) and issubclass(new, original)):
            raise SystemExit(f"{replacement} does not subclass {target}: refusing to substitute.")
        setattr(module, target_name, new)
        done.append(f"{target} -> {replacement}")
        classes.append(new)
    # A module that built objects from a class at import time (csrf_protect is
    # decorator_from_middleware(CsrfViewMiddleware)) is re-run so it builds them from ours.
    for name in reloads:
        importlib.reload(importlib.import_module(name))
        done.append(f"reloaded {name}")
    return done, classes


class RecordingResult(unittest.TextTestResult):
    """Keep every test's outcome by id, next to the usual text report."""

    outcomes: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _record(self, test: unittest.TestCase, outcome: str) -> None:
        key = test.id()
        previous = self.outcomes.get(key)
        if previous is None or _SEVERITY[outcome] >= _SEVERITY[previous]:
            self.outcomes[key] = outcome

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, PASSED)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, ERROR)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, FAILED)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, SKIPPED)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, EXPECTED_FAILURE)

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, UNEXPECTED_SUCCESS)

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, FAILED if failed else ERROR)


def install_hooks(
    substitutions: dict[str, str], table: str | None, reloads: list[str], results_path: Path
) -> None:
    """Substitute right after Django's first setup; write every outcome when the suite ends."""
    import django
    from django.test.runner import DiscoverRunner

    original_setup: Callable[..., None] = django.setup
    applied: list[str] = []
    counters: list[InstanceCounter] = []

    def setup(*args: Any, **kwargs: Any) -> None:
        original_setup(*args, **kwargs)
        if applied:
            return
        wanted = {**(load_table(table) if table else {}), **substitutions}
        changes, classes = apply_substitutions(wanted, reloads)
        applied.extend(changes or ["(nothing)"])
        counters.append(InstanceCounter(classes))
        for line in applied:
            print(f"substituted: {line}", file=sys.stderr)

    def get_resultclass(self: DiscoverRunner) -> type[unittest.TextTestResult]:
        return RecordingResult

    original_run_suite = DiscoverRunner.run_suite

    def run_suite(self: DiscoverRunner, suite: Any, **kwargs: Any) -> Any:
        result = original_run_suite(self, suite, **kwargs)
        report = {
            "substituted": applied,
            "instances": counters[0].snapshot() if counters else {},
            "tests_run": result.testsRun,
            "outcomes": getattr(result, "outcomes", {}),
        }
        results_path.write_text(json.dumps(report, indent=1, sort_keys=True))
        return result

    django.setup = setup
    DiscoverRunner.get_resultclass = get_resultclass  # type: ignore[method-assign]
    DiscoverRunner.run_suite = run_suite  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Parse the options, install the hooks and hand over to runtests.py."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests-dir", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--substitute", action="append", default=[], metavar="TARGET=NEW")
    parser.add_argument("--table", help="dotted path of a mapping of substitutions")
    parser.add_argument("--reload", action="append", default=[], metavar="MODULE")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("runtests_args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    substitutions = dict(item.split("=", 1) for item in options.substitute)
    runtests_args = [arg for arg in options.runtests_args if arg != "--"]
    # Patches reach runtests' workers only through fork; spawned workers import Django afresh.
    if options.parallel != 1 and multiprocessing.get_start_method() != "fork":
        raise SystemExit("--parallel above 1 needs the 'fork' start method: use --parallel=1.")

    tests_dir: Path = options.tests_dir.resolve()
    results_path: Path = options.results.resolve()
    # After the repository root, so Django's test apps import by label but ours win on a clash.
    sys.path.insert(1, str(tests_dir))
    os.chdir(tests_dir)
    install_hooks(substitutions, options.table, options.reload, results_path)
    sys.argv = [str(tests_dir / "runtests.py"), f"--parallel={options.parallel}", *runtests_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
