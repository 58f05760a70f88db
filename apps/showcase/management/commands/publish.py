"""`manage.py publish "text"`: send a message to every client of the live feed, from a shell."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.showcase import live
from apps.showcase.params import ParamError

NO_BUS = (
    "REDIS_URL is not set: the channel layer is in memory, in this process alone, so the event "
    "reached no client of any server. Set REDIS_URL to the servers' Redis."
)


class Command(BaseCommand):
    help = (
        "Publish a message event to the live feed (/ws/live/ and /async/live/) through the "
        "channel layer; print the event as JSON."
    )
    # A shell publisher touches no model: the checks would only slow it down.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("text", help=f"the message, 1 to {live.TEXT_MAX_CHARS} characters")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            event = live.message_event(options["text"], "manage.py publish")
        except ParamError as exc:
            raise CommandError(exc.message) from None
        live.publish(event)
        self.stdout.write(json.dumps(event))
        if not live.reaches_other_processes():
            self.stderr.write(NO_BUS)
