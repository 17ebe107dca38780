"""``adserver bench --only decisions``: ad decisions per second with budget accounting on, against it off.

In-process and side by side: the same seeded requests against the same snapshot (1,000 campaigns, 6 slots),
both sides in every round, taking turns in slices of a tenth of a second; the ratio is the median of the
rounds' own ratios (``adserver.sidebyside``). "Off" is the bare auction with an unlimited allowance and no
throttle. "On" is what the edge's ``/v1/ads`` does for budgets: the auction reads the live allowance of the
worker's ledger and the pacing throttles, every win reserves its expected cost (staged as PN-counter
increments), and the edge's control tick (``edge.accounting.Accounting.tick``, the same code: expire
reservations, track spend rates, roll days, move the staged increments into the pycrdt replica, re-pace a
fifth of the campaigns),
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

from adserver.sidebyside import in_turn, median_ratio
from edge.accounting import Accounting
from edge.auction import AdRequest, run_auction, warm_up
from edge.budget import BudgetLedger
from edge.spend import SpendView
from replication.calendar import utc_day
from replication.snapshot import Snapshot, SnapshotCampaign, SnapshotCreative, build_snapshot

CAMPAIGNS = 1_000
KEYWORDS = 50
CHUNK = 20  # requests between looks at the clock: a slice overruns by at most this many


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


class _Side:
    """One side's auction loop, kept between the slices it runs in: its ledger, clock and tick schedule carry
    on where its last slice stopped."""

    def __init__(self, snapshot: Snapshot, requests: list[AdRequest], *, budget: bool) -> None:
        self.snapshot, self.requests, self.budget = snapshot, requests, budget
        self.rng = random.Random(7)
        self.now = 1_800_000_000.0
        # A short TTL (of the loop's clock, 0.1 s per tick), so buckets expire and give back during the run too.
        self.accounting = Accounting(BudgetLedger(worker_id="bench", ttl_s=1.0), SpendView("bench"))
        ledger = self.accounting.ledger
        if budget:
            for c in snapshot.campaigns:
                ledger.grant(c.campaign_id, 10**11, exhausted=False, day=utc_day(self.now))
            self.accounting.tick(snapshot, self.now, pace=True)
        # Off: every campaign may spend without limit, read the same way the ledger's view is (a dict's get).
        self.allowance: Any = (ledger.allowance_view() if budget
                               else {c.campaign_id: 10**15 for c in snapshot.campaigns})
        self.ticks = 0
        self.until_tick = 0.1  # seconds of this side's own running time
        self.decisions = 0
        self.elapsed = 0.0
        self.next = 0  # the request the next chunk starts at

    def run(self, seconds: float) -> None:
        """Decide for about ``seconds`` of wall time, in chunks of ``CHUNK`` requests."""
        snapshot, ledger, spend = self.snapshot, self.accounting.ledger, self.accounting.spend
        throttle = spend.throttle  # empty when off; passed as edge/app.py does, None while nothing is throttled
        started = last = time.perf_counter()
        while True:
            for request in self.requests[self.next:self.next + CHUNK]:
                result = run_auction(snapshot, request, now_s=self.now, rng=self.rng, allowance=self.allowance,
                                     throttle=throttle or None)
                if self.budget:  # as edge/app.py: hold every win's expected cost, the holds go into its tokens
                    ledger.reserve_many([(w.campaign.campaign_id, w.reserve_micros) for w in result.wins],
                                        now_s=self.now)
            done = min(CHUNK, len(self.requests) - self.next)
            self.decisions += done
            self.next = (self.next + done) % len(self.requests)
            t = time.perf_counter()
            self.until_tick -= t - last
            last = t
            if self.budget and self.until_tick <= 0:  # the edge's control tick (edge.state.control_loop)
                self.now += 0.1
                self.ticks += 1
                self.accounting.tick(snapshot, self.now, pace=True)
                # The grant loop's own 100 ms wake, unsent.
                self.accounting.grant_request(snapshot, self.now, retry_s=0.25)
                if self.ticks % 5 == 0:  # as edge.state.spend_sync_loop: the CRDT delta goes out every 0.5 s
                    spend.flush(full=False)
                self.until_tick = 0.1
                # The tick's own time counts too: the clock read above came before it, and a slice usually
                # ends on the chunk its tick falls due on (found by a review: ~2.7 ms per 0.1 s went untimed).
                t = last = time.perf_counter()
            if t - started >= seconds:
                self.elapsed += t - started
                return

    @property
    def rate(self) -> float:
        return self.decisions / self.elapsed


SLICE_S = 0.1  # the sides take turns this often within a round


def _round(snapshot: Snapshot, requests: list[AdRequest], per_side_s: float) -> tuple[float, float]:
    """(decisions/s off, on) of one round: fresh sides that take turns in slices of ``SLICE_S``, which goes
    first alternating (off on, on off, ...), so a change in the machine's speed that lasts longer than a
    couple of slices hits both."""
    sides = {False: _Side(snapshot, requests, budget=False), True: _Side(snapshot, requests, budget=True)}
    for i in range(max(1, round(per_side_s / SLICE_S))):
        for budget in in_turn(i, (False, True)):
            sides[budget].run(SLICE_S)
    return sides[False].rate, sides[True].rate


def bench_decisions(*, duration_s: float, rounds: int, say: Callable[[str], None], workdir: Path,
                    **_: Any) -> dict[str, Any]:
    rng = random.Random(1)
    snapshot = _snapshot(rng)
    requests = _requests(rng, 200)
    run_s = max(2.0, duration_s / 2)
    # As the edge does when a snapshot arrives: compile the auction's kernels before any timed request.
    # Without it the first round's first side paid for the compilation (2,795 decisions/s against the next
    # round's 12,144, one-off, on 4aa5fd9).
    warm_up(snapshot)
    off: list[float] = []
    on: list[float] = []
    for r in range(rounds):
        rate_off, rate_on = _round(snapshot, requests, run_s)
        off.append(rate_off)
        on.append(rate_on)
        say(f"round {r + 1}: budget off {rate_off:,.0f} decisions/s, on {rate_on:,.0f}: {rate_on / rate_off:.3f}")
    return {"decision_ratio_budget_on_vs_off": round(median_ratio(on, off), 3),
            "decisions_per_s_budget_on": round(statistics.median(on)),
            "decisions_per_s_budget_off": round(statistics.median(off)),
            "runs": {"on": on, "off": off}}
