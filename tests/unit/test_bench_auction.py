"""The auction benchmark's synthetic inventory and its measurement: shaped as documented, and it measures."""

from __future__ import annotations

from collections import Counter

from adserver.bench_auction import PLACEMENTS, bench_auction, inventory, latency_summary, requests


def test_inventory_is_seeded_and_mixes_targeting():
    a, b = inventory(2_000), inventory(2_000)
    assert a == b  # same seed, same campaigns: runs compare like with like
    run_of_network = sum(1 for c in a if not c.placements) / len(a)
    assert 0.3 < run_of_network < 0.5  # ~40% name no placement
    assert 0.6 < sum(1 for c in a if c.keywords) / len(a) < 0.8
    kinds = Counter(c.bid_type for c in a)
    assert kinds["cpm"] > kinds["cpc"] > kinds["cpa"] > 0


def test_placements_are_skewed_like_real_traffic():
    counts = Counter(r.placement for r in requests(5_000))
    top = counts.most_common(1)[0][1]
    assert top > 20 * (5_000 / PLACEMENTS)  # the head placement far above a uniform share
    assert len(counts) > 200  # and a long tail


def test_bench_reports_latency_keys_for_each_size(tmp_path):
    said: list[str] = []
    out = bench_auction(duration_s=0.2, rounds=1, say=said.append, workdir=tmp_path, sizes=(1_000,))
    assert out["auction_p99_us_1k"] >= out["auction_p50_us_1k"] > 0
    run = out["runs"]["1k"]["click_model"][0]
    assert out["auction_p99_of_request_medians_us_1k"] == run["p99_of_medians_us"]  # the key is reported
    assert run["requests"] > 10
    assert out["runs"]["1k"]["priors_only"][0]["mean_candidates"] > 0
    assert out["auction_p99_us_1k_priors_only"] > 0
    assert any("1,000 campaigns" in line for line in said)
    # The edge-side figures come from a real decode in a fresh process: nonzero, and growing with size.
    assert out["snapshot_mb_1k"] > 0 and out["edge_load_s_1k"] > 0 and out["edge_memory_mb_1k"] > 0
    assert out["edge_gc_pause_ms_1k"] > 0 and out["edge_gc_pause_frozen_ms_1k"] >= 0
    assert out["edge_gc_during_load_ms_1k"] >= 0 and out["edge_load_no_full_collections_s_1k"] > 0
    assert out["auction_p99_over_p50_1k"] >= 1 and out["machine_p99_over_p50_1k"] >= 1
    assert out["machine_ns_per_loop_1k"] == out["runs"]["1k"]["machine_spread"][0]["ns_per_loop"] > 0
    assert out["machine_interruptions_per_s_1k"] >= 0 and 0 <= out["machine_interrupted_share_1k"] < 1
    bigger = bench_auction(duration_s=0.2, rounds=1, say=said.append, workdir=tmp_path, sizes=(10_000,))
    assert bigger["snapshot_mb_10k"] > 3 * out["snapshot_mb_1k"]  # both carry the same 0.5 MB model
    assert bigger["edge_memory_mb_10k"] > 2 * out["edge_memory_mb_1k"]


def test_the_p99_of_request_medians_sees_slow_requests_but_not_jittered_samples():
    """200 requests timed 10 times each: two always take 500 us, the rest 50 us, and 30 samples of fast
    requests were jittered to 2,000 us. The p99 of all samples lands on the jitter; the p99 of each request's
    median on the slow requests."""
    by_request = [[500_000] * 10 if r < 2 else [50_000] * 10 for r in range(200)]
    for r in range(2, 32):
        by_request[r][r % 10] = 2_000_000
    times = [t for ts in by_request for t in ts]
    summary = latency_summary(times, by_request)
    assert summary == {"p50_us": 50.0, "p99_us": 2000.0, "p99_of_medians_us": 500.0, "max_us": 2000.0,
                       "requests": 2000}


def test_the_machine_spread_times_a_workload_near_the_p50_it_is_given():
    """Sized from a probe to take about the auction's p50: the same size asked twice comes out alike, and
    ten times the size takes several times as long (how close depends on the machine: no bound on it)."""
    from adserver.bench_auction import machine_spread

    small = machine_spread(20.0, 0.2)
    big = machine_spread(200.0, 0.2)
    assert small["p99_us"] >= small["p50_us"] > 0 and small["p99_over_p50"] >= 1
    assert big["p50_us"] > 3 * small["p50_us"]
    # The yardstick is per loop step, so the workload's size does not enter it: some tens of nanoseconds
    # (56 on a 2-core machine here), not microseconds (a per-call figure) or fractions of one.
    for spread in (small, big):
        assert 1 < spread["ns_per_loop"] < 1_000


def test_clock_gaps_counts_the_interruptions_of_a_run_of_readings():
    """Readings 1 us apart for one second, but for three gaps of 20, 40 and 100 us: those three, at three a
    second, 160 us of the second; gaps under the threshold are the loop's own pace."""
    from adserver.bench_auction import clock_gaps

    readings, t = [], 0
    while t < 1_000_000_000:
        readings.append(t)
        t += {100_000_000: 20_000, 500_000_000: 40_000, 900_000_000: 100_000}.get(t, 1_000)
    gaps = clock_gaps(readings, threshold_us=5.0)
    assert gaps == {"per_s": 3.0, "share": 0.0002, "median_us": 40.0, "p90_us": 100.0}
    assert clock_gaps(readings, threshold_us=50.0)["per_s"] == 1.0
    assert clock_gaps(readings[:1000], threshold_us=5.0) == {"per_s": 0.0, "share": 0.0, "median_us": 0.0,
                                                             "p90_us": 0.0}
