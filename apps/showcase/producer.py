"""An event producer outside Django's request cycle: `python -m apps.showcase.producer`.

    REDIS_URL=redis://127.0.0.1:8004/0 python -m apps.showcase.producer --count 10 --interval 500

An asyncio program, as a seed's producer is: it sets Django up for its settings and channel
layer only (no server, no request), then publishes a message event to the live group
(apps/showcase/live.py) every --interval ms, --count times, on a schedule set at the start (a
late publish delays one event, the next ones catch up). Every client of /ws/live/ and
/async/live/, on any worker, receives them, through Redis: without REDIS_URL the channel layer
is this process's own memory and the producer refuses to run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

COUNT_MAX = 1_000_000
INTERVAL_MAX_MS = 60_000

# Named, not __name__: run with -m, the module is __main__.
logger = logging.getLogger("apps.showcase.producer")


def bounded(low: int, high: int) -> Callable[[str], int]:
    """Return an argparse type: an integer from `low` to `high`."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.showcase.producer",
        description="Publish message events to the live feed, on a schedule, through Redis.",
    )
    parser.add_argument("--count", type=bounded(1, COUNT_MAX), default=10, help="events (10)")
    parser.add_argument(
        "--interval", type=bounded(0, INTERVAL_MAX_MS), default=1000, help="ms between (1000)"
    )
    parser.add_argument("--text", default="tick", help="each event's text, before ' #N'")
    return parser.parse_args(argv)


async def produce(count: int, interval_ms: int, text: str) -> int:
    """Publish `count` events, one every `interval_ms`; return how many were published."""
    from apps.showcase import live

    loop = asyncio.get_running_loop()
    start = loop.time()
    for number in range(1, count + 1):
        if number > 1:
            await asyncio.sleep(max(0.0, start + (number - 1) * interval_ms / 1000 - loop.time()))
        event = live.message_event(f"{text} #{number}", "producer")
        event["n"] = number
        await live.apublish(event)
        logger.info("producer: published %s of %s (id %s)", number, count, event["id"])
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Run the producer; return the exit code."""
    args = arguments(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from apps.showcase import live
    from apps.showcase.params import ParamError

    if not live.reaches_other_processes():
        print("producer: REDIS_URL is not set: events would reach no client.", file=sys.stderr)
        return 2
    try:
        live.message_text(f"{args.text} #{args.count}")
    except ParamError as exc:
        print(f"producer: --text: {exc.message}", file=sys.stderr)
        return 2
    published = asyncio.run(produce(args.count, args.interval, args.text))
    logger.info("producer: done, %s events published", published)
    return 0


if __name__ == "__main__":
    sys.exit(main())
