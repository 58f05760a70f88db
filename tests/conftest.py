"""Fixtures shared by the test packages that run the whole stack (deploy, reliability)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.stack import prepare_var_dir


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a state directory with a migrated database and collected static files.

    Module-scoped: the servers of one test module share it, and no two modules do.
    """
    return prepare_var_dir(tmp_path_factory.mktemp("var"))
