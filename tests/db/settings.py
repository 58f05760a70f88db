"""The project's settings plus one test URL: a sync view that holds a database connection.

Servers under test run with DJANGO_SETTINGS_MODULE=tests.db.settings, so several requests can
hold their connections at the same moment and the tests can count them.
"""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.db.urls"
