"""The benchmark harness: wrk's output read right (recorded runs), aggregation, targets, the
matrix, scenario files, /proc figures, and real runs that produce every output and leave no
process behind.

The figures in tests/lab/data/wrk-*.txt are real wrk 4.1 runs on this project (see
tests/lab/data/README.md); the generated Lua script that produced the POST recording is
stored next to it, so a change in the generator that would change what wrk sends shows up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from deploy import nginx
from lab import manage, servers
from lab.bench import (
    analysis,
    bare,
    charts,
    cli,
    contenders,
    fanout,
    floor,
    infra,
    plan,
    procs,
    report,
    scenarios,
    sse,
    stats,
    targets,
    wrk,
)
from lab.bench.contenders import (
    FRAMEWORK_CONTENDERS,
    SANIC,
    SUPERVISOR_RUN,
    Contender,
    ContenderError,
    ContenderLaunch,
    interrupts_held,
    launch,
    parse_modes,
    wait_sanic_ready,
)
from lab.bench.frameworks import sanic_app, starlette_app
from lab.bench.runner import Runner, manage_steps, server_env, shown_env

DATA = Path(__file__).parent / "data"
# A fixture any project can load (group 4242).
FIXTURE = DATA / "bench-fixture.json"
# A page of every project: the bench measures the user's own URLs when there is no showcase.
USER_URL = "/admin/login/"
# The default run measures the showcase's endpoints; without them it needs the user's URLs.
DEFAULT_RUN: list[str] = ["--url", USER_URL]
# Paths every project answers 200 in-process, without collectstatic: the floor's own test.
FLOOR_PATHS = {"wsgi": ["/healthz"], "asgi": ["/healthz"]}
# showcase:begin
DEFAULT_RUN = []
FLOOR_PATHS = {"wsgi": ["/sync/hello/", "/sync/json/"], "asgi": ["/async/hello/", "/async/json/"]}
# The showcase's item 4242, and its page that answers 404 until that item is loaded.
ITEM_FIXTURE = Path(__file__).parents[1] / "showcase" / "data" / "bench-item-fixture.json"
FIXTURE_URL = "/sync/db/?id=4242"
# showcase:end
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recorded(name: str) -> str:
    """Return a recorded wrk output."""
    return (DATA / name).read_text(encoding="utf-8")


def without_script_line(output: str) -> str:
    """Return wrk's output without the generated script's JSON line (wrk's text alone)."""
    return "\n".join(line for line in output.splitlines() if not line.startswith(wrk.JSON_MARKER))


def require_wrk() -> str:
    """Return wrk; without it, fail under CI=true (.ci/run installs it) and skip elsewhere."""
    binary = wrk.find_wrk()
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {wrk.INSTALL_HINT}")
        pytest.skip(wrk.INSTALL_HINT)
    return binary


def run_record(cell: plan.Cell, output: str, repeat: int = 1, **server: Any) -> dict[str, Any]:
    """Return a raw run as the runner records it, with wrk's figures from `output`."""
    result = wrk.parse(output)
    return {
        "cell": cell.key,
        "contender": cell.contender,
        "scenario": cell.scenario,
        "concurrency": cell.concurrency,
        "via": cell.via,
        "repeat": repeat,
        "wrk": result.as_dict(),
        "wrk_cpu_percent": server.pop("wrk_cpu_percent", 10.0),
        "server": {
            "cpu_percent": 95.0,
            "peak_rss": 100 << 20,
            "peak_worker_rss": 50 << 20,
            "foreign_cpu_percent": 0.0,
            **server,
        },
        "nginx": None,
    }


def scaled(output: str, factor: float) -> str:
    """Return a recorded script output with its request count scaled (another repeat)."""
    head, _, document = output.partition(wrk.JSON_MARKER)
    data = json.loads(document)
    data["requests"] = int(data["requests"] * factor)
    return head + wrk.JSON_MARKER + json.dumps(data)


# --- wrk: the script and the output -----------------------------------------------------------


def test_script_output_gives_exact_figures() -> None:
    result = wrk.parse(recorded("wrk-script-ok.txt"))
    assert result.source == "script"
    assert result.requests == 4462
    assert result.rps == pytest.approx(4462 / 2.030126)
    assert result.latency_ms["p50"] == pytest.approx(39.945)
    assert result.latency_ms["p99"] == pytest.approx(104.517)
    assert result.latency_ms["max"] == pytest.approx(397.127)
    assert result.errors.socket == 0
    assert result.errors.status == 0


def test_script_and_text_agree_on_the_same_run() -> None:
    output = recorded("wrk-script-ok.txt")
    exact = wrk.parse(output)
    rounded = wrk.parse(without_script_line(output))
    assert rounded.source == "text"
    assert rounded.requests == exact.requests
    assert rounded.rps == pytest.approx(exact.rps, rel=0.01)
    for key in ("p50", "p90", "p99", "max"):
        assert rounded.latency_ms[key] == pytest.approx(exact.latency_ms[key], rel=0.01)


def test_timeouts_are_socket_errors() -> None:
    result = wrk.parse(recorded("wrk-script-timeouts.txt"))
    assert result.errors.timeout == 3
    assert result.errors.socket == 3
    assert result.requests == 5


def test_status_errors_are_counted() -> None:
    result = wrk.parse(recorded("wrk-script-status-errors.txt"))
    assert result.errors.status == result.requests == 246
    assert result.errors.socket == 0


def test_text_output_reads_errors_and_units() -> None:
    errors = wrk.parse(recorded("wrk-text-errors.txt"))
    assert (errors.source, errors.requests, errors.errors.status) == ("text", 667, 667)
    assert errors.rps == pytest.approx(332.05)
    assert errors.latency_ms["p99"] == pytest.approx(120.06)
    assert errors.bytes_read == int(274.88 * 1024)
    timeouts = wrk.parse(recorded("wrk-text-timeouts.txt"))
    assert timeouts.errors.timeout == 3
    assert timeouts.latency_ms["p50"] == pytest.approx(605.92)
    assert timeouts.duration_s == pytest.approx(2.01)


def test_no_requests_at_all_is_a_result_not_a_crash() -> None:
    text = recorded("wrk-script-ok.txt").split(wrk.JSON_MARKER)[0]
    empty = (
        text
        + wrk.JSON_MARKER
        + json.dumps(
            {
                "requests": 0,
                "duration_us": 1000000,
                "bytes": 0,
                "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0},
                "latency_us": {
                    "min": 1.844674407371e19,
                    "max": 0,
                    "mean": 0,
                    "stdev": 0,
                    "p50": 0,
                    "p90": 0,
                    "p99": 0,
                    "p999": 0,
                },
            }
        )
    )
    assert wrk.parse(empty).rps == 0


@pytest.mark.parametrize(
    "output",
    ["", "Usage: wrk <options> <url>", wrk.JSON_MARKER + "{not json", wrk.JSON_MARKER + "{}"],
)
def test_unreadable_output_raises(output: str) -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse(output)


@pytest.mark.parametrize(
    ("text", "micros"),
    [("228.09us", 228.09), ("16.71ms", 16710.0), ("1.03s", 1_030_000.0), ("2.00m", 120_000_000.0)],
)
def test_durations(text: str, micros: float) -> None:
    assert wrk.duration_us(text) == pytest.approx(micros)


def test_a_duration_without_unit_is_refused() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.duration_us("12")


def test_the_recorded_post_came_from_this_generator() -> None:
    request = wrk.Request(
        "POST",
        "/sync/db/",
        {"Content-Type": "application/x-www-form-urlencoded"},
        'name=wrk "quoted"&value=7',
    )
    assert wrk.script(request) == (DATA / "wrk-post.lua").read_text(encoding="utf-8")


def test_lua_strings_escape_quotes_backslashes_and_non_ascii() -> None:
    assert wrk.lua_string('a"b') == '"a\\034b"'
    assert wrk.lua_string("a\\b") == '"a\\092b"'
    assert wrk.lua_string("é\n") == '"\\195\\169\\010"'


def test_wrk_command_rounds_to_whole_seconds() -> None:
    argv = wrk.command(
        "wrk",
        "http://x/",
        connections=5,
        duration_s=2.4,
        threads=8,
        script_path="s.lua",
        timeout_s=0.2,
    )
    assert "--duration=2s" in argv
    assert "--timeout=1s" in argv
    # wrk refuses fewer connections than threads.
    assert "--threads=5" in argv


# --- Aggregation ------------------------------------------------------------------------------


def test_repeats_become_median_min_max() -> None:
    cell = plan.Cell("asgi_uvicorn", "hello", 100)
    ok = recorded("wrk-script-ok.txt")
    runs = [
        run_record(cell, scaled(ok, factor), repeat)
        for repeat, factor in enumerate((1.0, 0.5, 1.2), 1)
    ]
    cells = stats.aggregate(runs)
    aggregated = cells[cell.key]
    base = 4462 / 2.030126
    assert aggregated.runs == 3
    assert aggregated.rps.median == pytest.approx(base, rel=1e-3)
    assert aggregated.rps.low == pytest.approx(base * 0.5, rel=1e-3)
    assert aggregated.rps.high == pytest.approx(base * 1.2, rel=1e-3)
    assert any(flag.startswith("noisy") for flag in aggregated.flags)


def test_errors_are_summed_and_flagged_never_averaged_away() -> None:
    cell = plan.Cell("wsgi_sync", "sleep", 20)
    runs = [
        run_record(cell, recorded("wrk-script-timeouts.txt"), 1),
        run_record(cell, recorded("wrk-script-status-errors.txt"), 2),
    ]
    aggregated = stats.aggregate(runs)[cell.key]
    assert aggregated.errors["timeout"] == 3
    assert aggregated.errors["status"] == 246
    assert aggregated.error_count == 249
    assert any(flag.startswith("errors: 249") for flag in aggregated.flags)


def test_clean_cells_carry_no_flags() -> None:
    cell = plan.Cell("asgi_uvicorn", "hello", 100)
    runs = [run_record(cell, recorded("wrk-script-ok.txt"), n) for n in (1, 2)]
    assert stats.aggregate(runs)[cell.key].flags == []


def test_a_saturated_load_generator_and_a_shared_cpu_are_flagged() -> None:
    cell = plan.Cell("asgi_uvicorn+bare", "hello", 100)
    run = run_record(
        cell, recorded("wrk-script-ok.txt"), wrk_cpu_percent=97.0, foreign_cpu_percent=40.0
    )
    found = stats.aggregate([run])[cell.key].flags
    assert any("load generator saturated" in flag for flag in found)
    assert any("shared CPU" in flag for flag in found)


def test_a_skipped_cell_says_why() -> None:
    cell = plan.Cell("asgi_uvicorn", "/missing/", 10)
    run = {
        **run_record(cell, recorded("wrk-script-ok.txt")),
        "skipped": "answered 404, expected 200",
    }
    del run["wrk"]
    aggregated = stats.aggregate([run])[cell.key]
    assert not aggregated.measured
    assert aggregated.flags == ["not measured: answered 404, expected 200"]


def test_littles_law() -> None:
    assert stats.littles_law_limit(500, 50) == pytest.approx(10_000)
    assert stats.littles_law_limit(10, 0) == float("inf")


# --- Targets ----------------------------------------------------------------------------------


def cells_of(*pairs: tuple[plan.Cell, str]) -> dict[str, stats.CellStats]:
    """Return aggregated cells, one recorded output each."""
    return stats.aggregate([run_record(cell, recorded(name)) for cell, name in pairs])


def test_target_1_passes_and_fails_on_the_ratio() -> None:
    fast, slow = "wrk-script-ok.txt", "wrk-script-post.txt"  # ~2,198 and ~163 req/s
    passing = cells_of(
        (plan.Cell("asgi_uvicorn", "hello", 100), fast),
        (plan.Cell("wsgi_sync", "hello", 100), slow),
    )
    failing = cells_of(
        (plan.Cell("asgi_uvicorn", "hello", 100), slow),
        (plan.Cell("wsgi_sync", "hello", 100), fast),
    )
    found = targets.targets(passing, [], scenarios.BUILTIN, ["asgi_uvicorn", "wsgi_sync"], 2, 4)
    assert found[0].verdict == targets.PASS
    assert "13.46x" in found[0].figure
    found = targets.targets(failing, [], scenarios.BUILTIN, ["asgi_uvicorn", "wsgi_sync"], 2, 4)
    assert found[0].verdict == targets.FAIL
    assert found[1].verdict == targets.NOT_MEASURED


def test_target_3_uses_littles_law_and_the_gthread_ratio() -> None:
    cells = cells_of(
        (plan.Cell("asgi_uvicorn", "sleep", 500), "wrk-script-ok.txt"),
        (plan.Cell("wsgi_gthread", "sleep", 500), "wrk-script-post.txt"),
        (plan.Cell("asgi_uvicorn", "hello", 100), "wrk-script-ok.txt"),
    )
    target = targets.target_3(cells, scenarios.BUILTIN, 2, 4)
    # 2,198 req/s is 13.5x gthread and all of min(10,000, hello's 2,198), but p99 is 104.5 ms.
    assert target.verdict == targets.FAIL
    assert target.figure.startswith("13.5x gthread; 1.00x of min(Little, hello), p99 105 ms")


def sse_record(
    contender: str, clients: int, connected: int, on_time: float, rss: int
) -> dict[str, Any]:
    """Return an SSE run as the runner records it."""
    return {
        "contender": contender,
        "clients": clients,
        "connected": connected,
        "on_time_ratio": on_time,
        "lateness_ms": {"p50": 1.0, "p99": 5.0, "max": 9.0},
        "statuses": {"200": connected},
        "errors": {},
        "server": {"peak_worker_rss": rss},
    }


def test_targets_4_and_6_read_the_largest_asgi_sse_run() -> None:
    runs = [
        sse_record("asgi_uvicorn", 100, 100, 1.0, 80 << 20),
        sse_record("asgi_uvicorn", 1000, 999, 0.995, 150 << 20),
        sse_record("wsgi_gthread", 1000, 4, 0.0, 60 << 20),
    ]
    four, six = targets.target_4(runs), targets.target_6(runs)
    # 999 streams: one short of the target, though on time and small.
    assert (four.verdict, six.verdict) == (targets.FAIL, targets.FAIL)
    assert four.figure == "999 of 1,000 connected, 99.5% on time"
    runs[1]["connected"] = 1000
    assert targets.target_4(runs).verdict == targets.PASS
    assert targets.target_6(runs).verdict == targets.PASS
    runs[1]["server"]["peak_worker_rss"] = 201_000_000
    assert targets.target_6(runs).verdict == targets.FAIL


def nginx_runs(mode: str, *repeats: tuple[float, float]) -> list[dict[str, Any]]:
    """Return one mode's direct and nginx runs, as (direct, nginx) scale factors per repeat."""
    direct = plan.Cell(mode, "hello", 100)
    proxied = plan.Cell(mode, "hello", 100, via="nginx")
    ok = recorded("wrk-script-ok.txt")
    runs = []
    for repeat, (direct_factor, nginx_factor) in enumerate(repeats, 1):
        runs.append(run_record(direct, scaled(ok, direct_factor), repeat))
        runs.append(
            {
                **run_record(proxied, scaled(ok, nginx_factor), repeat),
                "nginx": {"cpu_percent": 20.0},
            }
        )
    return runs


def nginx_target(*repeats: tuple[float, float]) -> targets.Target:
    """Return target 5 for asgi_uvicorn alone over `repeats` (see nginx_runs)."""
    return targets.target_5(stats.aggregate(nginx_runs("asgi_uvicorn", *repeats)), ["asgi_uvicorn"])


def test_target_5_pairs_each_nginx_repeat_with_its_direct_run() -> None:
    passing = nginx_target((1.0, 0.95), (1.0, 0.97), (1.0, 0.93))
    assert (passing.verdict, passing.figure) == (targets.PASS, "asgi_uvicorn +5% (+3% to +7%)")
    assert passing.details[0] == targets.NGINX_RULE
    failing = nginx_target((1.0, 0.80), (1.0, 0.85), (1.0, 0.75))
    assert failing.verdict == targets.FAIL


def test_target_5_on_noise_is_undecided_not_pass_or_fail() -> None:
    # Two runs of the same noisy machine: the medians alone said PASS (nginx 0.95 of direct)
    # and then FAIL (0.85). Paired per repeat, each straddles 10%, and says so.
    for repeats in (
        ((0.5, 0.92), (1.0, 0.95), (1.0, 0.70)),
        ((0.5, 1.035), (1.0, 0.85), (1.0, 0.80)),
    ):
        target = nginx_target(*repeats)
        assert target.verdict == targets.UNDECIDED, target.details
        assert "noise" in target.details[1]
        assert "on both sides of 10%" in target.details[1]


def test_target_5_needs_three_repeats_to_decide() -> None:
    target = nginx_target((1.0, 0.95))
    assert target.verdict == targets.UNDECIDED
    assert "3 needed" in target.details[1]


def test_target_5_fails_when_one_mode_fails_and_passes_only_when_every_mode_does() -> None:
    passing = nginx_runs("asgi_uvicorn", (1.0, 0.95), (1.0, 0.97), (1.0, 0.93))
    undecided = nginx_runs("wsgi_sync", (0.5, 0.92), (1.0, 0.95), (1.0, 0.70))
    failing = nginx_runs("wsgi_gthread", (1.0, 0.80), (1.0, 0.85), (1.0, 0.75))
    modes = ["asgi_uvicorn", "wsgi_sync", "wsgi_gthread"]
    verdict = targets.target_5(stats.aggregate(passing + undecided + failing), modes).verdict
    assert verdict == targets.FAIL
    verdict = targets.target_5(stats.aggregate(passing + undecided), modes).verdict
    assert verdict == targets.UNDECIDED


def test_checks_flag_a_django_figure_at_the_servers_ceiling() -> None:
    cells = cells_of(
        (plan.Cell("asgi_uvicorn", "hello", 100), "wrk-script-ok.txt"),
        (plan.Cell("asgi_uvicorn+bare", "hello", 100), "wrk-script-ok.txt"),
        (plan.Cell("wsgi_gthread+bare", "hello", 100), "wrk-script-ok.txt"),
    )
    found = {
        check["check"]: check
        for check in targets.checks(cells, scenarios.BUILTIN, ["asgi_uvicorn"])
    }
    assert found["ceiling"]["ok"] is False
    # Bare ASGI no faster than bare WSGI: the harness, not the servers, limits both.
    assert found["harness"]["ok"] is False


# --- The matrix -------------------------------------------------------------------------------


def options(**overrides: Any) -> plan.Options:
    """Return Options for plan tests."""
    values: dict[str, Any] = {
        "out": Path("/nonexistent"),
        "modes": ("wsgi_sync", "wsgi_gthread", "asgi_uvicorn"),
        "endpoints": ("hello", "sleep", "stream"),
        "scenarios": tuple(plan.builtin_scenarios(("hello", "sleep"))),
    }
    values.update(overrides)
    return plan.Options(**values)


def test_plan_has_nginx_stock_bare_and_sse_groups() -> None:
    built = plan.build(options())
    names = [group.contender.name for group in built.groups]
    assert names == [
        "wsgi_sync",
        "wsgi_gthread",
        "asgi_uvicorn",
        "wsgi_sync+stock",
        "asgi_uvicorn+stock",
        "wsgi_sync+bare",
        "wsgi_gthread+bare",
        "asgi_uvicorn+bare",
        "asgi_uvicorn+starlette",
        "sanic",
    ]
    asgi = built.groups[2]
    assert [cell.key for cell in asgi.cells] == [
        "asgi_uvicorn|hello|c10|direct",
        "asgi_uvicorn|hello|c100|direct",
        "asgi_uvicorn|sleep|c100|direct",
        "asgi_uvicorn|sleep|c500|direct",
        "asgi_uvicorn|hello|c100|nginx",
    ]
    assert [cell.key for cell in built.groups[-3].cells] == ["asgi_uvicorn+bare|hello|c100|direct"]
    assert [cell.key for cell in built.groups[-1].cells] == ["sanic|hello|c100|direct"]
    # The floor: each interface of the chosen modes once, on hello (json is not chosen).
    assert built.floor == [plan.FloorJob("wsgi", ("hello",)), plan.FloorJob("asgi", ("hello",))]
    assert [group.contender.name for group in built.sse] == [
        "wsgi_sync",
        "wsgi_gthread",
        "asgi_uvicorn",
    ]


def test_repeats_alternate_the_order() -> None:
    built = plan.build(options(nginx=False, stock=False, bare=False))
    first = [(g.contender.name, [c.key for c in cells]) for g, cells in built.ordered(0)]
    second = [(g.contender.name, [c.key for c in cells]) for g, cells in built.ordered(1)]
    assert second == [(name, keys[::-1]) for name, keys in reversed(first)]
    third = [(g.contender.name, [c.key for c in cells]) for g, cells in built.ordered(2)]
    assert third == first


def test_concurrency_option_overrides_every_scenario() -> None:
    built = plan.build(options(concurrency=(7,), nginx=False, stock=False, bare=False))
    assert {cell.concurrency for group in built.groups for cell in group.cells} == {7}


def test_default_run_is_planned_under_15_minutes() -> None:
    args = cli.parser().parse_args(DEFAULT_RUN)
    built = plan.build(cli.options_from(args))
    assert built.estimate_s() < 15 * 60


def test_quick_run_is_planned_under_a_minute() -> None:
    built = plan.build(cli.options_from(cli.parser().parse_args(["--quick"])))
    assert built.estimate_s() < 60


def test_ceilings_answer_hello_and_json_and_the_bare_json_runs_beside_the_frameworks() -> None:
    chosen = plan.builtin_scenarios(("hello", "json"))
    chosen_options = options(scenarios=tuple(chosen), nginx=False, stock=False)
    built = plan.build(chosen_options)
    cells = {group.contender.name: [c.key for c in group.cells] for group in built.groups}
    assert cells["asgi_uvicorn+starlette"] == [
        "asgi_uvicorn+starlette|hello|c100|direct",
        "asgi_uvicorn+starlette|json|c100|direct",
    ]
    assert cells["sanic"] == ["sanic|hello|c100|direct", "sanic|json|c100|direct"]
    assert cells["asgi_uvicorn+bare"] == [
        "asgi_uvicorn+bare|hello|c100|direct",
        "asgi_uvicorn+bare|json|c100|direct",
    ]
    assert cells["wsgi_sync+bare"] == ["wsgi_sync+bare|hello|c100|direct"]
    assert built.floor == [
        plan.FloorJob("wsgi", ("hello", "json")),
        plan.FloorJob("asgi", ("hello", "json")),
    ]
    without = plan.build(dataclasses.replace(chosen_options, frameworks=False, floor=False))
    names = [group.contender.name for group in without.groups]
    assert "sanic" not in names
    assert "asgi_uvicorn+starlette" not in names
    assert without.floor == []
    assert without.estimate_s() < built.estimate_s()


def test_supervisor_contenders_run_their_twins_hello_and_json_cells_when_asked() -> None:
    chosen = plan.builtin_scenarios(("hello", "json", "sleep"))
    base = options(modes=("wsgi_gthread", "asgi_uvicorn"), scenarios=tuple(chosen))
    without = plan.build(base)
    built = plan.build(dataclasses.replace(base, supervisor=True))
    cells = {group.contender.name: [c.key for c in group.cells] for group in built.groups}
    for mode, twin in (("supervisor_wsgi", "wsgi_gthread"), ("supervisor_asgi", "asgi_uvicorn")):
        # The twin's direct hello and json cells, at the same levels; sleep and nginx not.
        assert cells[mode] == [
            key.replace(twin, mode)
            for key in cells[twin]
            if key.endswith("direct") and "|sleep|" not in key
        ]
        assert f"{mode}|hello|c10|direct" in cells[mode]
    assert built.estimate_s() > without.estimate_s()
    # Only beside a twin that is chosen.
    only_asgi = plan.build(dataclasses.replace(base, modes=("asgi_uvicorn",), supervisor=True))
    assert "supervisor_wsgi" not in [group.contender.name for group in only_asgi.groups]


def test_supervisor_is_opt_in_and_refused_where_it_cannot_run() -> None:
    assert args_of(*DEFAULT_RUN).supervisor is False
    assert args_of(*DEFAULT_RUN, "--no-supervisor").supervisor is False
    with pytest.raises(cli.UsageError, match="--workers 2 or more"):
        args_of(*DEFAULT_RUN, "--supervisor", "--workers", "1")
    with pytest.raises(cli.UsageError, match="choose one of them"):
        args_of(*DEFAULT_RUN, "--supervisor", "--modes", "wsgi_sync")


def test_fanout_is_opt_in_and_planned_on_asgi_uvicorn() -> None:
    assert args_of(*DEFAULT_RUN).fanout is False
    assert plan.build(args_of(*DEFAULT_RUN)).fanout == []
    built = plan.build(options(fanout=True, fanout_clients=20, fanout_rates=(10, 50)))
    (job,) = built.fanout
    assert (job.contender.name, job.workers, job.clients, job.rates) == (
        "asgi_uvicorn",
        2,
        20,
        (10, 50),
    )
    assert built.estimate_s() > plan.build(options()).estimate_s()


def test_a_fanout_step_keeps_up_only_when_every_transport_does() -> None:
    on_time = {"delivered_share": 1.0, "p99_ms": 40.0}
    late = {"delivered_share": 1.0, "p99_ms": 140.0}
    lost = {"delivered_share": 0.9, "p99_ms": 40.0}
    assert fanout.Step(10, 50, 5.0, 10.0, {"websocket": on_time, "sse": on_time}).keeps_up
    assert not fanout.Step(10, 50, 5.0, 10.0, {"websocket": on_time, "sse": late}).keeps_up
    assert not fanout.Step(10, 50, 5.0, 10.0, {"websocket": lost, "sse": on_time}).keeps_up


def test_fanout_memory_per_connection_is_each_transports_own_increase() -> None:
    memory = {
        "rest": {"workers_rss": 100_000_000},
        "websocket": {"workers_rss": 150_000_000},
        "sse": {"workers_rss": 170_000_000},
    }
    added = fanout.per_connection(memory, {"websocket": 1000, "sse": 1000})
    assert added == {"websocket": 50_000.0, "sse": 20_000.0}


def test_supervisor_contender_command() -> None:
    supervised = Contender("supervisor_asgi")
    assert (supervised.name, supervised.interface) == ("supervisor_asgi", "asgi")
    assert supervised.argv(8000, 2) == [str(SUPERVISOR_RUN)]
    env = ContenderLaunch(supervised, 3, 4, (), run_dir=Path("/r"))(8123)[1]
    assert (env["ASGI_PORT"], env["WEB_CONCURRENCY"], env["SUPERVISOR_RUN_DIR"]) == (
        "8123",
        "3",
        "/r",
    )
    assert env["WSGI_PORT"] not in ("8123", None)
    assert Contender("supervisor_wsgi").env(8000, 2, 4)["WSGI_MODE"] == "wsgi_gthread"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (True, True)),
        (["--no-frameworks"], (False, True)),
        (["--no-floor"], (True, False)),
        (["--quick"], (False, False)),
        (["--quick", "--frameworks", "--floor"], (True, True)),
    ],
)
def test_frameworks_and_floor_are_on_unless_quick_or_turned_off(
    argv: list[str], expected: tuple[bool, bool]
) -> None:
    chosen = args_of(*DEFAULT_RUN, *argv)
    assert (chosen.frameworks, chosen.floor) == expected


