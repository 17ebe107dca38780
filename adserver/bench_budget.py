"""``adserver bench --only decisions``: ad decisions per second with budget accounting on, against it off.

In-process and side by side: the same seeded requests against the same snapshot (1,000 campaigns, 6 slots),
alternating rounds. "Off" is the bare auction with an unlimited allowance and no throttle. "On" is what the
edge's ``/v1/ads`` does for budgets: the auction reads the live allowance of the worker's ledger and the
pacing throttles, every win reserves its expected cost (staged as PN-counter increments), and the edge's
control tick (``edge.accounting.Accounting.tick``, the same code: expire reservations, track spend rates,
roll days, move the staged increments into the pycrdt replica, re-pace a fifth of the campaigns),
the grant loop's 100 ms check of what to ask for (``Accounting.grant_request``; the NATS request itself is
left out: the allocator grants enough up front) and the half-second Yjs delta flush run on the edge's
schedule inside the loop.
HTTP and JSON cost the same either way and are left out, so the ratio is the budget machinery's own cost.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.accounting import Accounting
from edge.auction import AdRequest, run_auction
from edge.budget import BudgetLedger
from edge.spend import SpendView
from replication.calendar import utc_day
from replication.snapshot import Snapshot, SnapshotCampaign, SnapshotCreative, build_snapshot

CAMPAIGNS = 1_000
KEYWORDS = 50


def _snapshot(rng: random.Random) -> Snapshot:
    campaigns = []
    for i in range(CAMPAIGNS):
        cid = f"c{i:05d}"
        creative = SnapshotCreative(f"k{i}", "300x250", "h", "https://cdn.example.com/a.png",
                                    "https://example.com/", "Go", 0.005 + rng.random() * 0.02)
        campaigns.append(SnapshotCampaign(
            campaign_id=cid, advertiser_id=f"a{i % 300}", revision=1, bid_type="cpm",
            max_bid_micros=rng.randrange(500_000, 5_000_000), daily_budget_micros=10**12,
            total_budget_micros=10**13, start_s=0, end_s=0, timezone="UTC", hours=frozenset(),
            countries=frozenset(), geos=frozenset(), devices=frozenset(),
            keywords=frozenset({f"kw{rng.randrange(KEYWORDS)}", f"kw{rng.randrange(KEYWORDS)}"}),
            interests=frozenset(), placements=frozenset(), prior_cvr=0.02, creatives=(creative,),
            # asap keeps every throttle at 1: both sides score the same candidates, so the ratio is the cost of
            # the accounting alone (a throttle below 1 skips candidates and would flatter the "on" side).
            pacing="asap"))
    return build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000)


def _requests(rng: random.Random, n: int) -> list[AdRequest]:
    return [AdRequest(placement=f"p{rng.randrange(20)}", slots=6, format="300x250",
                      keywords=(f"kw{rng.randrange(KEYWORDS)}",)) for _ in range(n)]


def _run(snapshot: Snapshot, requests: list[AdRequest], duration_s: float, *, budget: bool) -> float:
    """Decisions per second over ``duration_s`` of wall time."""
    rng = random.Random(7)
    now = 1_800_000_000.0
    # A short TTL (of the loop's clock, 0.1 s per tick), so buckets expire and give back during the run too.
    accounting = Accounting(BudgetLedger(worker_id="bench", ttl_s=1.0), SpendView("bench"))
    ledger, spend = accounting.ledger, accounting.spend
    if budget:
        for c in snapshot.campaigns:
            ledger.grant(c.campaign_id, 10**11, exhausted=False, day=utc_day(now))
        accounting.tick(snapshot, now, pace=True)
    # Off: every campaign may spend without limit, read the same way the ledger's view is (a dict's get).
    allowance: Any = ledger.allowance_view() if budget else {c.campaign_id: 10**15 for c in snapshot.campaigns}
    throttle = spend.throttle  # empty when off; passed as edge/app.py does, None while nothing is throttled
    decisions = 0
    started = time.perf_counter()
    next_tick = started + 0.1
    ticks = 0
    deadline = started + duration_s
    while True:
        for request in requests:
            result = run_auction(snapshot, request, now_s=now, rng=rng, allowance=allowance,
                                 throttle=throttle or None)
            if budget:  # as edge/app.py: hold every win's expected cost, the holds go into its tokens
                ledger.reserve_many([(w.campaign.campaign_id, w.reserve_micros) for w in result.wins], now_s=now)
            decisions += 1
        t = time.perf_counter()
        if budget and t >= next_tick:  # the edge's control tick (edge.state.control_loop), on its schedule
            now += 0.1
            ticks += 1
            accounting.tick(snapshot, now, pace=True)
            accounting.grant_request(snapshot, now, retry_s=0.25)  # the grant loop's own 100 ms wake, unsent
            if ticks % 5 == 0:  # as edge.state.spend_sync_loop: the CRDT delta goes out every half second
                spend.flush(full=False)
            next_tick = t + 0.1
        if t >= deadline:
            return decisions / (t - started)


def bench_decisions(*, duration_s: float, rounds: int, say: Callable[[str], None], workdir: Path,
                    **_: Any) -> dict[str, Any]:
    rng = random.Random(1)
    snapshot = _snapshot(rng)
    requests = _requests(rng, 200)
    run_s = max(2.0, duration_s / 2)
    off: list[float] = []
    on: list[float] = []
    for r in range(rounds):
        off.append(_run(snapshot, requests, run_s, budget=False))
        say(f"round {r + 1}: budget off {off[-1]:,.0f} decisions/s")
        on.append(_run(snapshot, requests, run_s, budget=True))
        say(f"round {r + 1}: budget on  {on[-1]:,.0f} decisions/s")
    return {"decision_ratio_budget_on_vs_off": round(statistics.median(on) / statistics.median(off), 3),
            "decisions_per_s_budget_on": round(statistics.median(on)),
            "decisions_per_s_budget_off": round(statistics.median(off)),
            "runs": {"on": on, "off": off}}
