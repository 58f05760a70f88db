"""The serving tests' settings on the cluster's URLconf: tests.serving's views plus a write.

lab.cluster's app hosts run with DJANGO_SETTINGS_MODULE=tests.cluster.settings, so the
balancer has DB-free pages (/sync/hello/, /async/hello/) and DB-touching ones (/sync/groups/,
/async/groups/) whether or not the project has the showcase.
"""

from tests.serving.settings import *  # noqa: F403

ROOT_URLCONF = "tests.cluster.urls"
