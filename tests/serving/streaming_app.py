"""project.asgi's application on the test-only URLconf (tests.dualserve.urls), for real servers.

A gunicorn application factory, so a mode's own config serves it in place of project.asgi::

    gunicorn -c deploy/gunicorn/asgi_uvicorn.py "tests.serving.streaming_app:application()"
"""

from __future__ import annotations

from typing import Any

from django.test import override_settings

APP = f"{__name__}:application()"


def application() -> Any:
    """Return project.asgi's application with ROOT_URLCONF set to tests.dualserve.urls."""
    # Imported here: project.asgi sets Django up, which belongs to the worker calling this, not
    # to every importer of APP (the test process has its own settings).
    from project.asgi import application as project_application

    override_settings(ROOT_URLCONF="tests.dualserve.urls").enable()
    return project_application
