"""``adserver bench --only handler``: the edge's ``/v1/ads`` path in-process, without granian, wrk or NATS.

The HTTP benchmark (``http``) measures what the targets are about, but on a small machine shared by the
load generator, nats-server and three servers, its ratios move between runs by more than one change to the
handler is worth. This one drives the edge's real ASGI application (every
middleware, the handler, the auction, the budget ledger, token signing, the JSON) directly from a loop, one
request after another, and reports microseconds per request. What it leaves out is fixed per request for
any endpoint (granian's parsing and sending, the network) or done off the request path (JetStream: decision
events are encoded into their batch and handed to a publisher that only counts them; the control tick runs
every ``TICK_EVERY`` requests).

Same inventory and request mix as ``http``: twenty campaigns on their own keywords, one slot, every fourth
request with a user id, budgets no run exhausts, no click model, no caps. Rounds alternate with nothing
else; the table shows the median round (``handler_us_per_request``) and, over all rounds' requests timed one
by one, the p50 and p99 (``handler_p50_us``, ``handler_p99_us``); and the median control tick
(``handler_tick_us``).
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from collections.abc import Callable
from typing import Any

from adserver.bench_auction import _percentile
from adserver.bench_http import KEYWORDS, ad_paths
from edge.app import create_app
from edge.settings import EdgeSettings
from edge.state import EdgeState, new_state
from replication.calendar import local_day
from replication.snapshot import SnapshotCampaign, SnapshotCreative, build_snapshot

_SETTINGS = {"ADSERVER_EDGE_REGION": "eu", "ADSERVER_EDGE_SIGNING_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode()}
TICK_EVERY = 300  # requests between control ticks: 100 ms at 3,000 requests a second


class _CountingPublisher:
    """Takes the edge's event batches and only counts them: JetStream's cost is not the handler's (``http``
    measures it, and ``beacons`` the billing path)."""

    def __init__(self) -> None:
        self.messages = 0

    def submit(self, *_: Any, **__: Any) -> bool:
        self.messages += 1
        return True


def _campaigns() -> list[SnapshotCampaign]:
    return [SnapshotCampaign(
        campaign_id=f"c{i:02d}", advertiser_id=f"adv{i:02d}", revision=1, bid_type="cpm", max_bid_micros=1_000_000,
        daily_budget_micros=10**12, total_budget_micros=10**12, start_s=0, end_s=0, timezone="UTC",
        hours=frozenset(), countries=frozenset(), geos=frozenset(), devices=frozenset(),
        keywords=frozenset({keyword}), interests=frozenset(), placements=frozenset(), prior_cvr=0.02,
        creatives=(SnapshotCreative(creative_id=f"c{i:02d}-k1", format="300x250",
                                    landing_url="https://example.com/landing", prior_ctr=0.01,
                                    headline=f"headline {i}", image_url=f"https://cdn.example.com/{i}.png",
                                    cta="Learn more"),),
    ) for i, keyword in enumerate(KEYWORDS)]


def _edge() -> tuple[Any, EdgeState]:
    settings = EdgeSettings.from_env(_SETTINGS)
    app = create_app(settings)
    state = new_state(settings)
    app.state.edge = state  # what the lifespan does, without its NATS connection
    state.publisher = _CountingPublisher()  # type: ignore[assignment]
    now = settings.clock.now()
    campaigns = _campaigns()
    state.snapshot = build_snapshot(campaigns, version=1, created_ms=int(now * 1000), reserve_cpm_micros=100_000)
    state.ledger.renew(now + 10**9)
    for c in campaigns:
        state.ledger.grant(c.campaign_id, 10**12, exhausted=False, day=local_day(now, c.timezone))
    return app, state


def _scope(path: str, n: int) -> dict[str, Any]:
    """Request ``n`` of the mix, from a client address of its own (browsers, each far below the edge's
    per-IP rate limit, which stays on: its bucket lookup is part of every request)."""
    route, _, query = path.partition("?")
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": route, "raw_path": route.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"edge"), (b"user-agent", b"Mozilla/5.0 (bench)")],
            "client": (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000), "server": ("127.0.0.1", 8080),
            "state": {}}


async def _round(app: Any, state: EdgeState, scopes: list[dict[str, Any]], requests: int,
                 statuses: dict[int, int], ticks: list[int] | None = None) -> list[int]:
    """Nanoseconds per request of ``requests`` requests, a control tick every ``TICK_EVERY`` (its nanoseconds
    appended to ``ticks``)."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    clock = time.perf_counter_ns
    times = []
    for i in range(requests):
        scope = dict(scopes[i % len(scopes)])  # servers hand each request a scope of its own
        t0 = clock()
        await app(scope, receive, send)
        times.append(clock() - t0)
        if i % TICK_EVERY == TICK_EVERY - 1:
            # Pacing off: at these budgets it would only throttle a run that spends a day's plan in seconds.
            t0 = clock()
            state.control_tick(state.settings.clock.now(), pace=False)
            if ticks is not None:
                ticks.append(clock() - t0)
    return times


def bench_handler(*, duration_s: float, rounds: int, say: Callable[[str], None], **_: Any) -> dict[str, Any]:
    app, state = _edge()
    scopes = [_scope(p, n) for n, p in enumerate(ad_paths(20_000))]
    statuses: dict[int, int] = {}
    ticks: list[int] = []

    async def run() -> list[list[int]]:
        await _round(app, state, scopes, 2_000, {})  # warm: first snapshot columns, caches, code paths
        # Size the rounds from a short one, so each takes about duration_s / 2.
        probe = await _round(app, state, scopes, 2_000, {})
        per_round = max(2_000, int(duration_s / 2 / (sum(probe) / len(probe) / 1e9)))
        out = []
        for r in range(rounds):
            out.append(await _round(app, state, scopes, per_round, statuses, ticks))
            say(f"handler round {r + 1}: {statistics.fmean(out[-1]) / 1000:.1f} us per request")
        return out

    runs = asyncio.run(run())
    served = sum(statuses.values())
    if statuses.get(200, 0) < 0.95 * served:
        raise RuntimeError(f"the handler filled too few ad requests to measure: {statuses}")
    every = sorted(t for times in runs for t in times)
    return {
        "handler_us_per_request": round(statistics.median(statistics.fmean(t) for t in runs) / 1000, 1),
        "handler_p50_us": round(_percentile(every, 0.50) / 1000, 1),
        "handler_p99_us": round(_percentile(every, 0.99) / 1000, 1),
        "handler_fill_rate": round(statuses.get(200, 0) / served, 3),
        # The control tick after each TICK_EVERY requests (decisions sent, the budget ledger's tick): what a
        # request that comes in meanwhile waits for (``unloaded_loop_hold`` of ``http`` is the same, live).
        "handler_tick_us": round(statistics.median(ticks) / 1000, 1),
        "rounds": [{"requests": len(t), "us_per_request": round(statistics.fmean(t) / 1000, 1)} for t in runs],
    }
