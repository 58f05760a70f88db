"""lab/template.py and copier.yml: a generated project is a project of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from copier import run_copy

from lab import template
from tests.support import REPO_ROOT, copy_repository

# Built from the constants so this file holds no marker of its own for strip_showcase to act on.
B, E = template.BEGIN, template.END
MARKED = f"keep 1\n# {B}\ndrop 1\n# {E}\nkeep 2\n<!-- {B} -->\ndrop 2\n<!-- {E} -->\nkeep 3\n"


def test_strip_blocks_drops_marked_lines_and_the_markers() -> None:
    assert template.strip_blocks(MARKED, "f") == "keep 1\nkeep 2\nkeep 3\n"


def test_strip_blocks_leaves_the_blank_lines_of_one_side_only() -> None:
    """Two blank lines, a block, two blank lines: two remain, as a formatter wants them."""
    text = f"def a():\n    pass\n\n\n# {B}\ndef b():\n    pass\n# {E}\n\n\ndef c():\n    pass\n"
    assert template.strip_blocks(text, "f") == "def a():\n    pass\n\n\ndef c():\n    pass\n"
    # A block between two lines that are not blank takes nothing else with it.
    assert template.strip_blocks(f"a\n# {B}\nb\n# {E}\n\nc\n", "f") == "a\n\nc\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"# {B}\nx\n", "never closed"),
        (f"x\n# {E}\n", "without"),
        (f"# {B}\n# {B}\n# {E}\n", "inside another block"),
    ],
)
def test_strip_blocks_refuses_unbalanced_markers(text: str, message: str) -> None:
    with pytest.raises(template.TemplateError, match=message):
        template.strip_blocks(text, "f")


def test_strip_showcase_removes_dirs_marked_files_and_blocks(tmp_path: Path) -> None:
    (tmp_path / "apps" / "showcase").mkdir(parents=True)
    (tmp_path / "apps" / "showcase" / "views.py").write_text("x = 1\n")
    (tmp_path / "apps" / "blog").mkdir()
    (tmp_path / "apps" / "blog" / "views.py").write_text("x = 2\n")
    marked = tmp_path / "tests" / "test_pairs.py"
    marked.parent.mkdir()
    marked.write_text(f"# {template.FILE_MARK}.\n'''Doc.'''\n")
    settings = tmp_path / "settings.py"
    settings.write_text(MARKED)

    changed = template.strip_showcase(tmp_path)

    assert not (tmp_path / "apps" / "showcase").exists()
    assert (tmp_path / "apps" / "blog" / "views.py").read_text() == "x = 2\n"
    assert not marked.exists()
    assert settings.read_text() == "keep 1\nkeep 2\nkeep 3\n"
    assert sorted(changed) == [
        "edited settings.py",
        "removed apps/showcase/",
        "removed tests/test_pairs.py",
    ]


def test_every_marker_in_the_repository_is_balanced() -> None:
    """A broken block would make `copier copy` fail for every user: caught here instead."""
    checked = 0
    for path in template.text_files(REPO_ROOT):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if relative == "lab/template.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        template.strip_blocks(text, relative)
        checked += template.BEGIN in text
    assert checked >= 5, "the showcase's blocks are gone: settings, urls, compose, README, ..."


@pytest.mark.parametrize(
    ("relative", "pattern"),
    [pair for pairs in template.MODE_DEFAULTS.values() for pair in pairs],
)
def test_each_serving_mode_default_is_found_exactly_once(relative: str, pattern: str) -> None:
    text = (REPO_ROOT / relative).read_text(encoding="utf-8")
    assert len(re.findall(pattern, text)) == 1, (relative, pattern)


@pytest.mark.slow
def test_copier_copy_without_the_showcase_gives_a_project_of_its_own(tmp_path: Path) -> None:
    """copier.yml and the finish task, for real: answers in, a clean project out.

    The project's own suite and servers run in `make template-test` (CI); here the generated
    files are checked, with this venv: Django's checks and the import contracts pass there.
    """
    source = copy_repository(tmp_path / "template")
    project = tmp_path / "shop"
    run_copy(
        str(source),
        str(project),
        data={
            "project_name": "Shop",
            "showcase": False,
            "wsgi_mode": "wsgi_sync",
            "asgi_mode": "asgi_gunicorn",
        },
        defaults=True,
        unsafe=True,
        quiet=True,
    )

    assert not (project / "apps" / "showcase").exists()
    assert not (project / "copier.yml").exists()
    assert template.leftovers(project) == []
    assert (project / "README.md").read_text().startswith("# Shop\n")
    answers = (project / ".copier-answers.yml").read_text()
    assert "showcase: false" in answers
    assert "project_name: Shop" in answers
    secret = re.search(r"^DJANGO_SECRET_KEY=(.*)$", (project / ".env.example").read_text(), re.M)
    assert secret is not None
    assert len(secret.group(1)) >= 50
    assert "replace-with" not in secret.group(1)
    compose = (project / "compose.yaml").read_text()
    assert "${WSGI_MODE:-wsgi_sync}" in compose
    assert "${ASGI_MODE:-asgi_gunicorn}" in compose
    assert '"WSGI_MODE": "wsgi_sync"' in (project / "lab" / "up.py").read_text()
    pyproject = (project / "pyproject.toml").read_text()
    # httpx leaves the runtime (it stays in the lab group); the lock follows.
    runtime = pyproject.split("[project.optional-dependencies]")[0]
    assert '"httpx' not in runtime
    lock = (project / "uv.lock").read_text()
    assert lock != (source / "uv.lock").read_text()
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=project, capture_output=True, text=True, check=True
    )
    assert log.stdout.splitlines() == ["Generated from dualserve"]
    bin_dir = Path(sys.executable).parent
    for command in (
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        [str(bin_dir / "lint-imports"), "--no-cache"],
    ):
        result = subprocess.run(
            command, cwd=project, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, (command, result.stdout + result.stderr)
