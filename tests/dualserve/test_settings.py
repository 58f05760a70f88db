"""project.settings, loaded in fresh processes: each case needs its own environment."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parents[2]

PRINT_SETTINGS = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ENGINE": db["ENGINE"],
    "NAME": str(db["NAME"]),
    "OPTIONS": db.get("OPTIONS", {}),
    "CONN_MAX_AGE": db["CONN_MAX_AGE"],
    "ATOMIC_REQUESTS": db["ATOMIC_REQUESTS"],
    "DISABLE_SERVER_SIDE_CURSORS": db.get("DISABLE_SERVER_SIDE_CURSORS", False),
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "SECURE_SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
    "MIDDLEWARE": settings.MIDDLEWARE,
    "SECURE_PROXY_SSL_HEADER": settings.SECURE_PROXY_SSL_HEADER,
}))
"""

# Several processes writing sessions at once to one SQLite file.
CONCURRENT_WRITER = """
import django, sys
django.setup()
from django.contrib.sessions.backends.db import SessionStore
for i in range(int(sys.argv[1])):
    store = SessionStore()
    store["i"] = i
    store.save()
print("ok")
"""


def production_env(**extra: str) -> dict[str, str]:
    """Return a complete, secure production environment, overridden by `extra`."""
    return {
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
        "DJANGO_ALLOWED_HOSTS": "example.com",
        **extra,
    }


