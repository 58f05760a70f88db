"""WSGI entry point: `gunicorn project.wsgi` (gunicorn finds `application`)."""

import os

from django.core.wsgi import get_wsgi_application

# Read by settings.py before Django configures itself (CONN_MAX_AGE depends on it).
os.environ["DJANGO_INTERFACE"] = "wsgi"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()
