"""``adserver bench --only http``: the ad path over HTTP against do-nothing endpoints on the same granian setup.

One stack (nats-server, the control plane, Redis), three edge processes of one region (one granian worker
each, started the same way): the one under test, a second identical one with decision events off (the event
tax), and the baseline app. Twenty campaigns, each on its own keyword, budgets no run exhausts; wrk walks a
list of ad requests over those keywords (one slot each, every fourth with a user id). No campaign caps or
targets a segment and no click model has been trained, so neither the profile read nor the model's scoring
is in these figures (``auction`` measures the model's cost in-process).

- ``http_ratio_vs_hello``: saturated decisions/s of ``/v1/ads`` (events and budget on) / ``/hello`` req/s
  (target ≥ 0.2);
- ``event_tax``: decisions/s with decision events published / without (target ≥ 0.85);
- ``p99_ratio_vs_json``: unloaded p99 (one connection) of ``/v1/ads`` / a no-work JSON endpoint's (target ≤ 2).
- ``unloaded_loop_hold``: during the unloaded ``/v1/ads`` runs, per background task of the edge, its steps a
  second and how long they held the event loop (``adserver_edge_loop_hold_seconds``): a request that comes in
  during one waits for it, so they make much of the unloaded tail. The allocator is frozen during the timed
  runs (below), so the grant check's request stays pending and its build step hardly runs there: its cost
  in normal running is not in these figures.

Every round measures every side, in reverse order every other round, and each ratio is the median of the
rounds' own ratios (``adserver.sidebyside``).

The control plane (its collector and chdb are not part of the endpoint) is frozen during the timed runs, as
in ``beacons``. An edge holds allowance for its recent spend rate over a quarter lease, so each round first
loads both edges briefly with the allocator running (``refill``). A run that did not fill at least 95% of
its ad requests is an error: a no-fill is cheap and would flatter the ratio. ``cpu_us_per_request`` shows
where each side's CPU went.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from adserver.bench import _WRK_LUA, CpuMeter, LoadRun, run_wrk
from adserver.faults import pause, resume
from adserver.processes import ProcessGroup, adserver_argv, free_port, start_redis, wait_ready
from adserver.scrape import samples
from adserver.sidebyside import in_turn, median_ratio
from adserver.stack import LocalStack

KEYWORDS = tuple(f"httpkw{i}" for i in range(20))


def ad_paths(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        params = {"placement": f"p{rng.randrange(50)}", "format": "300x250", "keywords": rng.choice(KEYWORDS),
                  "slots": "1"}
        if i % 4 == 0:
            params["user"] = f"u{rng.randrange(10_000)}"
        paths.append(f"/v1/ads?{urlencode(params)}")
    return paths


def ad_outcomes(edge_url: str) -> dict[str, int]:
    """The edge's ad requests by outcome (filled, no_fill, ...), from its Prometheus counters."""
    text = httpx.get(f"{edge_url}/metrics", timeout=10).text
    return {outcome: int(n) for outcome, n in samples(text, "adserver_ad_requests_total", "outcome").items()}


def loop_holds(edge_url: str) -> dict[str, tuple[int, float]]:
    """``parse_loop_holds`` of the edge's metrics now."""
    return parse_loop_holds(httpx.get(f"{edge_url}/metrics", timeout=10).text)


def parse_loop_holds(metrics: str) -> dict[str, tuple[int, float]]:
    """How many steps each background task of the edge ran and their seconds in all, from its
    ``adserver_edge_loop_hold_seconds`` histogram: the time the event loop was theirs and not the requests'."""
    counts = samples(metrics, "adserver_edge_loop_hold_seconds_count", "task")
    sums = samples(metrics, "adserver_edge_loop_hold_seconds_sum", "task")
    return {task: (int(count), sums[task]) for task, count in counts.items()}


