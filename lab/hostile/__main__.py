"""`python -m lab.hostile HOST:PORT`: replay the hostile corpus against a running server."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from lab.hostile.corpus import CORPUS_DIR, CaseError, load_corpus, select
from lab.hostile.replay import (
    CANARY_PATH,
    GUNICORN,
    GUNICORN_ASGI,
    NGINX,
    UVICORN,
    Result,
    front_server,
    is_loopback,
    replay,
)


def address(text: str) -> tuple[str, int]:
    """Return (host, port) from HOST:PORT ([v6]:PORT for IPv6)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def verdict(result: Result) -> str:
    """Return pass, gap (a known gap of the server, with what happened) or FAIL and why."""
    if result.gaps:
        return "gap: " + "; ".join(result.gaps)
    return "pass" if result.passed else "FAIL: " + "; ".join(result.problems)


def markdown(results: Sequence[Result]) -> str:
    """Return the results as a markdown table."""
    lines = [
        "| case | expected | answer | layer | canary | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.case.label} | {' '.join(result.case.expect)} "
            f"| {result.answer.summary()} | {result.layer} | {result.canary or '-'} "
            f"| {verdict(result)} |"
        )
    return "\n".join(lines)


def text(results: Sequence[Result]) -> str:
    """Return one line per case, then the counts."""
    lines = [
        f"{r.case.label:<42} {r.answer.summary():<8} {r.layer:<9} {verdict(r)}" for r in results
    ]
    failed = sum(not r.passed for r in results)
    gaps = sum(bool(r.gaps) for r in results)
    lines.append(
        f"{len(results)} cases: {len(results) - failed} passed ({gaps} known gaps), {failed} failed"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Replay the chosen cases; exit 1 when any fails, 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.hostile",
        description=(
            "Replay malformed and hostile HTTP/1.1 requests over raw sockets and report, per "
            "case, the answer (status, closed or timeout), the layer that gave it (nginx, "
            "gunicorn, uvicorn, app) and whether it is right; after each case a canary GET "
            "on a fresh connection must get 200."
        ),
    )
    parser.add_argument("target", type=address, help="HOST:PORT of the server or proxy")
    parser.add_argument("cases", nargs="*", help="case ids or names (default: all)")
    parser.add_argument(
        "--host-header", default="localhost", help="the Host the cases send (default localhost)"
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR, help="a directory of cases")
    parser.add_argument(
        "--front",
        choices=(NGINX, GUNICORN, GUNICORN_ASGI, UVICORN),
        help="the server that parses the requests (default: read from its Server header)",
    )
    parser.add_argument("--tag", default="", help="marks the smuggled paths (default: random)")
    parser.add_argument(
        "--canary-path",
        default=CANARY_PATH,
        help=f"the page the canary GETs; it must answer 200 (default {CANARY_PATH})",
    )
    parser.add_argument("--no-canary", action="store_true", help="skip the canary requests")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a target that is not loopback (only a deployment you may attack)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--markdown", action="store_true", help="print a markdown table")
    output.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    host, port = args.target
    try:
        cases = select(load_corpus(args.corpus), args.cases)
    except CaseError as exc:
        parser.error(str(exc))
    if args.list:
        for case in cases:
            print(f"{case.label:<42} {' '.join(case.expect):<16} {case.about}")
        return 0
    if not args.allow_remote and not is_loopback(host):
        parser.error(f"{host} is not a loopback address: pass --allow-remote to attack it")
    tag = args.tag or secrets.token_hex(4)
    try:
        front = args.front or front_server(host, port, args.host_header, args.canary_path)
    except OSError as exc:
        print(f"lab.hostile: cannot reach {host}:{port}: {exc}", file=sys.stderr)
        return 2
    results = [
        replay(
            case,
            host,
            port,
            host_header=args.host_header,
            tag=tag,
            with_canary=not args.no_canary,
            canary_path=args.canary_path,
            front=front,
        )
        for case in cases
    ]
    if args.json:
        report = {
            "target": f"{host}:{port}",
            "front": front,
            "tag": tag,
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(markdown(results))
    else:
        print(f"{host}:{port}, parsed by {front}; smuggled paths tagged {tag}")
        print(text(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
