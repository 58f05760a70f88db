"""A ZeroMQ entry to the event bus: `python -m apps.showcase.zmq_bridge --bind tcp://...`.

    REDIS_URL=redis://127.0.0.1:8004/0 python -m apps.showcase.zmq_bridge --bind tcp://127.0.0.1:5557

A PULL socket (zmq.asyncio) that any program, in any language, PUSHes JSON events to: each
message, one frame holding a UTF-8 JSON object of at most --max-bytes, is published to the live
group (apps/showcase/live.py) as it came, with an "id" and a "source" of "zmq" added when it
has none. Every client of /ws/live/ and /async/live/ receives it, through Redis.

A message refused (several frames, too large, not UTF-8, not a JSON object, or one the layer
cannot carry, such as an integer beyond 64 bits) is counted, logged on one line and dropped;
the bridge never stops for one. So is a publish that fails (Redis unreachable): the next message
tries again. SIGTERM or SIGINT stops it, after a last line with the counts. Without REDIS_URL
it refuses to run: its events would reach no client.

The socket binds on loopback by default: ZeroMQ has no authentication here, so whoever can
reach the port can publish to every live client. Bind it elsewhere only on a trusted network.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.asyncio

DEFAULT_BIND = "tcp://127.0.0.1:5557"
DEFAULT_MAX_BYTES = 64 * 1024
# libzmq drops a peer that sends a message over this size before it is ever received whole,
# so a runaway producer cannot make the bridge hold a huge message in memory.
HARD_MAX_BYTES = 1024 * 1024
# Messages queued in the socket before PUSH peers block: bounded memory if the bus is slow.
RECEIVE_HWM = 1000

# Named, not __name__: run with -m, the module is __main__.
logger = logging.getLogger("apps.showcase.zmq_bridge")


class Refused(ValueError):
    """A message the bridge drops; the message says why."""


def event_of(frames: list[bytes], max_bytes: int) -> dict[str, Any]:
    """Return the event a message carries; raise Refused saying why it cannot be published."""
    # Imported here: main() sets Django up first (params reads settings).
    from apps.showcase.params import ParamError, json_object

    if len(frames) != 1:
        raise Refused(f"{len(frames)} frames, expected 1")
    (body,) = frames
    if len(body) > max_bytes:
        raise Refused(f"{len(body)} bytes, over the limit of {max_bytes}")
    try:
        event = json_object(body)
    except ParamError as exc:
        raise Refused(exc.message) from None
    event.setdefault("id", uuid.uuid4().hex)
    event.setdefault("source", "zmq")
    return event


async def bridge(endpoint: str, max_bytes: int, counts: Counter[str], stop: asyncio.Event) -> None:
    """Pull messages on `endpoint` and publish each valid one until `stop` is set."""
    from apps.showcase import live

    context = zmq.asyncio.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.MAXMSGSIZE, max(HARD_MAX_BYTES, max_bytes))
    socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.bind(endpoint)
        bound = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("zmq_bridge: pulling on %s, publishing to group %r", bound, live.LIVE_GROUP)
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            receiving = asyncio.ensure_future(socket.recv_multipart())
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                break
            counts["received"] += 1
            try:
                event = event_of(receiving.result(), max_bytes)
            except Refused as exc:
                counts["dropped"] += 1
                logger.warning("zmq_bridge: dropped message %s: %s", counts["received"], exc)
                continue
            try:
                await live.apublish(event)
            # Any failure of the layer (Redis gone, a value msgpack cannot carry): count, go on.
            except Exception as exc:
                counts["failed"] += 1
                logger.warning(
                    "zmq_bridge: could not publish message %s: %s: %s",
                    counts["received"],
                    type(exc).__name__,
                    str(exc)[:200],
                )
                continue
            counts["published"] += 1
        stopping.cancel()
    finally:
        socket.close()
        context.term()


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.showcase.zmq_bridge",
        description="Publish the JSON events PUSHed to a ZeroMQ PULL socket to the live feed.",
    )
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"endpoint ({DEFAULT_BIND})")
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"largest message published ({DEFAULT_MAX_BYTES}); larger ones are dropped",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.max_bytes <= HARD_MAX_BYTES:
        parser.error(f"--max-bytes must be between 1 and {HARD_MAX_BYTES}")
    return args


async def run(endpoint: str, max_bytes: int) -> Counter[str]:
    """Run the bridge until SIGTERM or SIGINT; return the counts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    counts: Counter[str] = Counter()
    await bridge(endpoint, max_bytes, counts, stop)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bridge; return the exit code."""
    args = arguments(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from apps.showcase import live

    if not live.reaches_other_processes():
        print("zmq_bridge: REDIS_URL is not set: events would reach no client.", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(run(args.bind, args.max_bytes))
    except zmq.ZMQError as exc:
        print(f"zmq_bridge: cannot bind {args.bind}: {exc}", file=sys.stderr)
        return 2
    logger.info(
        "zmq_bridge: stopped; received %s, published %s, dropped %s, failed %s",
        counts["received"],
        counts["published"],
        counts["dropped"],
        counts["failed"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