# --- Scenarios and the command line -----------------------------------------------------------


def test_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[scenario]]\nname = "create"\nmethod = "post"\npath = "/async/db/"\n'
        'headers = { Content-Type = "application/x-www-form-urlencoded" }\n'
        'body = "name=x&value=1"\nstatus = 201\nconcurrency = [5, 50]\n'
        '[[scenario]]\npath = "/healthz"\n',
        encoding="utf-8",
    )
    first, second = scenarios.load_file(path)
    assert (first.name, first.method, first.status, first.concurrency) == (
        "create",
        "POST",
        201,
        (5, 50),
    )
    request = first.request("wsgi")
    assert (request.path, request.body) == ("/async/db/", "name=x&value=1")
    assert (second.name, second.method, second.status) == ("/healthz", "GET", 200)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[scenario]]\nmethod = 'GET'\n", "`path` is required"),
        ("[[scenario]]\npath = 'no-slash'\n", "is not a URL path"),
        ("[[scenario]]\npath = '/x'\nmethod = 'BREW'\n", "method 'BREW'"),
        ("[[scenario]]\npath = '/x'\nstatus = 999\n", "status must be"),
        ("[[scenario]]\npath = '/x'\nconcurrency = [0]\n", "concurrency must be"),
        ("[[scenario]]\npath = '/x'\nheaders = { 'Bad Name' = 'v' }\n", "headers must"),
        ("[[scenario]]\npath = '/x'\ncolour = 'red'\n", "unknown keys"),
        ("[[scenario]]\npath = '/x'\n[[scenario]]\npath = '/x'\n", "names must differ"),
        ("scenario = 3\n", "expected one or more"),
        ("[[scenario]\n", "not valid TOML"),
    ],
)
def test_bad_scenario_files_are_refused_with_a_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(scenarios.ScenarioError, match=message):
        scenarios.load_file(path)


