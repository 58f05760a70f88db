"""Logging as configured by project.settings, in fresh processes (DEBUG is read at start)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parents[2]

LOG_A_REFUSAL = """
import logging, django
django.setup()
logging.getLogger("django.request").warning("Not Found: /nowhere/")
handlers = logging.getLogger("django").handlers
print(",".join(sorted(type(handler).__name__ for handler in handlers)))
"""


def log_a_refusal(debug: bool) -> subprocess.CompletedProcess[str]:
    """Log one django.request warning in a fresh process; its stdout names `django`'s handlers."""
    with tempfile.TemporaryDirectory() as var_dir:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "true" if debug else "false",
            "DJANGO_VAR_DIR": var_dir,
        }
        return subprocess.run(
            [sys.executable, "-c", LOG_A_REFUSAL],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )


class DjangoRecordsTests(SimpleTestCase):
    def test_a_django_request_record_is_printed_once_in_development(self) -> None:
        result = log_a_refusal(debug=True)
        lines = [line for line in result.stderr.splitlines() if "Not Found" in line]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("WARNING django.request [-] Not Found: /nowhere/", lines[0])

    def test_a_500_is_still_mailed_to_the_admins(self) -> None:
        self.assertEqual(log_a_refusal(debug=False).stdout.strip(), "AdminEmailHandler")