class SettingsProcessTests(SimpleTestCase):
    def setUp(self) -> None:
        self.var_dir = tempfile.mkdtemp(prefix="dualserve-settings-")

    def run_python(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run the venv's Python in the repo root with only `env` (plus PATH) set."""
        clean = {
            "PATH": os.environ["PATH"],
            "HOME": self.var_dir,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_VAR_DIR": self.var_dir,
            **env,
        }
        return subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def settings_with(self, **env: str) -> dict[str, object]:
        result = self.run_python(["-c", PRINT_SETTINGS], env)
        self.assertEqual(result.returncode, 0, result.stderr)
        loaded: dict[str, object] = json.loads(result.stdout)
        return loaded

    def test_no_environment_is_local_sqlite_with_wal(self) -> None:
        loaded = self.settings_with()
        self.assertIs(loaded["DEBUG"], True)
        self.assertEqual(loaded["ENGINE"], "django.db.backends.sqlite3")
        self.assertEqual(loaded["NAME"], str(Path(self.var_dir) / "db.sqlite3"))
        options = loaded["OPTIONS"]
        assert isinstance(options, dict)
        self.assertIn("journal_mode=WAL", options["init_command"])
        self.assertEqual(options["transaction_mode"], "IMMEDIATE")
        self.assertGreater(options["timeout"], 0)
        self.assertIs(loaded["ATOMIC_REQUESTS"], False)

    def test_conn_max_age_persists_except_on_djangos_own_asgi_handler(self) -> None:
        self.assertEqual(self.settings_with(DJANGO_INTERFACE="wsgi")["CONN_MAX_AGE"], 60)
        # The template's handler reuses its request threads (apps.dualserve.asgi).
        self.assertEqual(self.settings_with(DJANGO_INTERFACE="asgi")["CONN_MAX_AGE"], 60)
        # Django's handler starts a thread per request: a kept connection would be stranded.
        stock = self.settings_with(DJANGO_INTERFACE="asgi", DUALSERVE_PROFILE="stock")
        self.assertEqual(stock["CONN_MAX_AGE"], 0)
        self.assertEqual(
            self.settings_with(DJANGO_INTERFACE="wsgi", DJANGO_CONN_MAX_AGE="5")["CONN_MAX_AGE"],
            5,
        )

    def test_database_url_switches_to_postgresql_with_a_pool(self) -> None:
        loaded = self.settings_with(
            DATABASE_URL="postgres://app:secret@db.internal:5432/app", DJANGO_INTERFACE="wsgi"
        )
        self.assertEqual(loaded["ENGINE"], "django.db.backends.postgresql")
        self.assertEqual(loaded["NAME"], "app")
        self.assertEqual(loaded["OPTIONS"], {"pool": {"min_size": 1, "max_size": 8}})
        self.assertEqual(loaded["CONN_MAX_AGE"], 0)

    def test_pool_size_follows_the_threads_of_a_process(self) -> None:
        url = "postgres://app:secret@db.internal:5432/app"
        cases = {
            # gthread: one connection per thread at most.
            (("DJANGO_INTERFACE", "wsgi"), ("GUNICORN_THREADS", "3")): (1, 3),
            # ASGI: a thread per in-flight request; the pool is the bound.
            (("DJANGO_INTERFACE", "asgi"), ("GUNICORN_THREADS", "3")): (1, 8),
            (("DJANGO_INTERFACE", "asgi"), ("DJANGO_DB_POOL_MAX_SIZE", "20")): (1, 20),
            (("DJANGO_DB_POOL_MIN_SIZE", "4"), ("DJANGO_DB_POOL_MAX_SIZE", "2")): (2, 2),
        }
        for env, (min_size, max_size) in cases.items():
            with self.subTest(env=env):
                loaded = self.settings_with(DATABASE_URL=url, **dict(env))
                self.assertEqual(
                    loaded["OPTIONS"], {"pool": {"min_size": min_size, "max_size": max_size}}
                )
        unpooled = self.settings_with(DATABASE_URL=url, DJANGO_DB_POOL="false")
        self.assertEqual((unpooled["OPTIONS"], unpooled["CONN_MAX_AGE"]), ({}, 60))

    def test_pgbouncer_turns_off_what_transaction_pooling_breaks(self) -> None:
        url = "postgres://app:secret@pgbouncer.internal:6432/app"
        behind = self.settings_with(DATABASE_URL=url, DJANGO_DB_PGBOUNCER="true")
        self.assertIs(behind["DISABLE_SERVER_SIDE_CURSORS"], True)
        # PgBouncer is the pool: Django's own is off unless asked for.
        self.assertEqual(behind["OPTIONS"], {"prepare_threshold": None})
        pooled = self.settings_with(
            DATABASE_URL=url, DJANGO_DB_PGBOUNCER="true", DJANGO_DB_POOL="true"
        )
        self.assertEqual(set(pooled["OPTIONS"]), {"pool", "prepare_threshold"})
        direct = self.settings_with(DATABASE_URL=url)
        self.assertIs(direct["DISABLE_SERVER_SIDE_CURSORS"], False)
        self.assertNotIn("prepare_threshold", direct["OPTIONS"])

    def test_stock_profile_is_startproject_plus_whitenoise(self) -> None:
        native = self.settings_with()["MIDDLEWARE"]
        stock = self.settings_with(DUALSERVE_PROFILE="stock")["MIDDLEWARE"]
        assert isinstance(native, list)
        assert isinstance(stock, list)
        self.assertIn("apps.dualserve.native.CsrfViewMiddleware", native)
        self.assertIn("django.middleware.csrf.CsrfViewMiddleware", stock)
        self.assertIn("whitenoise.middleware.WhiteNoiseMiddleware", stock)
        self.assertFalse([path for path in stock if path.startswith("apps.dualserve.native.")])
        # The benchmark's baseline stays what popular templates ship: no CSP middleware there.
        self.assertIn("apps.dualserve.csp.ContentSecurityPolicyMiddleware", native)
        self.assertNotIn("apps.dualserve.csp.ContentSecurityPolicyMiddleware", stock)
        refused = self.run_python(["-c", PRINT_SETTINGS], {"DUALSERVE_PROFILE": "fast"})
        self.assertIn("DUALSERVE_PROFILE='fast'", refused.stderr)

    def test_bad_boolean_is_refused_with_its_name(self) -> None:
        result = self.run_python(["-c", PRINT_SETTINGS], {"DJANGO_DEBUG": "maybe"})
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("DJANGO_DEBUG='maybe' is not a boolean", result.stderr)

    def test_production_refuses_an_insecure_configuration(self) -> None:
        result = self.run_python(["-c", PRINT_SETTINGS], {"DJANGO_ENV": "production"})
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("DJANGO_ENV=production refuses to start", result.stderr)
        self.assertIn("DJANGO_SECRET_KEY", result.stderr)
        self.assertIn("DJANGO_ALLOWED_HOSTS", result.stderr)

    def test_production_refuses_each_insecure_value(self) -> None:
        cases = {
            "DJANGO_DEBUG=false": {"DJANGO_DEBUG": "true"},
            "not '*'": {"DJANGO_ALLOWED_HOSTS": "*"},
            "50+ random characters": {"DJANGO_SECRET_KEY": "short"},
        }
        for expected, override in cases.items():
            with self.subTest(expected=expected):
                result = self.run_python(["-c", PRINT_SETTINGS], production_env(**override))
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(expected, result.stderr)

    def test_production_defaults(self) -> None:
        loaded = self.settings_with(**production_env())
        self.assertIs(loaded["DEBUG"], False)
        self.assertIs(loaded["SECURE_SSL_REDIRECT"], True)
        self.assertEqual(loaded["ALLOWED_HOSTS"], ["example.com"])

    def test_the_server_decides_https_unless_told_to_trust_the_header(self) -> None:
        # gunicorn and uvicorn set the scheme from trusted proxies only; the raw header would
        # be believed from any peer (tests/reliability/test_hardening.py).
        self.assertIsNone(self.settings_with(**production_env())["SECURE_PROXY_SSL_HEADER"])
        trusting = self.settings_with(**production_env(DJANGO_TRUST_X_FORWARDED_PROTO="true"))
        self.assertEqual(trusting["SECURE_PROXY_SSL_HEADER"], ["HTTP_X_FORWARDED_PROTO", "https"])

    def test_check_deploy_passes_with_production_settings(self) -> None:
        result = self.run_python(
            ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env()
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        # Not even an INFO line: the only silenced IDs are Django's security.W001-W003, which
        # apps.dualserve.checks raises again as dualserve.W011-W013 when they apply.
        self.assertIn("System check identified no issues (3 silenced).", result.stdout)

    def test_check_deploy_still_sees_hsts_behind_the_native_middleware(self) -> None:
        result = self.run_python(
            ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
            production_env(DJANGO_SECURE_HSTS_SECONDS="0"),
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("security.W004", result.stderr)

    def test_several_processes_write_sqlite_without_locking_errors(self) -> None:
        migrated = self.run_python(["manage.py", "migrate", "--noinput", "-v0"], {})
        self.assertEqual(migrated.returncode, 0, migrated.stderr)
        clean = {
            "PATH": os.environ["PATH"],
            "HOME": self.var_dir,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_VAR_DIR": self.var_dir,
        }
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", CONCURRENT_WRITER, "150"],
                cwd=ROOT,
                env=clean,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            outputs = [writer.communicate(timeout=120) for writer in writers]
        finally:
            for writer in writers:  # reap every writer, even after a timeout
                if writer.poll() is None:
                    writer.kill()
                    writer.communicate()
        for writer, (out, err) in zip(writers, outputs, strict=True):
            self.assertEqual(writer.returncode, 0, err)
            self.assertEqual(out.strip(), "ok")
        count = self.run_python(
            [
                "-c",
                "import django; django.setup(); "
                "from django.contrib.sessions.models import Session; "
                "print(Session.objects.count())",
            ],
            {},
        )
        self.assertEqual(count.stdout.strip(), "600", count.stderr)