def hold_rates(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]],
               seconds: float) -> dict[str, dict[str, float]]:
    """Per task, between two ``loop_holds``: steps a second, milliseconds of the event loop a second, and the
    mean step in microseconds."""
    rates = {}
    for task, (count, total) in after.items():
        steps, held = count - before.get(task, (0, 0.0))[0], total - before.get(task, (0, 0.0))[1]
        rates[task] = {"steps_per_s": round(steps / seconds, 1), "ms_per_s": round(held * 1000 / seconds, 2),
                       "mean_us": round(held * 1e6 / steps) if steps else 0}
    return rates


def refill(urls: tuple[str, ...], paths_file: Path, script: Path, connections: int) -> None:
    """Load each edge briefly with the allocator running: an edge holds allowance for its recent spend rate
    over a quarter lease, so after this it holds enough for the timed runs that follow with the control
    plane frozen; then give the grant loops a moment to top up."""
    for url in urls:
        run_wrk(url, duration_s=2, connections=connections, paths_file=paths_file, script=script)
    time.sleep(2.0)


def _warm(url: str, paths: list[str]) -> None:
    """Until the edge fills: its first allowance grants arrive after the snapshot."""
    with httpx.Client(timeout=10) as client:
        for _ in range(300):
            if client.get(url + paths[0]).status_code == 200:
                return
        raise RuntimeError(f"{url} never filled an ad request")


