"""The cluster's nginx: render balancer.conf.template over the app hosts, check it, read its log.

deploy/nginx.py renders the project's own config, one WSGI and one ASGI server; a balancer over
several hosts is a different file, so only its placeholder syntax (ConfigTemplate) and its
command line (nginx_command) are reused.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from deploy import nginx

TEMPLATE = Path(__file__).with_name("balancer.conf.template")
# Three failures in a row mark a host down for 5 s (nginx's defaults: 1 and 10 s).
MAX_FAILS = 3
FAIL_TIMEOUT = "5s"


class BalancerError(RuntimeError):
    """nginx rejected the rendered config; the message holds what `nginx -t` said."""


def server_lines(addresses: Sequence[str]) -> str:
    """Return the `server` lines of an upstream block, one per host:port."""
    return "\n".join(
        f"        server {address} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT};"
        for address in addresses
    )


def render(run_dir: Path, listen: str, wsgi: Sequence[str], asgi: Sequence[str]) -> str:
    """Return the balancer's config: `listen` in front of the `wsgi` and `asgi` host:ports."""
    template = nginx.ConfigTemplate(TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        RUN_DIR=str(run_dir),
        LISTEN=listen,
        WSGI_SERVERS=server_lines(wsgi),
        ASGI_SERVERS=server_lines(asgi),
    )


def write(binary: str, config: Path, text: str, prefix: Sequence[str] = ()) -> None:
    """Write `text` to `config` and have `nginx -t` accept it; raise BalancerError otherwise.

    nginx -t binds the listen address: `prefix` runs it where that address exists (the
    balancer host's namespace).
    """
    config.write_text(text, encoding="utf-8")
    checked = subprocess.run(  # noqa: S603  (the nginx binary and our rendered config)
        [*prefix, *nginx.nginx_command(binary, config, "-t", "-q")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if checked.returncode != 0:
        raise BalancerError(f"nginx -t rejected {config}:\n{checked.stderr}")


def upstream_counts(log_lines: Sequence[str]) -> Counter[str]:
    """Return how many requests each upstream address answered, from access-log lines.

    A request nginx passed on after a failure lists every address it tried ("a, b"); the
    last one answered.
    """
    counts: Counter[str] = Counter()
    for line in log_lines:
        tried = line.rstrip("\n").rpartition("|")[2]
        if tried and tried != "-":
            counts[tried.split(",")[-1].strip()] += 1
    return counts
