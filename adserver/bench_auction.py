"""``adserver bench --only auction``: in-process auction latency (retrieval + scoring + pricing) at 10,000 and
100,000 campaigns (``--auction-sizes`` for others, such as 1,000,000), as percentiles of single requests; and
per size the snapshot's build time, its size on the wire, and the time and memory an edge process needs to
load it (measured in a fresh interpreter).

A seeded synthetic inventory shaped like real targeting: every campaign names some placements (or none:
run-of-network), one or two formats, countries for most, devices for some, a Zipf-distributed handful of
keywords, interests for a third, mixed CPM/CPC/CPA bids. Requests draw placement, format, geo, device and
keywords from the same distributions, so candidate counts grow with the inventory as they would. Each request
is timed alone (``perf_counter_ns``) against a ledger view that lets every campaign spend, and the budget
machinery is left out: it has its own benchmark (``decisions``). The headline figures score with a click model
the size of a trained one (``click_model``), as the edge does once the control plane has trained one; the
``_priors_only`` figures, in alternating rounds, rank by the creatives' prior CTRs as before any training.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from edge.auction import AdRequest, run_auction, warm_up
from replication.ctr_model import ClickModel
from replication.snapshot import Snapshot, SnapshotCampaign, SnapshotCreative, build_snapshot, encode_snapshot

SIZES = (10_000, 100_000)
FORMATS = ("300x250", "728x90", "320x50")
DEVICES = ("desktop", "mobile", "tablet")
COUNTRIES = tuple(f"C{i:02d}" for i in range(40))
PLACEMENTS = 2_000
KEYWORDS = 20_000
INTERESTS = 300


def _zipf(rng: random.Random, n: int, s: float = 1.1) -> int:
    """An index in [0, n) with a Zipf-like skew (a few popular values, a long tail): inverse CDF of a
    continuous power law, cheap enough for a million draws."""
    u = rng.random()
    return min(n - 1, int(((n ** (1 - s) - 1) * u + 1) ** (1 / (1 - s))) - 1)


def _campaign(rng: random.Random, i: int) -> SnapshotCampaign:
    bid_type = rng.choices(("cpm", "cpc", "cpa"), weights=(6, 3, 1))[0]
    bid = {"cpm": rng.randrange(500_000, 8_000_000), "cpc": rng.randrange(100_000, 2_000_000),
           "cpa": rng.randrange(2_000_000, 40_000_000)}[bid_type]
    formats = rng.sample(FORMATS, rng.choice((1, 1, 2)))
    creatives = tuple(SnapshotCreative(f"k{i}-{f}", f, "h", "https://cdn.example.com/a.png",
                                       "https://example.com/", "Go", 0.002 + rng.random() * 0.02)
                      for f in formats)
    return SnapshotCampaign(
        campaign_id=f"c{i:07d}", advertiser_id=f"a{i // 3}", revision=1, bid_type=bid_type,
        max_bid_micros=bid, daily_budget_micros=10**12, total_budget_micros=10**13, start_s=0, end_s=0,
        timezone="UTC", hours=frozenset(),
        countries=frozenset(rng.sample(COUNTRIES, rng.randrange(1, 6))) if rng.random() < 0.8 else frozenset(),
        geos=frozenset(),
        devices=frozenset(rng.sample(DEVICES, rng.randrange(1, 3))) if rng.random() < 0.4 else frozenset(),
        keywords=frozenset(f"kw{_zipf(rng, KEYWORDS)}" for _ in range(rng.randrange(1, 8)))
        if rng.random() < 0.7 else frozenset(),
        interests=frozenset(f"in{rng.randrange(INTERESTS)}" for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.3 else frozenset(),
        placements=frozenset(f"p{_zipf(rng, PLACEMENTS)}" for _ in range(rng.randrange(1, 10)))
        if rng.random() < 0.6 else frozenset(),
        prior_cvr=0.02, creatives=creatives, pacing="asap")


def inventory(n: int, seed: int = 1) -> list[SnapshotCampaign]:
    rng = random.Random(seed)
    return [_campaign(rng, i) for i in range(n)]


def requests(n: int, seed: int = 2) -> list[AdRequest]:
    rng = random.Random(seed)
    return [AdRequest(placement=f"p{_zipf(rng, PLACEMENTS)}", slots=rng.choice((1, 1, 2, 3)),
                      format=rng.choice(FORMATS), geo=rng.choice(COUNTRIES), device=rng.choice(DEVICES),
                      keywords=tuple(f"kw{_zipf(rng, KEYWORDS)}" for _ in range(rng.randrange(0, 4))),
                      interests=tuple(f"in{rng.randrange(INTERESTS)}" for _ in range(rng.randrange(0, 3))))
            for _ in range(n)]


def _percentile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _fixed_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def machine_spread(target_us: float, duration_s: float) -> dict[str, float]:
    """The machine's own share of the tail: the same timing loop around a fixed pure-Python workload sized
    to take about ``target_us`` (the auction's p50), and its p99 over its p50. Nothing in it varies, so
    whatever spreads its samples (other processes, the hypervisor, interrupts) spreads the auction's too.
    ``ns_per_loop``: what one of the workload's loop steps (``total += i``) took, a yardstick of the machine's
    speed measured the same way on every machine, so that absolute microseconds measured on different
    machines can be set side by side."""
    clock = time.perf_counter_ns
    probe = []
    for _ in range(200):
        t0 = clock()
        _fixed_work(1_000)
        probe.append(clock() - t0)
    n = max(1, int(target_us * 1_000 / (statistics.median(probe) / 1_000)))
    times: list[int] = []
    deadline = clock() + int(duration_s * 1e9)
    while True:
        t0 = clock()
        _fixed_work(n)
        t1 = clock()
        times.append(t1 - t0)
        if t1 >= deadline:
            break
    times.sort()
    p50, p99 = _percentile(times, 0.50), _percentile(times, 0.99)
    return {"p50_us": round(p50 / 1000, 1), "p99_us": round(p99 / 1000, 1), "p99_over_p50": round(p99 / p50, 3),
            "ns_per_loop": round(statistics.median(probe) / 1_000, 2)}


def machine_interruptions(duration_s: float, threshold_us: float = 5.0) -> dict[str, float]:
    """How often the machine takes the CPU away: a loop that does nothing but read the clock for
    ``duration_s``, and the gaps between two readings of at least ``threshold_us`` (``clock_gaps``). Any
    timed piece of work is hit by them in proportion to its length, and its caches are cold after one, so a
    50 us auction's p99 carries them on a machine that has many (1,300 a second here on 2026-11-30, a
    one-off reading of this probe)."""
    clock = time.perf_counter_ns
    readings = []
    deadline = clock() + int(duration_s * 1e9)
    while True:
        t = clock()
        readings.append(t)
        if t >= deadline:
            break
    return clock_gaps(readings, threshold_us)


def clock_gaps(readings: list[int], threshold_us: float) -> dict[str, float]:
    """Of a run of clock readings (nanoseconds), the gaps of at least ``threshold_us``: how many a second,
    the share of the time they took, and their median and p90 in microseconds."""
    limit = threshold_us * 1000
    gaps = sorted(b - a for a, b in pairwise(readings) if b - a >= limit)
    span_s = max(1e-9, (readings[-1] - readings[0]) / 1e9)
    return {"per_s": round(len(gaps) / span_s, 1), "share": round(sum(gaps) / 1e9 / span_s, 4),
            "median_us": round(_percentile(gaps, 0.5) / 1000, 1) if gaps else 0.0,
            "p90_us": round(_percentile(gaps, 0.9) / 1000, 1) if gaps else 0.0}


def measure(snapshot: Snapshot, reqs: list[AdRequest], duration_s: float) -> dict[str, float]:
    """Per-request latency percentiles (``latency_summary``; the list of requests is cycled, so each is timed
    several times) and mean candidates over ``duration_s`` of requests."""
    allowance = {c.campaign_id: 10**15 for c in snapshot.campaigns}
    rng = random.Random(3)
    now = 1_800_000_000.0
    times: list[int] = []
    by_request: list[list[int]] = [[] for _ in reqs]
    candidates = 0
    clock = time.perf_counter_ns
    deadline = clock() + int(duration_s * 1e9)
    i = 0
    while True:
        k = i % len(reqs)
        i += 1
        t0 = clock()
        result = run_auction(snapshot, reqs[k], now_s=now, rng=rng, allowance=allowance)
        t1 = clock()
        times.append(t1 - t0)
        by_request[k].append(t1 - t0)
        candidates += result.candidates
        if t1 >= deadline:
            break
    return {**latency_summary(times, by_request), "mean_candidates": round(candidates / len(times), 1)}


def latency_summary(times: list[int], by_request: list[list[int]]) -> dict[str, float]:
    """Percentiles (microseconds) of every sample (``times``, nanoseconds), and ``p99_of_medians_us``: the p99
    over the requests of each one's median sample: how slow the slow requests are, which the jitter the
    machine adds to a few samples of any request does not move."""
    ordered = sorted(times)
    medians = sorted(statistics.median(ts) for ts in by_request if ts)
    return {"p50_us": round(_percentile(ordered, 0.50) / 1000, 1),
            "p99_us": round(_percentile(ordered, 0.99) / 1000, 1),
            "p99_of_medians_us": round(_percentile(medians, 0.99) / 1000, 1),
            "max_us": round(ordered[-1] / 1000, 1), "requests": len(ordered)}


# Run in a fresh interpreter: how long an edge takes to load the snapshot it is sent, how much its memory
# grows by holding it (RSS after decoding, minus RSS before, both after a collection), how long the cyclic
# collections the decode sets off take (the edge holds off full ones: edge.state.no_full_collections),
# and how long a full collection stalls it then, before and after the edge freezes what is alive.
_EDGE_LOAD = """
import gc, json, sys, time
import psutil
from edge.state import freeze_long_lived, no_full_collections
from replication.snapshot import decode_snapshot
data = open(sys.argv[1], "rb").read()
gc.collect()
before = psutil.Process().memory_info().rss
during = [0.0, 0.0]
def timed(phase, info):
    if phase == "start":
        during[1] = time.perf_counter()
    else:
        during[0] += time.perf_counter() - during[1]
