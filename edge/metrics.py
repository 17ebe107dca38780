"""Prometheus metrics of an edge PoP.

A registry per app, so tests can build several apps in one process. With several granian workers each
worker is its own process: ``adserver edge`` then sets PROMETHEUS_MULTIPROC_DIR, every worker writes its
values there, and a scrape (which lands on one worker) reports the sum over all live workers instead of
one worker's counters at random.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector


@dataclass(frozen=True, slots=True)
class EdgeMetrics:
    registry: CollectorRegistry
    requests: Counter
    filled: Counter  # requests' child for outcome "filled", looked up once instead of per request
    fills: Counter
    no_fill: Counter
    filtered: Counter
    decision_seconds: Histogram
    loop_hold: Histogram
    beacons: Counter
    events: Gauge
    snapshot_version: Gauge
    snapshot_age: Gauge
    allowance: Gauge
    ivt_store: Gauge
    profile_store: Counter


def build_metrics() -> EdgeMetrics:
    r = CollectorRegistry()
    requests = Counter("adserver_ad_requests", "ad requests by outcome", ["outcome"], registry=r)
    return EdgeMetrics(
        registry=r,
        requests=requests,
        filled=requests.labels("filled"),
        fills=Counter("adserver_ads_served", "ads returned (one per filled slot)", registry=r),
        no_fill=Counter("adserver_no_fill", "requests with no ad, by reason", ["reason"], registry=r),
        filtered=Counter("adserver_candidates_filtered", "candidates dropped, by reason", ["reason"], registry=r),
        decision_seconds=Histogram(
            "adserver_decision_seconds", "auction time inside the handler", registry=r,
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        ),
        # A background step holds the event loop: every request that comes in meanwhile waits for it. What the
        # unloaded tail of /v1/ads is made of (``adserver bench --only http`` prints it).
        loop_hold=Histogram(
            "adserver_edge_loop_hold_seconds", "event loop time of one step of a background task, by task",
            ["task"], registry=r,
            buckets=(0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
        ),
        beacons=Counter("adserver_beacons", "beacons by kind and result", ["kind", "result"], registry=r),
        events=Gauge("adserver_events", "event publisher counters", ["state"], registry=r,
                     multiprocess_mode="livesum"),
        snapshot_version=Gauge("adserver_snapshot_version", "version of the snapshot being served", registry=r,
                               multiprocess_mode="livemin"),
        snapshot_age=Gauge("adserver_snapshot_age_seconds", "age of the snapshot being served", registry=r,
                           multiprocess_mode="livemax"),
        allowance=Gauge("adserver_allowance_micros", "budget held by the workers, summed over campaigns",
                        ["state"], registry=r, multiprocess_mode="livesum"),
        ivt_store=Gauge("adserver_ivt_store", "IVT store calls answered, failed, skipped (fail-open); list reloads",
                        ["state"], registry=r, multiprocess_mode="livesum"),
        profile_store=Counter("adserver_profile_store", "frequency-cap store calls by operation and result "
                                "(ok, failed; failed reads are served by the fail-open or fail-closed policy; evicted: "
                                "fields a full profile gave up for new ones)",
                                ["op", "result"], registry=r),
    )


def render(metrics: EdgeMetrics) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(metrics.registry)
