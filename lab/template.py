"""Turn a copy of this repository into a team's own project: `copier copy` runs this last.

    python -m lab.template finish --name "Shop" --slug shop --no-showcase \\
        --wsgi-mode wsgi_gthread --asgi-mode asgi_uvicorn

copier (copier.yml) copies the files; this step makes them the project's own:

- without the showcase, everything that exists only for it goes (`strip_showcase`):
  directories named `showcase` under apps/, tests/ and lab/, files that say
  `showcase: this file goes with the showcase` in their first lines, and in every other file the
  lines from a `showcase:begin` marker to its `showcase:end` (any comment syntax: `#`, `<!-- -->`);
  pyproject.toml lost the showcase's dependencies then, so the lock is brought in line (`uv lock`);
- the README starts with the project's name instead of the template's introduction;
- .env.example gets fresh secrets (nothing reads it: copy it to .env for docker compose);
- the serving modes chosen become the defaults of `make up`, compose and the image;
- a git repository with one commit: the project's history starts clean.

`python -m lab.template strip-showcase` does the first step alone, for a project generated with
the showcase that later drops it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "showcase:begin"
END = "showcase:end"
FILE_MARK = "showcase: this file goes with the showcase"
# Where the marker may say a whole file goes: its first lines (a docstring or a comment).
FILE_MARK_LINES = 5
SHOWCASE_DIRS = ("apps/showcase", "tests/showcase", "lab/hostile/corpus/showcase")
# The README's introduction ends here; what follows is the template's documentation, kept.
README_HEAD_END = "<!-- template:head-end -->"
WSGI_MODES = ("wsgi_gthread", "wsgi_sync")
ASGI_MODES = ("asgi_uvicorn", "asgi_gunicorn")
# The serving-mode defaults, file by file: each pattern must match exactly once.
MODE_DEFAULTS = {
    "wsgi": [
        ("compose.yaml", r"\$\{WSGI_MODE:-(wsgi_[a-z]+)\}"),
        ("Dockerfile", r"SERVE_MODE=(wsgi_[a-z]+)"),
        ("deploy/docker/entrypoint.sh", r"\$\{SERVE_MODE:-(wsgi_[a-z]+)\}"),
        ("lab/up.py", r'"WSGI_MODE": "(wsgi_[a-z]+)"'),
        ("deploy/systemd/dualserve-wsgi.service", r"Environment=WSGI_MODE=(wsgi_[a-z]+)"),
        ("deploy/k8s/base/wsgi.yaml", r"name: SERVE_MODE\s+value: (wsgi_[a-z]+)"),
        ("deploy/supervisor/run.sh", r'WSGI_MODE="\$\{WSGI_MODE:-(wsgi_[a-z]+)\}"'),
    ],
    "asgi": [
        ("compose.yaml", r"\$\{ASGI_MODE:-(asgi_[a-z]+)\}"),
        ("lab/up.py", r'"ASGI_MODE": "(asgi_[a-z]+)"'),
        ("deploy/systemd/dualserve-asgi.service", r"Environment=ASGI_MODE=(asgi_[a-z]+)"),
        ("deploy/k8s/base/asgi.yaml", r"name: SERVE_MODE\s+value: (asgi_[a-z]+)"),
    ],
}
# Text files the marker scan reads; everything else (images, the lock) is left alone.
TEXT_SUFFIXES = {
    ".py", ".toml", ".yaml", ".yml", ".md", ".txt", ".cfg", ".ini", ".template", ".html",
    ".css", ".js", ".sh", ".http", ".lua", ".json", ".conf", ".example", ".tpl", ".py-tpl",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".dockerignore", ".gitignore"}


class TemplateError(Exception):
    """A marker out of place, or a default that could not be set: the project is not finished."""


def text_files(root: Path) -> list[Path]:
    """Return the files under `root` the markers may be in (no .git, .venv, caches)."""
    skip = {".git", ".venv", ".tools", "var", "node_modules", "__pycache__"}
    found = []
    for path in sorted(root.rglob("*")):
        if any(part in skip or part.endswith("_cache") for part in path.relative_to(root).parts):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            found.append(path)
    return found


def strip_blocks(text: str, where: str) -> str:
    """Return `text` without its showcase:begin ... showcase:end blocks (marker lines too)."""
    kept: list[str] = []
    inside = False
    # After a block that had blank lines before it, its blank lines after it would add up
    # (two blank lines, a block, two blank lines): skip those, as a formatter would.
    skip_blanks = False
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if BEGIN in line:
            if inside:
                raise TemplateError(f"{where}:{number}: {BEGIN} inside another block")
            inside = True
        elif END in line:
            if not inside:
                raise TemplateError(f"{where}:{number}: {END} without {BEGIN}")
            inside = False
            skip_blanks = not kept or not kept[-1].strip()
        elif not inside:
            if skip_blanks and not line.strip():
                continue
            skip_blanks = False
            kept.append(line)
    if inside:
        raise TemplateError(f"{where}: {BEGIN} never closed")
    return "".join(kept)


def goes_with_the_showcase(path: Path) -> bool:
    """Whether `path` says, in its first lines, that it exists only for the showcase."""
    with path.open(encoding="utf-8", errors="replace") as file:
        head = [next(file, "") for _ in range(FILE_MARK_LINES)]
    return any(FILE_MARK in line for line in head)


def strip_showcase(root: Path) -> list[str]:
    """Remove the showcase from the project at `root`; return what changed, for the log."""
    changed = []
    for name in SHOWCASE_DIRS:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
            changed.append(f"removed {name}/")
    files = text_files(root)
    for path in files:
        relative = path.relative_to(root).as_posix()
        if relative == "lab/template.py":
            continue  # the markers' own definitions
        if goes_with_the_showcase(path):
            path.unlink()
            changed.append(f"removed {relative}")
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        stripped = strip_blocks(text, relative)
        if stripped != text:
            path.write_text(stripped, encoding="utf-8", errors="surrogateescape")
            changed.append(f"edited {relative}")
    return changed


def set_default(root: Path, relative: str, pattern: str, value: str) -> None:
    """Replace the one default `pattern` captures in `relative` with `value`."""
    path = root / relative
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    matches = list(re.finditer(pattern, text))
    if len(matches) != 1:
        raise TemplateError(f"{relative}: {len(matches)} matches for {pattern!r}, expected one")
    start, end = matches[0].span(1)
    path.write_text(text[:start] + value + text[end:], encoding="utf-8")


def readme_head(name: str, showcase: bool) -> str:
    """Return the generated project's README introduction."""
    lines = [
        f"# {name}",
        "",
        "A Django project served both as WSGI (gunicorn) and as ASGI (uvicorn worker), behind",
        "nginx, generated from the dualserve template (`.copier-answers.yml` says which version;",
        "`copier update` brings in later template changes).",
    ]
    if showcase:
        lines += ["", "The showcase app (apps/showcase) compares the modes on sample endpoints;"]
        lines += ["`python -m lab.template strip-showcase` removes it when you no longer need it."]
    return "\n".join(lines) + "\n"