@pytest.mark.parametrize(
    "argv",
    [
        ["--modes", "wsgi_sync,nope"],
        ["--endpoints", "hello,nope"],
        ["--concurrency", "10,ten"],
        ["--duration", "0"],
        ["--url", "relative/path"],
        ["--scenario", "/nonexistent/scenarios.toml"],
        ["--server-cpus", "9999"],
    ],
)
def test_bad_command_lines_exit_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    require_wrk()
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip()


def test_missing_wrk_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(wrk, "find_wrk", lambda: None)
    assert cli.main(["--quick"]) == 2
    assert "apt-get install wrk" in capsys.readouterr().err


def test_granian_modes_need_granian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lab.bench.contenders.granian_installed", lambda: False)
    with pytest.raises(ContenderError, match="granian is not installed"):
        parse_modes("granian_asgi")


def test_contender_commands() -> None:
    stock = Contender("asgi_uvicorn", "stock")
    assert stock.name == "asgi_uvicorn+stock"
    assert stock.env(8000, 2, 4)["DUALSERVE_PROFILE"] == "stock"
    bare = Contender("wsgi_sync", "bare")
    assert bare.argv(8000, 2)[-1] == "lab.bench.bare:wsgi_app"
    granian = Contender("granian_asgi")
    argv = granian.argv(8123, 3)
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--workers") + 1] == "3"
    assert argv[-1] == "project.asgi:application"
    starlette, sanic = FRAMEWORK_CONTENDERS
    assert starlette.name == "asgi_uvicorn+starlette"
    assert starlette.argv(8000, 2)[-1] == "lab.bench.frameworks.starlette_app:app"
    assert "asgi_uvicorn.py" in starlette.argv(8000, 2)[2]
    assert (sanic.name, sanic.interface) == ("sanic", "asgi")
    argv = sanic.argv(8124, 3)
    assert argv[1] == "lab.bench.frameworks.sanic_app:app"
    assert argv[argv.index("--port") + 1] == "8124"
    assert argv[argv.index("--workers") + 1] == "3"
    assert "--no-access-logs" in argv
    assert sanic.env(8124, 3, 4)["GUNICORN_CMD_ARGS"] is None


