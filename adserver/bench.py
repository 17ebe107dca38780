"""``adserver bench``: throughput benchmarks as ratios, each side measured in the same run on the same machine.

The load generator is wrk (C, one thread), so the client is never what limits a Python server; the yardstick
is ``adserver baseline`` (do-nothing Starlette endpoints on the edge's exact granian configuration). Every
round measures both sides back to back, which goes first alternating, and a ratio is the median of the
rounds' own ratios (``adserver.sidebyside``), so drift (thermal, a noisy neighbour) hits both sides.

Benchmarks:

- ``beacons``: ``/v1/track/impression`` with a distinct, validly signed token per request (a replayed token
  would take the cheap duplicate path) and the invalid-traffic rules on, against ``/hello``. Each beacon is
  answered only after JetStream acknowledged its event (group-committed: ``replication.publisher``), so its
  throughput is concurrency / commit latency: both sides get ``--connections`` (256 by default, a PoP's
  browsers are many). The control plane (which embeds the collector and
  chdb in this one-machine setup; production runs them elsewhere) is paused during the timed runs so the two
  cores go to the endpoint and nats-server; afterwards every answered beacon must be stored exactly once.
- ``decisions``: the auction with budget accounting (allowance, pacing throttle, reservations, the 100 ms
  CRDT and pacing tick) against the bare auction, in-process (``adserver.bench_budget``).
- ``auction``: single-request auction latency percentiles at 10,000 and 100,000 campaigns, in-process
  (``adserver.bench_auction``).
- ``pctr``: the click model's log loss and calibration against a hidden true click model, and the revenue
  and CTR of ranking by its pCTR against random and highest-bid picks (``adserver.bench_pctr``).
- ``variants``: creative optimization's Thompson sampling against a hidden truth of which headline, image
  and call to action get clicked per device, against random, as-written and device-blind picks
  (``adserver.bench_variants``).
- ``http``: ``/v1/ads`` over HTTP against ``/hello`` and a no-work JSON endpoint, and with decision events
  on against off (``adserver.bench_http``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil

from adserver.bench_auction import bench_auction
from adserver.bench_budget import bench_decisions
from adserver.bench_pctr import bench_pctr
from adserver.bench_variants import bench_variants
from adserver.faults import pause, resume
from adserver.processes import ProcessGroup, adserver_argv, free_port, start_redis, wait_ready
from adserver.sidebyside import in_turn, median_ratio
from adserver.stack import LocalStack
from edge.tokens import SigningKeys, sign, verify

# One wrk thread walks a list of request paths (each used once) and prints a JSON summary.
_WRK_LUA = r"""
local paths = {}
local i = 0
init = function(args)
  if args[1] then for line in io.lines(args[1]) do paths[#paths + 1] = line end end
end
request = function()
  if #paths == 0 then return wrk.request() end
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, '
    .. '"socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadRun:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found: `make bench` installs it (Debian package wrk)")
    return found


class CpuMeter:
    """CPU seconds used by named process trees (a granian master and its workers count as one), so a ratio
    comes with where each side's time went. wrk, a child of this process, is read from ``os.times``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            total = 0.0
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            out[name] = total
        t = os.times()
        out["wrk"] = t.children_user + t.children_system
        return out

    @staticmethod
    def per_request_us(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
        used = {name: (after[name] - before[name]) * 1e6 / max(1, requests) for name in after}
        return {**{k: round(v, 1) for k, v in used.items()}, "total": round(sum(used.values()), 1)}


def run_wrk(url: str, *, duration_s: float, connections: int, paths_file: Path | None, script: Path) -> LoadRun:
    import subprocess

    argv = [wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
            "-s", str(script), url]
    if paths_file is not None:
        argv += ["--", str(paths_file)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-500:] or out.stdout[-500:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    return LoadRun(requests=raw["requests"], rps=raw["requests"] / (raw["duration_us"] / 1e6),
                   p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
                   status_errors=raw["status_errors"], socket_errors=raw["socket_errors"])


def _impression_paths(edge_url: str, keyword: str, keys: SigningKeys, count: int) -> list[str]:
    """``count`` distinct, validly signed impression paths. One real ad request gives the claims the ad path
    signs (campaign, creative, price, IVT claims); each path re-signs them under a new auction and impression
    id with the edge's key. Minting through ad requests instead ran at ~400 tokens/s, which made a
    saturating run need tens of minutes of preparation."""
    params = {"placement": "bench", "format": "300x250", "keywords": keyword, "slots": "1"}
    deadline = time.monotonic() + 30
    while True:  # launch_campaign waited for the snapshot; the edge fills once its first grant arrives
        r = httpx.get(f"{edge_url}/v1/ads", params=params, timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if r.status_code != 200:
        raise RuntimeError(f"ad request answered {r.status_code}: {r.text[:200]}")
    url = urlsplit(r.json()["ads"][0]["impression_url"])
    template = verify(parse_qs(url.query)["t"][0], keys, now_s=time.time(), kind="i")
    if not template.ok:
        raise RuntimeError(f"the edge's impression token does not verify: {template.reason}")
    paths = []
    for _ in range(count):
        auction = secrets.token_hex(12)
        claims = {**template.claims, "auc": auction, "imp": f"{auction}-0"}
        paths.append(f"{url.path}?t={sign(claims, keys)}")
    return paths


def bench_beacons(*, duration_s: float, connections: int, rounds: int, say: Callable[[str], None],
                  workdir: Path) -> dict[str, Any]:
    script = workdir / "walk.lua"
    script.write_text(_WRK_LUA)
    helpers = ProcessGroup(workdir)
    try:
        # The region's Redis for the IVT flood counters, as in production.
        redis_proc, redis_url = start_redis(helpers) if shutil.which("redis-server") else (None, "")
        # One client address carries what a PoP gets from many browsers: its beacons are counted, but neither
        # flood verdicts nor the per-IP request limit apply.
        env = {"ADSERVER_EDGE_IVT_ENABLED": "true", "ADSERVER_EDGE_REDIS_URL": redis_url,
               "ADSERVER_EDGE_IVT_IP_LIMIT": "0", "ADSERVER_EDGE_RATE_PER_IP": "0"}
        say(f"starting nats-server, control plane, one edge (1 worker, IVT on, Redis {'on' if redis_url else 'off'})"
            " and the baseline app")
        with LocalStack(regions=("eu",), edge_env=env, data_dir=workdir / "stack") as stack:
            port = free_port()
            baseline = helpers.start("baseline", adserver_argv("baseline", "--port", str(port), "--workers", "1"))
            hello_url = f"http://127.0.0.1:{port}/hello"
            wait_ready(hello_url, baseline, timeout=30)
            token = stack.create_advertiser("bench")[1]
            stack.launch_campaign(token, "benchbeacon", max_bid_micros=1_000_000)
            probe = run_wrk(hello_url, duration_s=2, connections=connections, paths_file=None, script=script)
            need = int(probe.rps * duration_s * rounds * 1.2) + connections * 10
            say(f"baseline probe {probe.rps:,.0f} req/s; minting {need:,} signed impression tokens")
            paths = _impression_paths(stack.edges[0].url, "benchbeacon", SigningKeys.parse(stack.signing_keys), need)
            chunk = len(paths) // rounds
            hello_runs: list[LoadRun] = []
            beacon_runs: list[LoadRun] = []
            assert stack.control_plane is not None and stack.nats is not None
            pids = {"baseline": baseline.popen.pid, "edge": stack.edges[0].proc.popen.pid,
                    "nats-server": stack.nats.popen.pid, **({"redis": redis_proc.popen.pid} if redis_proc else {})}
            meter = CpuMeter(pids)
            cpu: dict[str, list[dict[str, float]]] = {"hello": [], "beacons": []}
            pause(stack.control_plane)  # the collector and chdb: not part of the endpoint under test
            try:
                for r in range(rounds):
                    paths_file = workdir / f"beacons-{r}.txt"
                    paths_file.write_text("\n".join(paths[r * chunk:(r + 1) * chunk]) + "\n")
                    sides = (("hello", "/hello", hello_url, None, hello_runs),
                             ("beacons", "/v1/track/impression", stack.edges[0].url, paths_file, beacon_runs))
                    for side, label, url, walk, side_runs in in_turn(r, sides):
                        before = meter.read()
                        side_runs.append(run_wrk(url, duration_s=duration_s, connections=connections,
                                                 paths_file=walk, script=script))
                        cpu[side].append(meter.per_request_us(before, meter.read(), side_runs[-1].requests))
                        say(f"round {r + 1}: {label} {side_runs[-1].rps:,.0f} req/s; CPU us per request "
                            f"{cpu[side][-1]}")
                    if beacon_runs[-1].requests > chunk:
                        raise RuntimeError("ran out of distinct tokens: replays would flatter the beacon side")
            finally:
                resume(stack.control_plane)
            answered = sum(run.requests - run.status_errors - run.socket_errors for run in beacon_runs)
            say("waiting for the collector to store every answered beacon")
            caught_up, _, stats = stack.wait_stored(timeout=180)
            stored = int(stats["store"]["by_type"].get("impression", 0))
    finally:
        helpers.stop_all()
    hello_rps = statistics.median(run.rps for run in hello_runs)
    beacon_rps = statistics.median(run.rps for run in beacon_runs)
    return {
        "beacon_ratio_vs_hello": round(median_ratio([r.rps for r in beacon_runs], [r.rps for r in hello_runs]), 3),
        "beacon_rps": round(beacon_rps), "hello_rps": round(hello_rps),
        "beacon_p99_ms": statistics.median(run.p99_ms for run in beacon_runs),
        "hello_p99_ms": statistics.median(run.p99_ms for run in hello_runs),
        # CPU microseconds per request by process, medians over the rounds: with both sides saturating the
        # cores, the ratio is about hello's total over the beacon's, and this says which process holds it.
        "cpu_us_per_request": {side: {name: statistics.median(run[name] for run in runs) for name in runs[0]}
                               for side, runs in cpu.items()},
        "beacon_errors": sum(run.status_errors + run.socket_errors for run in beacon_runs),
        "beacons_answered": answered, "impressions_stored": stored, "stored_caught_up": caught_up,
        # wrk stops with up to ``connections`` requests in flight per run: the edge recorded those too, so
        # stored may exceed answered by that much, no more.
        "every_answered_beacon_stored_once": answered <= stored <= answered + rounds * connections,
        "runs": {"hello": [asdict(r) for r in hello_runs], "beacons": [asdict(r) for r in beacon_runs]},
    }


def _bench_http(**kw: Any) -> dict[str, Any]:
    from adserver.bench_http import bench_http  # it imports this module's wrk helpers

    return bench_http(**kw)


def _bench_accounting(**kw: Any) -> dict[str, Any]:
    from adserver.bench_accounting import bench_accounting  # it imports the handler bench's edge

    return bench_accounting(**kw)


def _bench_compile(**kw: Any) -> dict[str, Any]:
    from adserver.bench_compile import bench_compile

    return bench_compile(**kw)


def _bench_handler(**kw: Any) -> dict[str, Any]:
    from adserver.bench_handler import bench_handler  # via bench_http, it imports this module's helpers

    return bench_handler(**kw)


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {"beacons": bench_beacons, "decisions": bench_decisions,
                                                       "auction": bench_auction, "pctr": bench_pctr,
                                                       "variants": bench_variants, "http": _bench_http,
                                                       "handler": _bench_handler, "accounting": _bench_accounting,
                                                       "compile": _bench_compile}
TARGETS = {"beacon_ratio_vs_hello": (">=", 0.5), "every_answered_beacon_stored_once": (">=", 1),
           "decision_ratio_budget_on_vs_off": (">=", 0.9),
           "auction_p99_us_10k": ("<=", 100), "auction_p99_us_100k": ("<=", 1000),
           "pctr_logloss_ratio": ("<=", 0.9), "pctr_calibration_error": ("<=", 0.05),
           "http_ratio_vs_hello": (">=", 0.2), "event_tax": (">=", 0.85), "p99_ratio_vs_json": ("<=", 2)}



def _meets(value: float, op: str, target: float) -> bool:
    return value >= target if op == ">=" else value <= target


def run_bench(*, report: str | None, duration_s: float, connections: int, rounds: int, only: str | None,
              auction_sizes: tuple[int, ...] | None = None) -> int:
    names = [n.strip() for n in only.split(",")] if only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="adserver-bench-") as tmp:
        for name in names:
            workdir = Path(tmp) / name
            workdir.mkdir()
            extra = {"sizes": auction_sizes} if name == "auction" and auction_sizes else {}
            results[name] = BENCHMARKS[name](duration_s=duration_s, connections=connections, rounds=rounds,
                                             say=say, workdir=workdir, **extra)
    failed = 0
    print(f"\n{'metric':<28} {'value':>12}  {'target':>10}  verdict")
    for name in names:
        for key, value in results[name].items():
            if isinstance(value, dict | list):  # per-round detail: in the JSON report, not the table
                continue
            op, target = TARGETS.get(key, ("", None))
            verdict = "" if target is None else ("ok" if _meets(float(value), op, target) else "MISSED")
            failed += verdict == "MISSED"
            shown = f"{value:,.3f}" if isinstance(value, float) else f"{value}"
            print(f"{key:<28} {shown:>12}  {op + ' ' + str(target) if target is not None else '':>10}  {verdict}")
    if report:
        Path(report).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nreport written to {report}")
    return 1 if failed else 0