gc.callbacks.append(timed)
t0 = time.perf_counter()
snapshot = decode_snapshot(data)
load_s = time.perf_counter() - t0
gc.callbacks.remove(timed)
del data
gc.collect()
rss = psutil.Process().memory_info().rss - before
t0 = time.perf_counter()
gc.collect()
collect_s = time.perf_counter() - t0
freeze_long_lived()
t0 = time.perf_counter()
gc.collect()
frozen_s = time.perf_counter() - t0
gc.unfreeze()
del snapshot
gc.collect()
with no_full_collections():  # as the edge decodes
    t0 = time.perf_counter()
    snapshot = decode_snapshot(open(sys.argv[1], "rb").read())
    paused_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "rss_bytes": rss, "collect_s": collect_s, "frozen_collect_s": frozen_s,
                  "gc_during_load_s": during[0], "load_paused_s": paused_s}))
"""


def edge_load(snapshot_bytes: bytes, workdir: Path) -> dict[str, float]:
    path = workdir / "snapshot.bin"
    path.write_bytes(snapshot_bytes)
    try:
        out = subprocess.run([sys.executable, "-c", _EDGE_LOAD, str(path)], check=True, capture_output=True,
                             text=True, timeout=1800).stdout
    finally:
        path.unlink()
    return json.loads(out.strip().splitlines()[-1])


def size_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def click_model(campaigns: list[SnapshotCampaign], seed: int = 4) -> ClickModel:
    """A stand-in for a trained model, shaped like one: 60,000 nonzero weights of 2**18 (what FTRL's L1
    leaves of a model trained on a few hundred thousand impressions), and half the creatives seen 500 times
    (the rest still ride on their priors and exploration bonus)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(1 << 18, 60_000, replace=False)
    return ClickModel.from_sparse(1, 18, idx.tolist(), rng.normal(0.0, 0.5, len(idx)).tolist(),
                                  {c.creatives[0].creative_id: 500 for c in campaigns[::2]})