# --- The user's own pages and data -------------------------------------------------------------


def args_of(*argv: str) -> plan.Options:
    """Return the options of a command line."""
    return cli.options_from(cli.parser().parse_args(list(argv)))


@pytest.mark.parametrize("quick", [[], ["--quick"]])
def test_empty_endpoints_mean_none(quick: list[str]) -> None:
    chosen = args_of(*quick, "--endpoints", "", "--url", "/blog/1/")
    assert chosen.endpoints == ()
    assert [scenario.name for scenario in chosen.scenarios] == ["/blog/1/"]
    built = plan.build(chosen)
    # Without hello there is no stock or bare group, and without stream no SSE run.
    assert {cell.scenario for group in built.groups for cell in group.cells} == {"/blog/1/"}
    assert built.sse == []


def test_nothing_to_measure_is_refused() -> None:
    with pytest.raises(cli.UsageError, match="nothing to measure"):
        args_of("--endpoints", "")
    assert args_of("--endpoints", "stream").scenarios == ()  # the SSE runs alone


def test_help_says_which_database_and_how_to_choose_another() -> None:
    text = " ".join(cli.parser().format_help().split())
    assert "private SQLite database, freshly migrated" in text
    assert "DATABASE_URL from the environment is ignored" in text
    assert "--database-url URL" in text
    assert "--fixture FILE" in text
    assert "1 a failed run or a cell that answered another status" in text


def test_the_callers_database_url_never_reaches_the_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://someone@elsewhere/prod")
    assert server_env(Path("/tmp/var"))["DATABASE_URL"] is None
    assert manage_steps("", ())[0][0] == "migrate"


def test_database_url_is_served_as_it_is_with_its_password_hidden() -> None:
    url = "postgres://bench:s3cret@db.example:5432/shop"
    chosen = args_of("--database-url", url, "--url", "/blog/1/")
    assert chosen.database_url == url
    runner = Runner(plan.build(chosen), "wrk", Path("/nonexistent"))
    assert runner.env["DATABASE_URL"] == url
    # Neither migrated nor loaded: the user's database is used as it is.
    assert manage_steps(url, ()) == [["collectstatic", "--noinput", "--verbosity", "0"]]
    hidden = "postgres://bench:***@db.example:5432/shop"
    assert shown_env(runner.env)["DATABASE_URL"] == hidden
    assert cli.options_dict(chosen)["database_url"] == hidden
    assert "s3cret" not in json.dumps(cli.options_dict(chosen))
    assert cli.shown_argv(["--database-url", url, f"--database-url={url}", "--url", "/x/"]) == [
        "--database-url",
        hidden,
        f"--database-url={hidden}",
        "--url",
        "/x/",
    ]


