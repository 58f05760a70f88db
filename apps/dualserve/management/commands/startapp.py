"""`manage.py startapp NAME`: Django's command with the template's defaults.

Without a directory the app goes in apps/NAME; either way its AppConfig is named after where
it lives ("apps.blog", not Django's "blog", which would not import from there), and its files
come from apps/dualserve/app_template/: no unused imports, formatted as the quality gates want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.startapp import Command as StartAppCommand

APP_TEMPLATE = Path(__file__).resolve().parents[2] / "app_template"
APPS_PACKAGE = "apps"


def app_module(name: str, directory: Path) -> str:
    """Return the dotted module of an app created in `directory`, relative to the project."""
    base = Path(settings.BASE_DIR).resolve()
    try:
        relative = directory.resolve().relative_to(base)
    except ValueError:
        raise CommandError(f"{directory} is outside the project ({base}).") from None
    return ".".join(relative.parts) if relative.parts else name


class Command(StartAppCommand):
    help = (
        "Create an app in apps/NAME (or in DIRECTORY), named apps.NAME in its AppConfig, "
        "from the template's app template."
    )

    # Django's Command.handle takes **options only; the stubs type TemplateCommand's.
    def handle(self, **options: Any) -> None:  # type: ignore[override]
        name = options["name"]
        created = None
        if not options.get("directory") and name:
            # Django's command writes into an existing directory only.
            created = Path(settings.BASE_DIR) / APPS_PACKAGE / name
            try:
                created.mkdir()
            except FileExistsError:
                raise CommandError(f"{created} already exists.") from None
            options["directory"] = str(created)
        if options.get("directory"):
            options["app_module"] = app_module(name, Path(options["directory"]))
        options["template"] = options.get("template") or str(APP_TEMPLATE)
        try:
            super().handle(**options)
        except CommandError:
            # Django refused the name (not an identifier, a module that exists): leave nothing.
            if created is not None and not any(created.iterdir()):
                created.rmdir()
            raise
        self.stdout.write(
            f'Created {options["directory"]}. Add "{options["app_module"]}" to INSTALLED_APPS '
            "in project/settings.py."
        )