def bench_auction(*, duration_s: float, rounds: int, say: Callable[[str], None], workdir: Path,
                  sizes: tuple[int, ...] = SIZES, **_: Any) -> dict[str, Any]:
    reqs = requests(2_000)
    out: dict[str, Any] = {"runs": {}}
    for n in sizes:
        say(f"building a snapshot of {n:,} campaigns")
        campaigns = inventory(n)
        model = click_model(campaigns)
        t0 = time.perf_counter()
        snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000,
                                  click_model=model)
        build_s = time.perf_counter() - t0
        priors_only = dataclasses.replace(snapshot, click_model=None)
        # What an edge does when a snapshot arrives (``edge.state``): no timed request compiles a kernel.
        # Before, the first request of the first round compiled them (3.4 s, its ``max_us``, one-off).
        warm_up(snapshot)
        warm_up(priors_only)
        del campaigns
        encoded = encode_snapshot(snapshot)
        size_mb = len(encoded) / 1e6
        say(f"{n:,} campaigns: {size_mb:,.1f} MB on the wire; loading it in a fresh edge process")
        load = edge_load(encoded, workdir)
        del encoded
        # Alternating rounds, the click model on and off and the machine's own spread, so all three see the
        # same machine.
        runs, prior_runs, spread_runs = [], [], []
        for _ in range(rounds):
            runs.append(measure(snapshot, reqs, max(1.0, duration_s / 2)))
            prior_runs.append(measure(priors_only, reqs, max(1.0, duration_s / 2)))
            spread_runs.append(machine_spread(runs[-1]["p50_us"], max(1.0, duration_s / 4)))
        p99 = statistics.median(r["p99_us"] for r in runs)
        key = size_label(n)
        say(f"{n:,} campaigns: build {build_s:.1f}s, edge load {load['load_s']:.1f}s (of it "
            f"{load['gc_during_load_s']:.1f}s in collections; {load['load_paused_s']:.1f}s without full ones) and "
            f"{load['rss_bytes'] / 1e6:,.0f} MB, a full collection {load['collect_s'] * 1000:,.0f} ms "
            f"({load['frozen_collect_s'] * 1000:.2f} ms frozen); with the click model p50 "
            f"{statistics.median(r['p50_us'] for r in runs):,.0f} us, p99 {p99:,.0f} us; priors only p99 "
            f"{statistics.median(r['p99_us'] for r in prior_runs):,.0f} us; "
            f"{runs[0]['mean_candidates']:,.0f} candidates per request")
        out[f"auction_p99_us_{key}"] = p99
        out[f"auction_p50_us_{key}"] = statistics.median(r["p50_us"] for r in runs)
        out[f"auction_p99_of_request_medians_us_{key}"] = statistics.median(r["p99_of_medians_us"] for r in runs)
        out[f"auction_p99_us_{key}_priors_only"] = statistics.median(r["p99_us"] for r in prior_runs)
        # p99 over p50, the auction's and a fixed workload's of the same p50 (``machine_spread``): where the
        # two are close, the machine sets the p99, not the slow requests.
        out[f"auction_p99_over_p50_{key}"] = round(p99 / out[f"auction_p50_us_{key}"], 3)
        out[f"machine_p99_over_p50_{key}"] = statistics.median(r["p99_over_p50"] for r in spread_runs)
        out[f"machine_ns_per_loop_{key}"] = statistics.median(r["ns_per_loop"] for r in spread_runs)
        gaps = machine_interruptions(max(1.0, duration_s / 4))
        out[f"machine_interruptions_per_s_{key}"] = gaps["per_s"]
        out[f"machine_interrupted_share_{key}"] = gaps["share"]
        say(f"{n:,} campaigns: p99 over p50 {out[f'auction_p99_over_p50_{key}']:.2f}; a fixed workload of the same "
            f"p50 on this machine: {out[f'machine_p99_over_p50_{key}']:.2f}; a step of its loop "
            f"{out[f'machine_ns_per_loop_{key}']:.1f} ns; it was interrupted {gaps['per_s']:,.0f} times a second "
            f"(median {gaps['median_us']:.0f} us, p90 {gaps['p90_us']:.0f} us; {gaps['share']:.1%} of the time)")
        out[f"snapshot_build_s_{key}"] = round(build_s, 2)
        out[f"snapshot_mb_{key}"] = round(size_mb, 1)
        out[f"edge_load_s_{key}"] = round(load["load_s"], 2)
        out[f"edge_memory_mb_{key}"] = round(load["rss_bytes"] / 1e6, 1)
        out[f"edge_gc_pause_ms_{key}"] = round(load["collect_s"] * 1000, 1)
        out[f"edge_gc_pause_frozen_ms_{key}"] = round(load["frozen_collect_s"] * 1000, 2)
        out[f"edge_gc_during_load_ms_{key}"] = round(load["gc_during_load_s"] * 1000, 1)
        out[f"edge_load_no_full_collections_s_{key}"] = round(load["load_paused_s"], 2)
        out["runs"][key] = {"click_model": runs, "priors_only": prior_runs, "machine_spread": spread_runs}
    return out