def test_a_relative_sqlite_database_url_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.sqlite3").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    chosen = args_of("--database-url", "sqlite:///mine.sqlite3", "--endpoints", "hello")
    # The servers run in the checkout: a relative path would name another (new, empty) file.
    assert chosen.database_url == f"sqlite:///{tmp_path}/mine.sqlite3"


def test_fixtures_load_in_order_after_migrating_the_private_database(tmp_path: Path) -> None:
    second = tmp_path / "second.json"
    second.write_text("[]", encoding="utf-8")
    chosen = args_of("--fixture", str(FIXTURE), "--fixture", str(second), "--endpoints", "db")
    assert chosen.fixtures == (FIXTURE, second)
    assert [step[0] for step in manage_steps("", chosen.fixtures)] == [
        "migrate",
        "loaddata",
        "loaddata",
        "collectstatic",
    ]
    assert manage_steps("", chosen.fixtures)[2][-1] == str(second)
    assert cli.options_dict(chosen)["fixtures"] == [str(FIXTURE), str(second)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fixture", "/nonexistent/data.json"], "no such file"),
        (["--fixture", str(FIXTURE), "--database-url", "postgres://h/db"], "private database"),
        (["--database-url", "nope://host/db"], "unknown"),
        (["--database-url", "sqlite:////nonexistent/db.sqlite3"], "no SQLite database"),
        (["--database-url", "sqlite://:memory:"], "in-memory"),
    ],
)
def test_bad_database_options_are_refused_with_a_reason(argv: list[str], message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        args_of(*argv, "--endpoints", "hello")


def results_of(runs: list[dict[str, Any]], *extra: scenarios.Scenario) -> dict[str, Any]:
    """Return a results.json document around `runs`, for analysis and charts."""
    chosen = [*plan.builtin_scenarios(("hello",)), *extra]
    return {
        "options": {"modes": ["wsgi_sync", "asgi_uvicorn"], "workers": 2, "threads": 4},
        "scenarios": [analysis.scenario_dict(scenario) for scenario in chosen],
        "runs": runs,
        "sse_runs": [],
        "servers": [],
    }


def unmeasured(cell: plan.Cell, reason: str) -> dict[str, Any]:
    """Return a run whose probe answered another status, as the runner records it."""
    run = {**run_record(cell, recorded("wrk-script-ok.txt")), "skipped": reason}
    del run["wrk"]
    return run


def test_cells_that_answered_another_status_are_listed() -> None:
    page = scenarios.from_url("/blog/1/")
    runs = [
        run_record(plan.Cell("asgi_uvicorn", "hello", 100), recorded("wrk-script-ok.txt")),
        unmeasured(plan.Cell("asgi_uvicorn", "/blog/1/", 10), "answered 404, expected 200"),
        # The probe answered 200, but under load wrk counted 400s.
        run_record(
            plan.Cell("wsgi_sync", "/blog/1/", 10), recorded("wrk-script-status-errors.txt")
        ),
    ]
    found = analysis.analyse(results_of(runs, page)).wrong_status
    assert found == [
        "asgi_uvicorn|/blog/1/|c10|direct: answered 404, expected 200",
        "wsgi_sync|/blog/1/|c10|direct: 246 of 246 answers had a status of 400 or more, "
        "expected 200",
    ]
    summary = cli.wrong_status_summary(found * 6)
    assert summary.startswith("12 cell(s) answered a status they do not expect")
    assert summary.endswith("and 2 more (report.md)")


def test_an_expected_error_status_is_not_a_wrong_status() -> None:
    gone = scenarios.Scenario("gone", {"*": "/gone/"}, status=400)
    runs = [
        run_record(plan.Cell("wsgi_sync", "gone", 10), recorded("wrk-script-status-errors.txt"))
    ]
    assert analysis.analyse(results_of(runs, gone)).wrong_status == []


def texts(axis: Any) -> list[str]:
    """Return every text drawn on a chart's axis: labels, annotations, tick labels."""
    drawn = [text.get_text() for text in axis.texts]
    drawn += [label.get_text() for label in axis.get_xticklabels()]
    return [*drawn, axis.get_title(), axis.get_xlabel()]


def test_charts_keep_an_unmeasured_url_visible_as_missing() -> None:
    page = scenarios.from_url("/blog/1/")
    runs = [
        run_record(plan.Cell("asgi_uvicorn", "hello", 100), recorded("wrk-script-ok.txt")),
        unmeasured(plan.Cell("wsgi_sync", "hello", 100), "answered 500, expected 200"),
        unmeasured(plan.Cell("asgi_uvicorn", "/blog/1/", 10), "answered 404, expected 200"),
        unmeasured(plan.Cell("wsgi_sync", "/blog/1/", 10), "answered 404, expected 200"),
    ]
    analysed = analysis.analyse(results_of(runs, page))
    for figure in (charts.throughput_figure(analysed), charts.latency_figure(analysed)):
        assert figure is not None
        panels = {axis.get_title(): texts(axis) for axis in figure.axes if axis.get_title()}
        hello = next(drawn for title, drawn in panels.items() if title.startswith("hello"))
        page_panel = next(drawn for title, drawn in panels.items() if "/blog/1/" in title)
        # hello: asgi_uvicorn drawn, wsgi_sync kept as a labelled gap.
        assert {"asgi_uvicorn", "wsgi_sync", charts.MISSING, charts.MISSING_NOTE} <= set(hello)
        # The URL measured nowhere still has its panel, every mode marked missing.
        assert page_panel.count(charts.MISSING) == 2, page_panel
        assert {"asgi_uvicorn", "wsgi_sync"} <= set(page_panel)
        charts.plt.close(figure)


def test_a_missing_level_on_the_lines_is_marked_where_it_would_be() -> None:
    runs = [
        run_record(plan.Cell("asgi_uvicorn", "hello", 10), recorded("wrk-script-ok.txt")),
        unmeasured(plan.Cell("asgi_uvicorn", "hello", 100), "answered 503, expected 200"),
        unmeasured(plan.Cell("wsgi_sync", "hello", 10), "answered 503, expected 200"),
        unmeasured(plan.Cell("wsgi_sync", "hello", 100), "answered 503, expected 200"),
    ]
    figure = charts.throughput_figure(analysis.analyse(results_of(runs)))
    assert figure is not None
    (axis, *_) = figure.axes
    assert texts(axis).count(charts.MISSING) == 3
    legend = axis.get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == ["asgi_uvicorn", "wsgi_sync (n/a)"]
    charts.plt.close(figure)


# --- The ceilings: the bare apps and the frameworks --------------------------------------------

CEILING_PATHS = ("/sync/hello/", "/async/hello/", "/sync/json/", "/async/json/", "/healthz")
Answer = tuple[int, str, bytes]


def bare_answer(path: str) -> Answer:
    """Return what the bare apps answer to `path`: status, content type and body."""
    headers, body = bare.answer(path)
    return 200, dict(headers)[b"content-type"].decode(), body


async def asgi_answer(app: Any, path: str) -> Answer:
    """Send GET `path` to an ASGI app in-process; return its status, content type and body."""
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the app cancels this wait when done
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        # Sanic hands the headers over as a generator: read them while they exist.
        sent.append({**message, "headers": list(message.get("headers", []))})

    await asyncio.wait_for(app(floor.asgi_scope(path), receive, send), timeout=10)
    start = sent[0]
    headers = {bytes(name).lower(): bytes(value) for name, value in start["headers"]}
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], headers[b"content-type"].decode(), body


async def asgi_answers(app: Any, paths: Sequence[str]) -> list[Answer]:
    """Start `app` with the lifespan protocol, send GET for each path, then shut it down."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    life = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, replies.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(replies.get(), 10))["type"] == "lifespan.startup.complete"
    try:
        return [await asgi_answer(app, path) for path in paths]
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 10)


def wsgi_answer(path: str) -> Answer:
    """Send GET `path` to the bare WSGI app; return its status, content type and body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(
        bare.wsgi_app(
            floor.wsgi_environ(path), lambda status, headers: started.append((status, headers))
        )
    )
    status, headers = started[0]
    return int(status.split()[0]), dict(headers)["content-type"], body


