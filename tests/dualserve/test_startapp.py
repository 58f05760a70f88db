"""`manage.py startapp`: a new app lands in apps/, importable, and passes the quality gates.

Run in a copy of the repository (the working tree's files), as a user would on their project.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import copy_repository

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Names no project's own app is likely to have: the copy holds the project's apps too.
APP = "startapp_probe"
OTHER_APP = "startapp_probe_dir"

# What a user writes first, in the style of Django's tutorial and docs: lists as class
# attributes, an unparameterised ModelAdmin and ModelForm, a sync list and an async detail view.
BLOG_FILES = {
    "models.py": """
from django.db import models


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField()
    published = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-published"]

    def __str__(self) -> str:
        return self.title
""",
    "admin.py": """
from django.contrib import admin

from .models import Post


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["title", "published"]
    search_fields = ["title"]
""",
    "forms.py": """
from django import forms

from .models import Post


class PostForm(forms.ModelForm):
    class Meta:
        model = Post
        fields = ["title", "body"]
""",
    "tests.py": """
from django.test import TestCase

from .models import Post


class PostTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.post = Post.objects.create(title="First", body="...")

    def test_str(self):
        self.assertEqual(str(self.post), "First")
""",
    "views.py": """
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import aget_object_or_404

from .models import Post


def post_list(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"titles": list(Post.objects.values_list("title", flat=True))})


async def post_detail(request: HttpRequest, pk: int) -> HttpResponse:
    post = await aget_object_or_404(Post, pk=pk)
    return JsonResponse({"title": post.title})
""",
}


def run(project: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command in the copied project; return it finished."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "DJANGO_VAR_DIR": str(project / "var")},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Return a copy of the repository's files."""
    return copy_repository(tmp_path / "project")


def install(project: Path, module: str) -> None:
    """Add `module` to INSTALLED_APPS in the copy's settings, as a user does by hand."""
    settings = project / "project" / "settings.py"
    text = settings.read_text()
    text, count = re.subn(r'(\n    "apps\.dualserve",\n)', rf'\1    "{module}",\n', text)
    assert count == 1
    settings.write_text(text)


def test_startapp_creates_an_importable_app_in_apps(project: Path) -> None:
    created = run(project, BIN / "python", "manage.py", "startapp", APP)
    assert created.returncode == 0, created.stderr
    assert f'name = "apps.{APP}"' in (project / f"apps/{APP}/apps.py").read_text()
    assert (project / f"apps/{APP}/migrations/__init__.py").is_file()
    install(project, f"apps.{APP}")
    check = run(project, BIN / "python", "manage.py", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_startapp_names_an_app_after_the_directory_given(project: Path) -> None:
    (project / "apps" / OTHER_APP).mkdir()
    created = run(project, BIN / "python", "manage.py", "startapp", OTHER_APP, f"apps/{OTHER_APP}")
    assert created.returncode == 0, created.stderr
    assert f'name = "apps.{OTHER_APP}"' in (project / f"apps/{OTHER_APP}/apps.py").read_text()


def test_startapp_refusing_a_name_leaves_no_directory(project: Path) -> None:
    refused = run(project, BIN / "python", "manage.py", "startapp", "os")
    assert refused.returncode != 0
    assert "conflicts with the name of an existing Python module" in refused.stderr
    assert not (project / "apps/os").exists()


@pytest.mark.slow
def test_a_first_app_written_as_djangos_docs_do_passes_the_quality_gates(project: Path) -> None:
    assert run(project, BIN / "python", "manage.py", "startapp", APP).returncode == 0
    for name, source in BLOG_FILES.items():
        (project / "apps" / APP / name).write_text(source.lstrip())
    install(project, f"apps.{APP}")
    migration = run(project, BIN / "python", "manage.py", "makemigrations", APP)
    assert migration.returncode == 0, migration.stdout + migration.stderr
    gates = {
        # The rest of the repository has its gates in tests/test_quality.py.
        "ruff check": run(project, BIN / "ruff", "check", "--no-cache", f"apps/{APP}"),
        "ruff format": run(project, BIN / "ruff", "format", "--check", "--no-cache", f"apps/{APP}"),
        "mypy": run(project, BIN / "mypy", "--cache-dir", project / ".mypy_cache"),
        "check": run(project, BIN / "python", "manage.py", "check"),
    }
    failed = {name: r.stdout + r.stderr for name, r in gates.items() if r.returncode != 0}
    assert failed == {}
