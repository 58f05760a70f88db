"""The project's settings on the test-only URLconf tests.serving.urls.

Servers under test run with DJANGO_SETTINGS_MODULE=tests.serving.settings, so the serving tests
have views to request whether or not the project has the showcase.
"""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.serving.urls"