def test_the_frameworks_answer_the_bare_apps_bytes() -> None:
    expected = [bare_answer(path) for path in CEILING_PATHS]
    assert expected[0] == (200, "text/plain; charset=utf-8", b"Hello, world!\n")
    # Serialised with json.dumps' defaults, as Django's JsonResponse does: spaces after , and :.
    assert expected[2][1:] == ("application/json", json.dumps(bare.JSON_PAYLOAD).encode())
    assert b'", "project": "' in expected[2][2]
    for app in (bare.asgi_app, starlette_app.app, sanic_app.app):
        assert asyncio.run(asgi_answers(app, CEILING_PATHS)) == expected, app
    assert [wsgi_answer(path) for path in CEILING_PATHS] == expected


# showcase:begin
@pytest.mark.parametrize("path", CEILING_PATHS[:4])
def test_the_bare_answers_are_the_showcases_bytes(client: Any, path: str) -> None:
    response = client.get(path)
    assert (response.status_code, response["Content-Type"], response.content) == bare_answer(path)


# showcase:end
@pytest.mark.serving
@pytest.mark.parametrize("contender", FRAMEWORK_CONTENDERS, ids=lambda contender: contender.name)
def test_a_framework_ceiling_serves_the_bare_bytes_on_its_own_command(
    tmp_path: Path, contender: Contender
) -> None:
    server = launch(
        ContenderLaunch(contender, 2, 1, ()),
        env=dict.fromkeys(servers.INHERITED_SETTINGS),
        workdir=tmp_path,
    )
    try:
        answers = []
        for path in ("/async/hello/", "/sync/json/"):
            connection = http.client.HTTPConnection(servers.HOST, server.port, timeout=10)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                answers.append(
                    (response.status, response.getheader("Content-Type"), response.read())
                )
            finally:
                connection.close()
        processes = procs.tree(server.pid)
        if contender.mode == SANIC:
            # As the runner does: a SIGTERM before Sanic's main process has every worker's
            # acknowledgement spins it until SIGKILL.
            assert wait_sanic_ready(server, 2)
    finally:
        # Not its exit status: Sanic 25.12's main process now and then exits 1 from a race in
        # its own shared worker state while shutting down (a traceback in its log).
        server.stop()
    assert answers == [bare_answer("/async/hello/"), bare_answer("/sync/json/")]
    assert len(processes) >= 3, "a master and two workers"
    assert not [pid for pid in processes if pid_alive(pid)]


# --- The floor: Django's handlers in-process -----------------------------------------------------


def test_the_floor_sends_requests_through_a_handler_in_process() -> None:
    assert floor.wsgi_request(bare.wsgi_app, "/sync/json/") == (200, len(bare.json_body()))
    loop = floor.new_event_loop()
    try:
        answer = loop.run_until_complete(floor.asgi_request(bare.asgi_app, "/async/hello/?x=1"))
    finally:
        loop.close()
    assert answer == (200, len(bare.BODY))
    environ = floor.wsgi_environ("/async/hello/?x=1")
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/async/hello/", "x=1")
    scope = floor.asgi_scope("/async/hello/?x=1")
    assert (scope["path"], scope["query_string"]) == ("/async/hello/", b"x=1")


def test_server_share_is_what_the_floor_leaves_of_a_served_request() -> None:
    assert floor.share(100.0, 400.0) == pytest.approx(0.75)
    assert floor.share(400.0, 400.0) == pytest.approx(0.0)
    assert floor.share(100.0, 0.0) is None


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_the_floor_times_djangos_handler_in_a_subprocess(tmp_path: Path, interface: str) -> None:
    paths = FLOOR_PATHS[interface]
    (tmp_path / "var").mkdir()
    done = subprocess.run(
        floor.command(interface, paths, 20, 5, 2),
        cwd=servers.REPO_ROOT,
        env=servers.merged_environment(server_env(tmp_path / "var")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["application"] == f"project.{interface}"
    assert [measured["path"] for measured in figures["paths"]] == paths
    for measured in figures["paths"]:
        assert (measured["status"], measured["requests"]) == (200, 20)
        assert measured["body_bytes"] > 0
        assert len(measured["batches"]) == 2
        assert all(batch["cpu_s"] > 0 and batch["wall_s"] > 0 for batch in measured["batches"])


def floor_run(interface: str, cpu_us: float, requests: int = 100) -> dict[str, Any]:
    """Return the floor's figures of hello through one interface, as the runner records them."""
    return {
        "interface": interface,
        "scenario": "hello",
        "path": f"/{'sync' if interface == 'wsgi' else 'async'}/hello/",
        "status": 200,
        "body_bytes": 14,
        "requests": requests,
        "warmup": 10,
        "batches": [
            {"cpu_s": cpu_us * requests / 1e6 * factor, "wall_s": 2 * cpu_us * requests / 1e6}
            for factor in (0.9, 1.0, 1.2)
        ],
    }


def test_floor_shares_pair_each_served_cell_with_its_interfaces_floor() -> None:
    ok = recorded("wrk-script-ok.txt")  # 4,462 requests
    runs = [
        run_record(plan.Cell("asgi_uvicorn", "hello", 100), ok, cpu_s=4462 * 400e-6),
        run_record(plan.Cell("wsgi_sync", "hello", 100), ok, cpu_s=4462 * 800e-6),
        # Not Django: no share.
        run_record(plan.Cell("asgi_uvicorn+bare", "hello", 100), ok, cpu_s=4462 * 90e-6),
    ]
    results = {
        **results_of(runs),
        "floor_runs": [floor_run("asgi", 100.0), floor_run("wsgi", 200.0)],
    }
    analysed = analysis.analyse(results)
    assert [figure.cpu_us.low for figure in analysed.floor] == pytest.approx([90.0, 180.0])
    shares = {row.contender: row for row in analysed.floor_shares}
    assert set(shares) == {"asgi_uvicorn", "wsgi_sync"}
    assert shares["asgi_uvicorn"].served_cpu_us.median == pytest.approx(400.0)
    assert shares["asgi_uvicorn"].share == pytest.approx(0.75)
    assert shares["wsgi_sync"].floor_cpu_us.median == pytest.approx(200.0)
    assert shares["wsgi_sync"].share == pytest.approx(0.75)
    section = "\n".join(report.floor_section(analysed))
    assert "## Floor: Django's own cost" in section
    assert "| asgi | hello: `GET /async/hello/` | 100 | 100.0 (90.0-120.0) | 200.0 |" in section
    assert "| asgi_uvicorn | hello | 100 | 100.0 | 400.0 | 75% |" in section
    figure = charts.floor_figure(analysed)
    assert figure is not None
    assert "server 75%" in texts(figure.axes[0])
    charts.plt.close(figure)


def test_no_floor_no_section() -> None:
    analysed = analysis.analyse(results_of([]))
    assert report.floor_section(analysed) == []
    assert charts.floor_figure(analysed) is None


def test_the_ceiling_table_puts_django_beside_bare_starlette_and_sanic() -> None:
    fast, slow = recorded("wrk-script-ok.txt"), recorded("wrk-script-post.txt")
    runs = [
        run_record(plan.Cell("asgi_uvicorn", "hello", 100), slow),
        run_record(plan.Cell("sanic", "hello", 100), fast),
        run_record(plan.Cell("asgi_uvicorn+starlette", "hello", 100), fast),
        run_record(plan.Cell("asgi_uvicorn+bare", "hello", 100), fast),
        # Another level: no ceiling app there, so not in the table.
        run_record(plan.Cell("asgi_uvicorn", "hello", 10), slow),
    ]
    analysed = analysis.analyse(results_of(runs))
    rows = [
        (cell.contender, kind, django.contender if django else None)
        for cell, kind, django in analysis.ceiling_rows(analysed, "hello")
    ]
    assert rows == [
        ("asgi_uvicorn+bare", "no framework", "asgi_uvicorn"),
        ("asgi_uvicorn+starlette", "Starlette", "asgi_uvicorn"),
        ("sanic", "Sanic", "asgi_uvicorn"),
        ("asgi_uvicorn", "Django (the template)", None),
    ]
    section = "\n".join(report.ceiling_section(analysed))
    assert "| sanic | Sanic | 100 | 2,198 |" in section
    assert "13.46x asgi_uvicorn" in section
    figure = charts.ceiling_figure(analysed)
    assert figure is not None
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == [
        "asgi_uvicorn+bare",
        "asgi_uvicorn+starlette",
        "sanic",
        "asgi_uvicorn",
    ]
    charts.plt.close(figure)
    # Sanic runs no Django: the harness check compares wrk's best with Django's, not Sanic's.
    (harness,) = [check for check in analysed.checks if check["check"] == "harness"]
    assert "the fastest Django cell (asgi_uvicorn|hello|c" in harness["text"]


# --- SSE client pieces ------------------------------------------------------------------------


def test_chunked_decoder_across_any_split() -> None:
    body = b"id: 1\ndata: {}\n\n" * 3
    framed = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
        + b"0\r\n\r\n"
    )
    for split in range(len(framed) + 1):
        decoder = sse.ChunkedDecoder()
        assert decoder.feed(framed[:split]) + decoder.feed(framed[split:]) == body
        assert decoder.done


def test_sse_summary_counts_missing_events_as_late() -> None:
    results = [
        sse.ClientResult(
            status=200,
            first_event_ms=5.0,
            lateness_ms=[0.0, 10.0, 150.0],
            gap_lateness_ms=[10.0, 140.0],
        ),
        sse.ClientResult(status=503),
        sse.ClientResult(status=0, error="deadline"),
    ]
    summary = sse.summarize(results, events=3, interval_ms=100, wall_s=1.0)
    assert (summary.connected, summary.completed, summary.events_expected) == (1, 1, 9)
    assert summary.on_time == 2
    assert summary.on_time_ratio == pytest.approx(2 / 9)
    assert summary.statuses == {"0": 1, "200": 1, "503": 1}
    assert summary.errors == {"deadline": 1}
    assert summary.gap_lateness_ms["max"] == 140.0
    assert summary.first_event_ms["p50"] == 5.0


# --- /proc figures ----------------------------------------------------------------------------


def test_tree_rss_and_cpu_of_a_real_child() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass",
        ]
    )
    try:
        assert child.pid in procs.tree(os.getpid())
        shot = procs.snapshot(os.getpid())
        assert shot.root_rss > 0
        assert shot.worker_rss[child.pid] > 0
        with procs.Sampler(child.pid) as sampler:
            deadline = time.monotonic() + 10
            while procs.cpu_seconds([child.pid]) < 0.3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert sampler.usage.cpu_s > 0
        assert sampler.usage.peak_total_rss > 0
    finally:
        child.kill()
        child.wait()
    assert procs.rss_bytes(child.pid) == 0