def bench_http(*, duration_s: float, connections: int, rounds: int, say: Callable[[str], None], workdir: Path,
               **_: Any) -> dict[str, Any]:
    script = workdir / "walk.lua"
    script.write_text(_WRK_LUA)
    paths_file = workdir / "ads.txt"
    paths = ad_paths(20_000)
    paths_file.write_text("\n".join(paths) + "\n")
    helpers = ProcessGroup(workdir)
    try:
        redis, redis_url = start_redis(helpers)
        env = {"ADSERVER_EDGE_REDIS_URL": redis_url, "ADSERVER_EDGE_RATE_PER_IP": "0"}
        say("starting nats-server, control plane, Redis, two edges (decision events on / off) and the baseline")
        with LocalStack(regions=("eu",), edge_env=env, data_dir=workdir / "stack") as stack:
            stack.edge_env = {**env, "ADSERVER_EDGE_DECISION_EVENTS": "false"}
            quiet = stack.start_edge("eu", "pop2")
            wait_ready(f"{quiet.url}/readyz", quiet.proc, timeout=60)
            port = free_port()
            baseline = helpers.start("baseline", adserver_argv("baseline", "--port", str(port), "--workers", "1"))
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(f"{base_url}/hello", baseline, timeout=30)
            token = stack.create_advertiser("bench-http")[1]
            for keyword in KEYWORDS:
                stack.launch_campaign(token, keyword, max_bid_micros=1_000_000, daily_budget_micros=10**12,
                                      total_budget_micros=10**12)
            edge_url = stack.edges[0].url
            for url in (edge_url, quiet.url):
                _warm(url, paths)
            runs: dict[str, list[LoadRun]] = {"hello": [], "ads": [], "ads_no_events": []}
            unloaded: dict[str, list[LoadRun]] = {"json": [], "ads": []}
            holds: list[dict[str, dict[str, float]]] = []  # the edge's background steps in each unloaded ads run
            assert stack.control_plane is not None and stack.nats is not None
            meter = CpuMeter({"baseline": baseline.popen.pid, "edge": stack.edges[0].proc.popen.pid,
                              "edge_no_events": quiet.proc.popen.pid, "nats-server": stack.nats.popen.pid,
                              "control-plane": stack.control_plane.popen.pid, "redis": redis.popen.pid})
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
            # Ad outcomes over the timed runs only (the warm-up and refill runs are left out).
            outcomes: dict[str, dict[str, int]] = {edge_url: {}, quiet.url: {}}
            for r in range(rounds):
                refill((edge_url, quiet.url), paths_file, script, connections)
                before_round = {url: ad_outcomes(url) for url in outcomes}
                pause(stack.control_plane)
                try:
                    measured = (("hello", f"{base_url}/hello", None), ("ads", edge_url, paths_file),
                                ("ads_no_events", quiet.url, paths_file))
                    for name, url, walk in in_turn(r, measured):
                        before = meter.read()
                        runs[name].append(run_wrk(url, duration_s=duration_s, connections=connections,
                                                  paths_file=walk, script=script))
                        cpu[name].append(meter.per_request_us(before, meter.read(), runs[name][-1].requests))
                    quiet_pair = (("json", f"{base_url}/json", None), ("ads", edge_url, paths_file))
                    for name, url, walk in in_turn(r, quiet_pair):
                        held = loop_holds(edge_url) if name == "ads" else {}
                        started = time.monotonic()
                        unloaded[name].append(run_wrk(url, duration_s=max(2.0, duration_s / 2), connections=1,
                                                      paths_file=walk, script=script))
                        if name == "ads":
                            holds.append(hold_rates(held, loop_holds(edge_url), time.monotonic() - started))
                finally:
                    resume(stack.control_plane)
                say(f"round {r + 1}: /hello {runs['hello'][-1].rps:,.0f} req/s, /v1/ads "
                    f"{runs['ads'][-1].rps:,.0f}, without decision events {runs['ads_no_events'][-1].rps:,.0f}; "
                    f"unloaded p99 /json {unloaded['json'][-1].p99_ms:.2f} ms, /v1/ads "
                    f"{unloaded['ads'][-1].p99_ms:.2f} ms; meanwhile the edge's background steps held its event loop "
                    + ", ".join(f"{task} {h['steps_per_s']:.0f}/s x {h['mean_us']:.0f} us"
                                for task, h in sorted(holds[-1].items())))
                for url, counts in outcomes.items():
                    for outcome, n in ad_outcomes(url).items():
                        counts[outcome] = counts.get(outcome, 0) + n - before_round[url].get(outcome, 0)
    finally:
        helpers.stop_all()
    filled = sum(o.get("filled", 0) for o in outcomes.values())
    answered = sum(sum(o.values()) for o in outcomes.values())
    say(f"ad requests by outcome: {outcomes}")
    if answered == 0 or filled / answered < 0.95:
        # A no-fill (204) is cheap: a run that mostly did not fill measured the wrong thing.
        raise RuntimeError(f"only {filled:,} of {answered:,} ad requests filled: {outcomes}")

    def rates(name: str) -> list[float]:
        return [run.rps for run in runs[name]]

    def p99s(name: str) -> list[float]:
        return [run.p99_ms for run in unloaded[name]]

    def rps(name: str) -> float:
        return statistics.median(rates(name))

    def p99(name: str) -> float:
        return statistics.median(p99s(name))

    errors = sum(run.status_errors + run.socket_errors for group in (runs, unloaded) for rs in group.values()
                 for run in rs)
    return {
        # Each round's own ratio, their median (``adserver.sidebyside``); the rates and p99s below are medians
        # of each side over the rounds.
        "http_ratio_vs_hello": round(median_ratio(rates("ads"), rates("hello")), 3),
        "event_tax": round(median_ratio(rates("ads"), rates("ads_no_events")), 3),
        "p99_ratio_vs_json": round(median_ratio(p99s("ads"), p99s("json")), 2),
        "ads_rps": round(rps("ads")), "ads_no_events_rps": round(rps("ads_no_events")),
        "hello_rps": round(rps("hello")),
        "ads_unloaded_p99_ms": p99("ads"), "json_unloaded_p99_ms": p99("json"),
        "http_errors": errors,
        "fill_rate": round(filled / answered, 4),
        "cpu_us_per_request": {side: {name: statistics.median(run[name] for run in rs) for name in rs[0]}
                               for side, rs in cpu.items()},
        # What holds the edge's event loop between unloaded requests (``edge.state``: the control tick,
        # pacing, the grant check, the spend sync), per task the median over rounds; a request that comes in
        # during a step waits for it.
        "unloaded_loop_hold": {task: {key: statistics.median(h[task][key] for h in holds if task in h)
                                      for key in ("steps_per_s", "ms_per_s", "mean_us")}
                               for task in sorted({t for h in holds for t in h})},
        "runs": {name: [asdict(run) for run in rs] for name, rs in runs.items()},
        "unloaded_runs": {name: [asdict(run) for run in rs] for name, rs in unloaded.items()},
    }
