"""`manage.py hops URL`: the thread hops a request makes under ASGI, and who makes them."""

from __future__ import annotations

import textwrap
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.dualserve.hops import VISITOR_ADDRESS, Culprit, Measurement, culprits, measure

WHY_WIDTH = 60


def figure(hops: float) -> str:
    """Return hops per request as `2`, or `1.5` when the requests differed."""
    return f"{hops:g}"


def table(rows: list[Culprit]) -> list[str]:
    """Return the report's lines: one row per culprit, why and fix on lines of their own."""
    who_width = max(len(row.who) for row in rows)
    lines = [f"{'who':<{who_width}}  hops  why / fix"]
    for row in rows:
        why = textwrap.wrap(row.why, WHY_WIDTH) or [""]
        fix = textwrap.wrap(f"fix: {row.fix}", WHY_WIDTH)
        lines.append(f"{row.who:<{who_width}}  {figure(row.hops):>4}  {why[0]}")
        lines.extend(f"{'':<{who_width}}        {line}" for line in [*why[1:], *fix])
    return lines


class Command(BaseCommand):
    help = (
        "Send requests to URL through the project's ASGI handler, in-process, and report the "
        "thread hops (sync_to_async calls) each makes: per middleware, view and handler, with "
        "why and the fix."
    )
    # The measured system check would send requests of its own first.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="a path, with an optional query: /some/url/?q=1")
        parser.add_argument("--method", default="GET", help="the request method (GET)")
        parser.add_argument(
            "--count", type=int, default=1, help="requests to measure after the warm-up (1)"
        )
        parser.add_argument("--host", help="the Host header (default: one ALLOWED_HOSTS accepts)")
        parser.add_argument(
            "--header",
            action="append",
            default=[],
            metavar="NAME:VALUE",
            help="a request header, e.g. 'Origin: https://example.com' (repeatable)",
        )
        parser.add_argument(
            "--client",
            default=VISITOR_ADDRESS,
            help=(
                f"the client address (default {VISITOR_ADDRESS}, a visitor; 127.0.0.1 is in "
                "INTERNAL_IPS, where django-debug-toolbar shows itself)"
            ),
        )
        parser.add_argument(
            "--fail", action="store_true", help="exit with status 1 when a request hops at all"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1:
            raise CommandError("--count must be 1 or more.")
        headers = []
        for header in options["header"]:
            name, colon, value = header.partition(":")
            if not colon or not name.strip():
                raise CommandError(f"--header {header!r}: write it as 'Name: value'.")
            headers.append((name.strip(), value.strip()))
        measurement = measure(
            options["url"],
            method=options["method"],
            count=options["count"],
            host=options["host"],
            headers=headers,
            client=options["client"],
        )
        self.stdout.write(self.summary(measurement))
        rows = culprits(measurement)
        if rows:
            self.stdout.write("\n".join(table(rows)))
        if options["fail"] and measurement.per_request > 0:
            raise CommandError(
                f"{figure(measurement.per_request)} thread hops per request to {options['url']}."
            )

    @staticmethod
    def summary(measurement: Measurement) -> str:
        """Return the report's first line: the request, its status and its hops."""
        hops = figure(measurement.per_request)
        return (
            f"{measurement.method} {measurement.url} -> {measurement.status} on "
            f"{measurement.handler.__name__}: {hops} thread hop{'' if hops == '1' else 's'} "
            "per request (sync_to_async)"
        )