# --- Real runs ----------------------------------------------------------------------------------


def smoke_args(out: Path) -> list[str]:
    """Return a tiny matrix: one mode, hello and 20 SSE clients, 1 s, one repeat."""
    args = [
        "--quick",
        "--out",
        str(out),
        "--modes",
        "asgi_uvicorn",
        "--endpoints",
        "hello,stream",
        "--concurrency",
        "10",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--sse-clients",
        "20",
        "--sse-events",
        "3",
        "--sse-interval",
        "50",
    ]
    if nginx.nginx_binary() is None and os.environ.get("CI", "").strip().lower() != "true":
        args.append("--no-nginx")
    return args


def png_size(path: Path) -> tuple[int, int]:
    """Return a PNG's width and height from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pid_alive(pid: int) -> bool:
    """Return whether a process with `pid` exists (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# showcase:begin
@pytest.mark.slow
@pytest.mark.serving
def test_quick_smoke_run_writes_every_output(tmp_path: Path) -> None:
    require_wrk()
    out = tmp_path / "bench"
    # --quick leaves the frameworks and the floor out: ask for them, the floor kept short.
    extra = ["--frameworks", "--floor", "--floor-requests", "50"]
    assert cli.main([*smoke_args(out), *extra]) == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "complete"
    measured = [run for run in results["runs"] if "wrk" in run]
    assert {run["cell"] for run in measured} >= {
        "asgi_uvicorn|hello|c10|direct",
        "asgi_uvicorn+bare|hello|c10|direct",
        "asgi_uvicorn+starlette|hello|c10|direct",
        "sanic|hello|c10|direct",
    }
    for run in measured:
        assert run["wrk"]["requests"] > 0, run["wrk_output"]
        assert run["wrk"]["errors"]["status"] == 0
        assert run["command"].split()[0].endswith(("wrk", "taskset"))
        assert run["server"]["peak_rss"] > 0
    assert results["machine"]["packages"]["django"]
    assert all(server["rest_rss"] > 0 for server in results["servers"])
    (sse_run,) = results["sse_runs"]
    assert (sse_run["clients"], sse_run["connected"], sse_run["events_received"]) == (20, 20, 60)
    # Measured, not defaulted: every stream took some time to its first event.
    assert sse_run["first_event_ms"]["p50"] > 0
    assert [target["number"] for target in results["targets"]] == [1, 2, 3, 4, 5, 6]
    assert results["wrong_status"] == []
    (floor_figure,) = results["floor"]
    assert (floor_figure["interface"], floor_figure["path"]) == ("asgi", "/async/hello/")
    assert (floor_figure["status"], floor_figure["requests"]) == (200, 50)
    assert floor_figure["cpu_us"]["median"] > 0
    (floor_share,) = results["floor_shares"]
    assert (floor_share["contender"], floor_share["scenario"]) == ("asgi_uvicorn", "hello")
    assert floor_share["served_cpu_us"]["median"] > 0
    assert floor_share["share"] is not None

    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in (
        "## Verdict",
        "## Targets",
        "## Throughput and latency",
        "## Memory",
        "## Trust checks",
        "## Ceiling: no framework, a lean framework, Django",
        "## Floor: Django's own cost",
    ):
        assert heading in report
    assert "| 1 | Django /async/hello/" in report
    assert "private SQLite database, freshly migrated;" in report
    if "--no-nginx" not in smoke_args(out):
        # One repeat cannot tell nginx's cost from noise, and the report says by which rule.
        assert results["targets"][4]["verdict"] == targets.UNDECIDED
        assert targets.NGINX_RULE in report
    charts = sorted(path.name for path in out.glob("*.png"))
    assert {
        "throughput.png",
        "latency.png",
        "ceiling.png",
        "floor.png",
        "memory.png",
        "sse.png",
    } <= set(charts)
    for name in charts:
        width, height = png_size(out / name)
        assert width > 100
        assert height > 100
        assert f"]({name})" in report
    # Every process the run started is gone.
    assert not [server["pid"] for server in results["servers"] if pid_alive(server["pid"])]

    # The report can be redrawn from results.json alone.
    (out / "report.md").unlink()
    assert cli.main(["--rebuild", str(out)]) == 0
    assert (out / "report.md").read_text(encoding="utf-8") == report


@pytest.mark.slow
@pytest.mark.serving
def test_a_small_fanout_delivers_every_event_to_every_websocket_and_sse_client(
    tmp_path: Path,
) -> None:
    require_wrk()
    require_redis()
    out = tmp_path / "bench"
    argv = ["--modes", "asgi_uvicorn", "--endpoints", "", "--no-floor", "--no-nginx"]
    fan = ["--fanout", "--fanout-clients", "20", "--fanout-rates", "10,20", "--fanout-step", "1"]
    assert cli.main([*argv, *fan, "--out", str(out)]) == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (run,) = results["fanout_runs"]
    assert run["connected"] == {"websocket": 20, "sse": 20}
    assert run["paths"] == {"websocket": "/ws/live/", "sse": "/async/live/"}
    first = run["steps"][0]
    assert (first["rate"], first["published"]) == (10, 10)
    for figures in first["transports"].values():
        # Every event reached every client once: nothing lost, nothing twice.
        assert figures["received"] == figures["expected"] == 200
        assert figures["p50_ms"] > 0
    # Memory read before, between and after connecting; the workers hold the sockets.
    assert set(run["memory"]) == {"rest", "websocket", "sse", "end"}
    assert sum(run["memory"]["sse"]["worker_sockets"]) >= 40
    report_text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Fan-out: one event to many WebSocket and SSE clients" in report_text
    assert "](fanout.png)" in report_text
    assert png_size(out / "fanout.png")[0] > 100
    # The server and redis-server are gone; Redis wrote nothing to disk.
    assert not [server["pid"] for server in results["servers"] if pid_alive(server["pid"])]
    assert not pid_alive(run["redis_pid"])
    redis_argv = results["commands"]["redis"]
    assert redis_argv[redis_argv.index("--save") + 1] == ""
    assert redis_argv[redis_argv.index("--appendonly") + 1] == "no"


# showcase:end
def require_redis() -> None:
    """Fail under CI=true without redis-server, skip elsewhere."""
    if infra.redis_binary() is not None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true and {infra.REDIS_INSTALL_HINT}")
    pytest.skip(infra.REDIS_INSTALL_HINT)


def user_page_args(out: Path, url: str, *extra: str) -> list[str]:
    """Return a one-mode, one-second run of `url` alone, no showcase endpoint."""
    return [
        "--out",
        str(out),
        "--modes",
        "wsgi_sync",
        "--endpoints",
        "",
        "--url",
        url,
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--no-nginx",
        "--no-stock",
        *extra,
    ]


def measured_runs(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return a run's results.json and its measured runs."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return results, [run for run in results["runs"] if "wrk" in run]


# showcase:begin
@pytest.mark.slow
@pytest.mark.serving
def test_a_page_that_needs_the_users_data_fails_the_run_until_a_fixture_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_wrk()
    # A run with a wrong status keeps its work directory (server logs): keep it in tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    empty = tmp_path / "empty"
    assert cli.main(user_page_args(empty, FIXTURE_URL)) == 1
    printed = " ".join(capsys.readouterr().err.split())
    assert f"wsgi_sync|{FIXTURE_URL}|c2|direct: answered 404, expected 200" in printed
    results, measured = measured_runs(empty)
    assert (results["status"], measured) == ("complete", [])
    assert [cell["scenario"] for cell in results["cells"]] == [FIXTURE_URL]
    assert results["wrong_status"][0].startswith(f"wsgi_sync|{FIXTURE_URL}|c2|direct: answered 404")
    assert "**Wrong status**" in (empty / "report.md").read_text(encoding="utf-8")
    assert (empty / "throughput.png").exists()  # the unmeasured URL, drawn as n/a

    loaded = tmp_path / "loaded"
    assert cli.main(user_page_args(loaded, FIXTURE_URL, "--fixture", str(ITEM_FIXTURE))) == 0
    results, measured = measured_runs(loaded)
    assert [run["cell"] for run in measured] == [f"wsgi_sync|{FIXTURE_URL}|c2|direct"]
    assert measured[0]["wrk"]["requests"] > 0
    assert measured[0]["wrk"]["errors"]["status"] == 0
    assert f"with `{ITEM_FIXTURE}` loaded" in (loaded / "report.md").read_text(encoding="utf-8")
    for out in (empty, loaded):
        results, _ = measured_runs(out)
        assert not [server["pid"] for server in results["servers"] if pid_alive(server["pid"])]


# showcase:end


@pytest.mark.slow
@pytest.mark.serving
def test_a_run_on_the_users_own_database(tmp_path: Path) -> None:
    require_wrk()
    url = f"sqlite:///{tmp_path / 'mine.sqlite3'}"
    env = servers.merged_environment(
        {**dict.fromkeys(servers.INHERITED_SETTINGS), "DATABASE_URL": url}
    )
    for step in (["migrate", "--noinput"], ["loaddata", str(FIXTURE)]):
        manage.run_checked([*step, "--verbosity", "0"], env)
    out = tmp_path / "bench"
    assert cli.main(user_page_args(out, USER_URL, "--database-url", url)) == 0
    results, measured = measured_runs(out)
    assert [run["cell"] for run in measured] == [f"wsgi_sync|{USER_URL}|c2|direct"]
    assert measured[0]["wrk"]["requests"] > 0
    assert measured[0]["wrk"]["errors"]["status"] == 0
    assert results["servers"][0]["env"]["DATABASE_URL"] == url
    assert results["options"]["database_url"] == url


@pytest.mark.slow
@pytest.mark.serving
def test_a_failure_stops_every_server_and_keeps_what_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_wrk()
    # A failed run keeps its work directory (server logs) on purpose: keep it in tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "bench"
    failing_wrk = tmp_path / "wrk"
    failing_wrk.write_text(
        "#!/bin/sh\necho 'wrk: simulated failure' >&2\nexit 1\n", encoding="utf-8"
    )
    failing_wrk.chmod(0o755)
    options = cli.options_from(cli.parser().parse_args([*smoke_args(out), "--no-nginx"]))
    built = plan.build(options)
    code = cli.run(
        built, str(failing_wrk), cli.Console(stderr=True), keep_work=False, argv=["test"]
    )
    assert code == 1
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "failed"
    assert "simulated failure" in results["message"]
    assert results["servers"], "the server must have started before wrk failed"
    assert not [server["pid"] for server in results["servers"] if pid_alive(server["pid"])]
    assert "status **failed**" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.serving
def test_sigint_stops_the_run_and_every_server(tmp_path: Path) -> None:
    require_wrk()
    out = tmp_path / "bench"
    args = [*smoke_args(out), "--no-nginx", "--duration", "30"]
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.bench", *args],
        cwd=servers.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # TMPDIR: the interrupted run keeps its work directory; keep it in tmp_path.
        env={**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path)},
        # A shell starts background jobs with SIGINT ignored, and a child inherits that: give
        # the run Ctrl-C's default, as a terminal would.
        preexec_fn=default_sigint,
    )
    try:
        assert process.stdout is not None
        seen = ""
        deadline = time.monotonic() + 90
        while "started asgi_uvicorn" not in seen and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen += line
        assert "started asgi_uvicorn" in seen, seen
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            # SIGTERM first: the run turns it into the same clean-up as Ctrl-C, so a failing
            # test does not orphan the servers it started (SIGKILL would).
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == cli.EXIT_INTERRUPTED, seen + rest
    assert "interrupted" in rest
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "interrupted"
    assert not [server["pid"] for server in results["servers"] if pid_alive(server["pid"])]