def write_env_example(root: Path) -> None:
    """Fill .env.example's secrets with fresh random values."""
    path = root / ".env.example"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    for variable, length in (("DJANGO_SECRET_KEY", 50), ("POSTGRES_PASSWORD", 24)):
        text, count = re.subn(
            rf"^{variable}=.*$",
            f"{variable}={secrets.token_urlsafe(length)}",
            text,
            flags=re.MULTILINE,
        )
        if count != 1:
            raise TemplateError(f".env.example: {count} lines set {variable}, expected one")
    path.write_text(text, encoding="utf-8")


def relock(root: Path) -> None:
    """Bring uv.lock in line with pyproject.toml, with the uv the Makefile pins."""
    result = subprocess.run(
        ["make", "--no-print-directory", "lock"],  # noqa: S607  (make from PATH, as a user runs it)
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TemplateError("`make lock` failed:\n" + result.stdout[-2000:] + result.stderr[-2000:])


def git_init(root: Path) -> None:
    """Start the project's history: one commit of everything generated."""
    if (root / ".git").exists() or shutil.which("git") is None:
        return
    identity = ["-c", "user.name=dualserve template", "-c", "user.email=template@localhost"]
    for args in (
        ["init", "--quiet"],
        ["add", "--all"],
        [*identity, "commit", "--quiet", "--no-verify", "-m", "Generated from dualserve"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)  # noqa: S603, S607  (git from PATH)


def finish(
    root: Path,
    *,
    name: str,
    showcase: bool,
    wsgi_mode: str,
    asgi_mode: str,
    lock: bool = True,
    git: bool = True,
) -> list[str]:
    """Make the copy at `root` a project of its own; return what changed."""
    changed = [] if showcase else strip_showcase(root)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if README_HEAD_END not in text:
        raise TemplateError(f"README.md has no {README_HEAD_END} line")
    rest = text.split(README_HEAD_END, 1)[1].lstrip("\n")
    readme.write_text(readme_head(name, showcase) + "\n" + rest, encoding="utf-8")
    write_env_example(root)
    for interface, mode in (("wsgi", wsgi_mode), ("asgi", asgi_mode)):
        for relative, pattern in MODE_DEFAULTS[interface]:
            set_default(root, relative, pattern, mode)
    if lock and any("pyproject.toml" in line for line in changed):
        relock(root)
    if git:
        git_init(root)
    return changed


def generate(destination: Path, *, showcase: bool, name: str = "Check project") -> None:
    """`copier copy` this repository to `destination` with the given answers, unattended."""
    from copier import run_copy  # the dev group's: only this command needs it

    if destination.exists():
        shutil.rmtree(destination)
    run_copy(
        str(ROOT),
        str(destination),
        data={"project_name": name, "showcase": showcase},
        defaults=True,
        unsafe=True,  # the finish task (copier.yml)
        quiet=True,
    )


def child_environment() -> dict[str, str]:
    """This environment, minus what would point a generated project's tools back here."""
    drop = {
        "VIRTUAL_ENV",
        "DJANGO_SETTINGS_MODULE",
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "PYTHONPATH",
    }
    return {key: value for key, value in os.environ.items() if key not in drop}


def leftovers(root: Path) -> list[str]:
    """Return the files of a project generated without the showcase that still refer to it.

    A reference is the app's module or directory, or one of its settings; the word itself may
    stay in prose (the README's "Start your own project", the template's measured docs/).
    """
    reference = re.compile(r"apps[./]showcase|SHOWCASE_[A-Z]")
    allowed = {"lab/template.py", "README.md"}
    found = []
    for path in text_files(root):
        relative = path.relative_to(root).as_posix()
        if relative in allowed or relative.startswith("docs/"):
            continue
        if reference.search(path.read_text(encoding="utf-8", errors="replace")):
            found.append(relative)
    return found


def check(directory: Path) -> int:
    """Generate a project with and one without the showcase under `directory`, and test them.

    Without the showcase: nothing may mention it any more, and the project's own `make test`
    must pass (its whole suite, servers included). With it: the project installs, passes
    Django's checks and its servers answer the used-by commands (the rest of its suite is this
    repository's, which `make test` here has just run).
    """
    if not (ROOT / "copier.yml").is_file():
        print(
            "lab.template: no copier.yml here: this is a project generated from the template,"
            " not the template; nothing to generate from",
            file=sys.stderr,
        )
        return 2
    env = child_environment()
    steps: list[tuple[str, Path, list[str]]] = []
    for showcase in (False, True):
        project = directory / ("with-showcase" if showcase else "without-showcase")
        print(f"lab.template: generating {project}", flush=True)
        generate(project, showcase=showcase)
        if not showcase and (found := leftovers(project)):
            print(f"lab.template: still mentions the showcase: {found}", file=sys.stderr)
            return 1
        if showcase:
            steps += [
                ("install", project, ["make", "install"]),
                ("check", project, [".venv/bin/python", "manage.py", "check"]),
                ("used-by", project, [".venv/bin/pytest", "-q", "tests/serving/test_used_by.py"]),
            ]
        else:
            steps.append(("make test", project, ["make", "test"]))
    for what, project, command in steps:
        print(f"lab.template: {project.name}: {' '.join(command)}", flush=True)
        # The fixed commands above, in the project just generated.
        if subprocess.run(command, cwd=project, env=env, check=False).returncode != 0:  # noqa: S603
            print(f"lab.template: {project.name}: {what} failed", file=sys.stderr)
            return 1
    print("lab.template: both generated projects pass", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.template", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    done = commands.add_parser("finish", help="the last step of `copier copy`")
    done.add_argument("--name", required=True, help="the project's name, for the README")
    done.add_argument("--showcase", action=argparse.BooleanOptionalAction, default=True)
    done.add_argument("--wsgi-mode", choices=WSGI_MODES, default=WSGI_MODES[0])
    done.add_argument("--asgi-mode", choices=ASGI_MODES, default=ASGI_MODES[0])
    done.add_argument("--no-git", action="store_true", help="leave git alone")
    commands.add_parser("strip-showcase", help="remove the showcase from this project")
    checking = commands.add_parser("check", help="generate projects from this repo, test them")
    checking.add_argument("--directory", type=Path, default=ROOT / "var" / "template-check")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.directory.resolve())
    try:
        if args.command == "finish":
            changed = finish(
                ROOT,
                name=args.name,
                showcase=args.showcase,
                wsgi_mode=args.wsgi_mode,
                asgi_mode=args.asgi_mode,
                git=not args.no_git,
            )
        else:
            changed = strip_showcase(ROOT)
            if any("pyproject.toml" in line for line in changed):
                relock(ROOT)
    except TemplateError as exc:
        print(f"lab.template: {exc}", file=sys.stderr)
        return 1
    for line in changed:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
