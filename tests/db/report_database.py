"""A pytest plugin for a child run: its header names the database the run's settings chose."""

from __future__ import annotations

import pytest


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    default = settings.DATABASES["default"]
    return f"database: {default['ENGINE']} {default['NAME']}"