@pytest.mark.serving
def test_stop_all_stops_a_registered_server(tmp_path: Path) -> None:
    runner = Runner(plan.build(options()), "wrk", tmp_path)
    server = launch(
        ContenderLaunch(Contender("asgi_uvicorn", "bare"), 1, 1, ()),
        env={"GUNICORN_CMD_ARGS": None},
        workdir=tmp_path,
    )
    try:
        runner.register("bare", server)
        workers = procs.tree(server.pid)
        assert len(workers) >= 2
        stopped = runner.stop_all()
    finally:
        server.stop()  # reaped even when an assertion above fails (a no-op after stop_all)
    assert stopped == [f"bare (pid {server.pid}, exit 0)"]
    assert not [pid for pid in workers if pid_alive(pid)]


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.parametrize("mode", ["supervisor_wsgi", "supervisor_asgi"])
def test_a_supervisor_contender_serves_one_interface_and_stops_with_nothing_left(
    tmp_path: Path, mode: str
) -> None:
    require_supervisord()
    built = plan.build(options(modes=("wsgi_gthread", "asgi_uvicorn"), supervisor=True))
    runner = Runner(built, "wrk", tmp_path)
    try:
        runner.prepare()
        server = runner.start_server(Contender(mode), 2, mode)
        # pytest's deep tmp_path leaves no room for supervisord's socket: a short directory.
        (run_dir,) = runner.scratch
        tree = procs.tree(server.pid)
        (record,) = runner.servers_started
        interface = Contender(mode).interface
        other = "asgi" if interface == "wsgi" else "wsgi"
        # The idle interface was stopped: supervisord's log says so, its port refuses.
        assert f"stopped: {other}-0" in (run_dir / "supervisord.log").read_text()
        other_port = int(record["env"][f"{other.upper()}_PORT"])
        with pytest.raises(ConnectionRefusedError):
            servers.http_status(servers.HOST, other_port, "/healthz", timeout=2)
        assert servers.http_status(servers.HOST, server.port, "/healthz", timeout=10) == 200
        # supervisord, then per process a uvicorn, or a gunicorn master and its worker.
        assert len(tree) == (5 if interface == "wsgi" else 3)
        assert record["rest_rss"] > sum(record["rest_worker_rss"]) > 0
    finally:
        stopped = runner.stop_all()
        runner.cleanup()
    assert len(stopped) == 1
    assert "outlived" not in stopped[0]
    assert not [pid for pid in tree if pid_alive(pid)]


def require_supervisord() -> None:
    """Fail under CI=true without supervisord, skip elsewhere (tests/lab/test_up.py's rule)."""
    if contenders.supervisor_installed():
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true and {contenders.SUPERVISOR_INSTALL_HINT}")
    pytest.skip(contenders.SUPERVISOR_INSTALL_HINT)


def default_sigint() -> None:
    """Give SIGINT its default action (in a child, before exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Make SIGINT raise KeyboardInterrupt here, even if this run was started ignoring it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupt_while_a_server_is_spawned_waits_until_it_is_registered() -> None:
    steps: list[str] = []

    def spawn_and_register() -> None:
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("registered")  # the block still runs to its end
        steps.append("after the block")  # never reached: the interrupt is delivered first

    with pytest.raises(KeyboardInterrupt):
        spawn_and_register()
    assert steps == ["registered"]
    # And the handlers are back: a plain SIGINT interrupts at once again.
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
