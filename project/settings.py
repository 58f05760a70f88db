"""Settings for dualserve: one module, driven by environment variables.

With no environment at all it runs locally (DEBUG on, SQLite under ./var/). `DJANGO_ENV=production`
switches to production defaults and refuses to start on an insecure configuration. Every variable is
listed in the README ("Environment variables").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Return the boolean environment variable `name`, or `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false.")


def env_int(name: str, default: int) -> int:
    """Return the integer environment variable `name`, or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None


def env_list(name: str, default: list[str]) -> list[str]:
    """Return the comma-separated environment variable `name` as a list."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Environment -------------------------------------------------------------------------------

DJANGO_ENV = os.environ.get("DJANGO_ENV", "development").strip().lower()
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV={DJANGO_ENV!r}: use 'development' (the default) or 'production'."
    )
PRODUCTION = DJANGO_ENV == "production"

# Set by project/wsgi.py and project/asgi.py before Django configures itself; empty for
# manage.py and the test runners.
SERVER_INTERFACE = os.environ.get("DJANGO_INTERFACE", "")

DEBUG = env_bool("DJANGO_DEBUG", default=not PRODUCTION)

# Local development only: production refuses this key (insecure_production_settings).
_DEV_SECRET_KEY = "django-insecure-dualserve-local-development-key-never-use-in-production"  # noqa: S105
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "" if PRODUCTION else _DEV_SECRET_KEY)

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])


def insecure_production_settings() -> list[str]:
    """Return what must be set before production may start (empty when it may)."""
    problems = []
    if not SECRET_KEY or SECRET_KEY == _DEV_SECRET_KEY:
        problems.append("DJANGO_SECRET_KEY (a random string of 50+ characters)")
    elif len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure-"):
        problems.append("DJANGO_SECRET_KEY (50+ random characters, not 'django-insecure-...')")
    if DEBUG:
        problems.append("DJANGO_DEBUG=false")
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        problems.append("DJANGO_ALLOWED_HOSTS (your host names, comma-separated; not '*')")
    return problems


if PRODUCTION and (_problems := insecure_production_settings()):
    raise ImproperlyConfigured(
        "DJANGO_ENV=production refuses to start; set " + "; ".join(_problems) + "."
    )

# --- Applications ------------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "apps.dualserve",
    # showcase:begin
    "apps.showcase",
    # showcase:end
]

# "native" (the default) is the template. "stock" is what popular templates ship:
# startproject's MIDDLEWARE plus whitenoise's middleware, and Django's own ASGI handler. It
# exists so the benchmark can show what the native stack buys; never deploy it.
STACK_PROFILE = os.environ.get("DUALSERVE_PROFILE", "native").strip().lower()
if STACK_PROFILE not in {"native", "stock"}:
    raise ImproperlyConfigured(f"DUALSERVE_PROFILE={STACK_PROFILE!r}: use 'native' or 'stock'.")

# Every entry runs natively in both modes: no thread hop per request under ASGI, no
# async_to_sync under WSGI (apps.dualserve.checks warns about any entry that would). The
# Django middlewares are replaced one for one by apps.dualserve.native, same behaviour.
MIDDLEWARE = [
    # First: probes answer before host validation and the HTTPS redirect.
    "apps.dualserve.middleware.HealthCheckMiddleware",
    "apps.dualserve.middleware.RequestContextMiddleware",
    # The response-header middlewares sit above the ones that answer errors themselves (a bad
    # Host is a 400 from CommonMiddleware), so those answers carry the headers too. Django's
    # handler turns an exception into a response at the middleware that raised it: the
    # middlewares above it still see that response, the one that raised does not.
    "apps.dualserve.csp.ContentSecurityPolicyMiddleware",
    "apps.dualserve.native.XFrameOptionsMiddleware",
    "apps.dualserve.native.SecurityMiddleware",
    # Static files short-circuit before sessions, CSRF and auth (whitenoise's advice).
    "apps.dualserve.static.StaticFilesMiddleware",
    "apps.dualserve.native.SessionMiddleware",
    "apps.dualserve.native.CommonMiddleware",
    "apps.dualserve.native.CsrfViewMiddleware",
    "apps.dualserve.native.AuthenticationMiddleware",
    "apps.dualserve.native.MessageMiddleware",
]
if STACK_PROFILE == "stock":
    MIDDLEWARE = [
        "apps.dualserve.middleware.HealthCheckMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]

# Django's deploy checks look for its middlewares by dotted path and miss the native subclasses;
# apps.dualserve.checks runs them again with the subclasses recognised and reports a missing
# middleware as dualserve.W011-W013 instead.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "project.urls"
# Idle request threads the ASGI handler keeps per worker process (apps.dualserve.asgi): a request
# reuses one instead of starting and joining a thread of its own.
ASGI_IDLE_THREADS = env_int("DJANGO_ASGI_IDLE_THREADS", 64)
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # {{ csp_nonce }} (Django 6.0: django.template.context_processors.csp).
                "apps.dualserve.csp.context_processor",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------

VAR_DIR = Path(os.environ.get("DJANGO_VAR_DIR", BASE_DIR / "var"))

# Persistent connections: a connection belongs to the thread that opened it. Under WSGI a worker
# thread serves many requests, so it keeps one. Django's own ASGI handler runs each request's
# sync code on a NEW thread, so a persistent connection would be stranded when that thread
# ends: Django's docs say CONN_MAX_AGE = 0 there (ref/databases, "Persistent connections"), and
# the stock profile keeps that. The template's handler reuses pooled request threads and closes
# a thread's connections before it retires one (apps.dualserve.asgi), so they persist under ASGI
# too: /async/db/ served ~40% more requests (bench: 206 -> 287 req/s, 1 UvicornWorker pair at
# 100 connections). PostgreSQL uses psycopg's pool instead (below).
CONN_MAX_AGE = env_int(
    "DJANGO_CONN_MAX_AGE", 0 if SERVER_INTERFACE == "asgi" and STACK_PROFILE == "stock" else 60
)

# Behind PgBouncer in transaction pooling mode (docs/connections.md): a server connection serves
# another client after each transaction, so nothing may outlive one: no WITH HOLD cursors
# (QuerySet.iterator()), no prepared statements, and PgBouncer is the pool.
DB_PGBOUNCER = env_bool("DJANGO_DB_PGBOUNCER", False)

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    _database: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL))
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _database = {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "db.sqlite3"}

if _database["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes write to one file: WAL lets readers run beside the writer, and
    # IMMEDIATE transactions plus a busy timeout make writers queue instead of failing with
    # "database is locked" (Django 5.1+, ref/databases "SQLite notes").
    _database["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _database["CONN_MAX_AGE"] = CONN_MAX_AGE
elif _database["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DJANGO_DB_POOL", not DB_PGBOUNCER
):
    # psycopg's pool, per process: connections open on demand from min_size up to max_size,
    # go back to the pool when a request ends, and close after 10 idle minutes. max_size is
    # what one process's threads can hold at once: GUNICORN_THREADS under WSGI (the gthread
    # config's variable and default; a sync worker only ever takes one). Under ASGI every
    # in-flight request has a thread of its own (apps.dualserve.asgi), so only the pool bounds them:
    # 8, and requests beyond that wait for a connection (up to the pool's 30 s timeout).
    # PostgreSQL's max_connections (100 by default) must hold workers x max_size x replicas,
    # plus manage.py and your own sessions.
    # Measured (lab.bench, /sync/db/ and /async/db/, 2 workers, 4 gthread threads, 100
    # connections, req/s, each run alternating the configurations): the pool 588 and 542 on
    # gthread, persistent connections (CONN_MAX_AGE=60) 610 and 427, none (CONN_MAX_AGE=0)
    # 112 and 82. UvicornWorker: pool 232 and 301 (max_size 8), 228 and 463 (max_size 64), none
    # 102 and 103 with timeouts; persistent connections failed: 2 workers x 64 kept threads
    # ran PostgreSQL out of connection slots ("too many clients", 165 non-2xx in 5 s). So the
    # pool stays on, and 8 under ASGI: 64 was not reliably faster and overruns max_connections.
    _pool_max_size = env_int(
        "DJANGO_DB_POOL_MAX_SIZE",
        8 if SERVER_INTERFACE == "asgi" else env_int("GUNICORN_THREADS", 8),
    )
    _pool = {
        "min_size": min(env_int("DJANGO_DB_POOL_MIN_SIZE", 1), _pool_max_size),
        "max_size": _pool_max_size,
    }
    # The pool replaces persistent connections (Django refuses both at once).
    _database["OPTIONS"] = {**_database.get("OPTIONS", {}), "pool": _pool}
    _database["CONN_MAX_AGE"] = 0
else:
    _database["CONN_MAX_AGE"] = CONN_MAX_AGE

if DB_PGBOUNCER:
    _database["DISABLE_SERVER_SIDE_CURSORS"] = True
    # Django's psycopg 3 default, pinned: a statement prepared on one server connection is
    # missing on the next.
    _database["OPTIONS"] = {**_database.get("OPTIONS", {}), "prepare_threshold": None}

# ATOMIC_REQUESTS stays off: Django refuses it for async views ("You cannot use
# ATOMIC_REQUESTS with async views"); wrap writes in transaction.atomic where needed.
_database["ATOMIC_REQUESTS"] = False
DATABASES = {"default": _database}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer (WebSocket groups, events) ---------------------------------------------------

# How a message reaches WebSocket consumers in other processes: Channels' group_send from a
# view, a task or another consumer (apps/dualserve/websocket.py). REDIS_URL (redis://host:6379/0,
# rediss:// for TLS, a password as redis://:secret@host/0), the name most hosts and compose files
# use, selects Redis: one bus for every worker process on every host. channels_redis's pub/sub
# layer, not its RedisChannelLayer: a group message is one PUBLISH, which Redis hands once to each
# process with members in the group and each process to its own members, whatever the group's
# size (RedisChannelLayer pushes one copy per member). Its consumers wait on in-process queues,
# never on Redis: RedisChannelLayer's consumers each take turns in a blocking BZPOPMIN, and with
# redis-py 8.2 a consumer cancelled at disconnect while its command is in flight can lose the
# cancellation (measured: such a consumer lived on 5 s and ended in a TimeoutError traceback).
# Delivery is at most once, to clients connected at that moment: right for live updates, not for
# messages that must survive a restart (use a queue or the database for those). Unset: Channels'
# in-memory layer, which reaches the consumers of ONE process only (a group_send from one worker
# never reaches another's clients): fine for `manage.py test` and a single worker, wrong for more.
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Authentication ----------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Internationalisation ----------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ------------------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", VAR_DIR / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names (cacheable forever) plus .gz variants, written by collectstatic.
    "staticfiles": {"BACKEND": "apps.dualserve.static.ManifestStaticFilesStorage"},
}
# A name missing from the manifest falls back to the plain name instead of raising, so
# templates render in tests and on a fresh clone before collectstatic has run (see the
# storage's docstring: whitenoise's own class still raises when the file is not collected).
WHITENOISE_MANIFEST_STRICT = False

# --- Proxy and security ------------------------------------------------------------------------

# Which requests are HTTPS: the server decides, not Django. nginx overwrites X-Forwarded-Proto
# on every request (nginx/), and gunicorn (every mode, forwarded_allow_ips) and uvicorn set the
# request's scheme from it only when the peer is a trusted proxy. Django's
# SECURE_PROXY_SSL_HEADER would read the raw header from ANY peer that reaches the server port:
# measured in all four modes, a client on 127.0.0.2 (outside forwarded_allow_ips) sending
# X-Forwarded-Proto: https got HSTS and request.is_secure() with it, and plain http without it
# (tests/reliability/test_hardening.py). Set DJANGO_TRUST_X_FORWARDED_PROTO=true only for a
# server that does not set the scheme itself, reachable by the proxy alone.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False)
    else None
)
USE_X_FORWARDED_HOST = env_bool("DJANGO_USE_X_FORWARDED_HOST", False)

SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
# Probes reach the pod over plain HTTP by IP: never redirect them (HealthCheckMiddleware
# answers before SecurityMiddleware anyway; this keeps a reordered stack safe).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", PRODUCTION)
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy, in Django 6.0's setting names and shape (apps.dualserve.csp). The
# template's pages load only their own CSS and scripts: no inline code, so no 'unsafe-inline'.
# A page that needs inline code gets a nonce: add apps.dualserve.csp.CSP.NONCE to script-src or
# style-src and write <script nonce="{{ csp_nonce }}">. Plain strings here keep this module free
# of app imports ("'self'" is CSP.SELF).
SECURE_CSP: dict[str, list[str] | str | bool] = {
    "default-src": ["'self'"],
    "base-uri": ["'self'"],
    "object-src": ["'none'"],
    "form-action": ["'self'"],
    # X_FRAME_OPTIONS = "DENY", for browsers that read CSP.
    "frame-ancestors": ["'none'"],
}
SECURE_CSP_REPORT_ONLY: dict[str, list[str] | str | bool] = {}

# showcase:begin
# --- Showcase ----------------------------------------------------------------------------------

# The upstream the /sync/upstream/ and /async/upstream/ views call; `python -m
# apps.showcase.upstream` serves one that answers after ?ms=N milliseconds.
SHOWCASE_UPSTREAM_URL = os.environ.get("SHOWCASE_UPSTREAM_URL", "http://127.0.0.1:8003/")
SHOWCASE_UPSTREAM_TIMEOUT = float(os.environ.get("SHOWCASE_UPSTREAM_TIMEOUT", "10"))
# showcase:end

# --- Logging -----------------------------------------------------------------------------------

LOG_LEVEL = os.environ.get("DJANGO_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "apps.dualserve.logging.RequestIDFilter"},
        "no_traceback": {"()": "apps.dualserve.logging.DropTracebackFilter"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "formatters": {
        "default": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id"],
            "formatter": "default",
        },
        # As in Django's default configuration: a 500 mailed to ADMINS, with DEBUG off.
        "mail_admins": {
            "class": "django.utils.log.AdminEmailHandler",
            "filters": ["require_debug_false"],
            "level": "ERROR",
        },
        # Django logs every refused request here (bad Host, too many fields, body too large)
        # with its traceback: one line each instead, so a scan cannot flood the log.
        "security": {
            "class": "logging.StreamHandler",
            "filters": ["request_id", "no_traceback"],
            "formatter": "default",
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own configuration gives `django` a console handler of its own (DEBUG only)
        # that would print every django.request record a second time, without the request ID;
        # its records reach the root handler above. Its mail to ADMINS on a 500 stays.
        "django": {"handlers": ["mail_admins"], "level": "INFO"},
        # showcase:begin
        # httpx logs every request at INFO: one line per upstream call of the showcase.
        "httpx": {"level": "WARNING"},
        # showcase:end
        "django.security": {"handlers": ["security"], "level": "INFO", "propagate": False},
    },
}
