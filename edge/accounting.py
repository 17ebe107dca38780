"""A worker's budget accounting between ad requests: the control tick and the allowance it asks for. Pure.

The per-ad part is the ledger's (``edge.budget``: reserve, settle, release); the cross-region spend view and
the pacing throttles are ``edge.spend``'s. This ties them together on the edge's 100 ms control tick (expire
reservations, track each campaign's spend rate, close a lapsed lease, roll campaign days, move the staged
spend into the CRDT replica, refresh the counter baseline's allowances, re-pace) and sizes the allowance
each campaign should hold. ``edge.state`` runs it on the event loop and ``adserver bench --only decisions``
runs the same code, so the bench pays for what the edge pays for.

A tick's cost is paid by every request the worker answers, so each step touches as few campaigns as it can:
the day roll walks the campaigns only when a timezone's day turns or a new snapshot arrives, the counter
baseline only its own campaigns, and pacing re-paces a slice of the campaigns per tick (every campaign
every ``PACE_ROUND_TICKS`` ticks, at most ``PACE_MAX_PER_TICK`` per tick).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edge.budget import BudgetLedger
from edge.spend import SpendView
from replication.calendar import local_day, utc_day
from replication.snapshot import Snapshot, SnapshotCampaign, unit_cost_ceiling

T = TypeVar("T")

MIN_UNITS = 5  # the least allowance a campaign holds, in billable units: enough to serve while a refill is out
BUDGET_SHARE = 20  # nor more than 1/20 of the budget (the allocator shrinks slices further near the end)
# Pacing takes turns: every campaign is re-paced once per PACE_ROUND_TICKS ticks (half a second), a slice of
# them per tick, and no tick paces more than PACE_MAX_PER_TICK (at about 14 us a campaign, 3.5 ms a tick),
# so past 1,250 campaigns a round takes longer. A pass over all of them at once held up every request behind
# it: 14 ms at 1,000 campaigns and 79 ms at 5,000, twice a second (one-off timing on 0791ef3).
PACE_ROUND_TICKS = 5
PACE_MAX_PER_TICK = 250


def _per_snapshot(snapshot: Snapshot, key: str, build: Callable[[], T]) -> T:
    """``build()`` once per snapshot, kept in its columns' memo (which lives exactly as long as it)."""
    assert snapshot.columns is not None  # built with every snapshot
    memo = snapshot.columns.memo
    found = memo.get(key)
    if found is None:
        found = memo[key] = build()
    return found


@dataclass(frozen=True, slots=True)
class TickOutcome:
    lapsed: bool  # the lease ran out: the ledger closed its account
    new_day: bool  # a campaign's local day turned: it must ask for the new day's allowance


@dataclass(frozen=True, slots=True)
class GrantRequest:
    asks: dict[str, int]
    returns: dict[str, dict[str, int]]
    give_back: dict[str, tuple[int, str]]

    def __bool__(self) -> bool:
        return bool(self.asks or self.returns or self.give_back)


@dataclass
class Accounting:
    ledger: BudgetLedger
    spend: SpendView
    speed: float = 1.0  # campaign seconds per real second (the simulator compresses a day)
    lease_s: float = 60.0  # until the allocator's first answer says otherwise
    # campaign -> smoothed spend rate here (reserved + charged micros per campaign second)
    rates: dict[str, float] = field(default_factory=dict)
    _used_seen: dict[str, int] = field(default_factory=dict)
    _rate_at: float = 0.0
    _days: dict[str, str] = field(default_factory=dict)  # timezone -> its local day at the last roll
    _rolled: Snapshot | None = None  # the snapshot the last full day roll walked
    _known: int = 0  # how many campaigns the ledger had then

    def tick(self, snapshot: Snapshot | None, now: float, *, pace: bool) -> TickOutcome:
        """One control tick (every 100 ms, see ``edge.state``); ``pace``: re-pace this tick's slice."""
        ledger = self.ledger
        ledger.expire(now)
        self.observe_rates(now)
        lapsed = ledger.lapse(now)
        new_day = self.roll_days(snapshot, now) if snapshot is not None else False
        self.spend.stage(utc_day(now), ledger.drain_pn())
        if snapshot is not None:
            for c in self._counter_campaigns(snapshot):
                day = local_day(now, c.timezone)
                ledger.set_counter_allowance(
                    c.campaign_id, day, self.spend.counter_allowance(c.campaign_id, day, c.daily_budget_micros))
            if pace:
                share = -(-len(snapshot.campaigns) // PACE_ROUND_TICKS)
                self.spend.pace(snapshot, now, self.ledger.unit_prices, limit=min(PACE_MAX_PER_TICK, share))
        return TickOutcome(lapsed=lapsed, new_day=new_day)

    def observe_rates(self, now: float) -> None:
        """Track each campaign's spend rate here, smoothed."""
        dt = now - self._rate_at
        if dt <= 0:
            return
        self._rate_at = now
        # Down slowly (over a campaign minute, or five real seconds when the clock is compressed), up fast:
        # a burst that drains the allowance between refills must raise the next asks at once, not after a
        # minute of no-fills (a new campaign starts from a few units).
        slow = min(1.0, dt / max(60.0, 5.0 * self.speed))
        rates, seen = self.rates, self._used_seen
        for cid, used in self.ledger.used().items():
            last = seen.get(cid, used)
            seen[cid] = used
            rate = max(0, used - last) / dt
            old = rates.get(cid, rate)
            alpha = 0.5 if rate > old else slow
            rates[cid] = old * (1 - alpha) + rate * alpha

    def roll_days(self, snapshot: Snapshot, now: float) -> bool:
        """At a campaign's local midnight drop yesterday's unspent slices; True when one turned (ask anew).
        Walks the campaigns only when some timezone's day turned, the snapshot changed or the ledger took on
        a campaign since the last walk (a late grant can bring in yesterday's day)."""
        assert snapshot.columns is not None  # built with every snapshot
        ledger = self.ledger
        days = {tz: local_day(now, tz) for tz in snapshot.columns.timezones}
        if snapshot is self._rolled and days == self._days and len(ledger.campaigns) == self._known:
            return False
        self._rolled, self._days, self._known = snapshot, days, len(ledger.campaigns)
        turned = False
        for c in snapshot.campaigns:
            if c.campaign_id in ledger.campaigns and ledger.new_day(c.campaign_id, days[c.timezone]):
                turned = True
        return turned

    @staticmethod
    def _counter_campaigns(snapshot: Snapshot) -> tuple[SnapshotCampaign, ...]:
        """The snapshot's counter-baseline campaigns, found once per snapshot (in its columns' memo)."""
        return _per_snapshot(snapshot, "counter-campaigns",
                             lambda: tuple(c for c in snapshot.campaigns if c.budget_mode == "counter"))

    def grant_targets(self, snapshot: Snapshot | None) -> dict[str, int]:
        """How much allowance to hold per campaign: enough for this process's recent spend rate over a
        quarter lease or two real seconds of refills (whichever is longer), never less than a few units and
        never more than a twentieth of the budget (the allocator shrinks it further near the end)."""
        if snapshot is None:
            return {}
        horizon_s = max(self.lease_s / 4, 2.0 * self.speed)
        rates, prices = self.rates, self.ledger.unit_prices
        targets = {}
        for cid, unit, cap in self._bounds(snapshot):
            # A few billable units at the price the campaign has been paying (a floor of five ceilings per
            # process locked up much of a small budget whose campaign pays the reserve), but never less than
            # one ceiling: a campaign whose price rose past what it holds is refused every ad, so nothing
            # is billed, its average never moves, and with no spend rate it would never ask for more.
            price = prices.get(cid)
            floor = MIN_UNITS * unit if price is None else max(unit, MIN_UNITS * min(unit, math.ceil(price)))
            targets[cid] = max(floor, min(cap, int(rates.get(cid, 0.0) * horizon_s)))
        return targets

    @staticmethod
    def _bounds(snapshot: Snapshot) -> tuple[tuple[str, int, int], ...]:
        """(campaign, its unit cost ceiling, greatest target) of the snapshot's allowance campaigns, built once
        per snapshot (in its columns' memo): the grant loop sizes every campaign's target every 100 ms."""
        return _per_snapshot(snapshot, "allowance-bounds", lambda: tuple(
            (c.campaign_id, unit_cost_ceiling(c.bid_type, c.max_bid_micros),
             min(c.daily_budget_micros, c.total_budget_micros) // BUDGET_SHARE)
            for c in snapshot.campaigns if c.budget_mode == "allowance"))

    def grant_request(self, snapshot: Snapshot | None, now: float, *, retry_s: float) -> GrantRequest:
        """What the next grant request would carry (``edge.state.grant_loop`` sends it when not empty):
        campaigns below their low-water mark and how much each asks for, the returns of closed accounts with
        nothing left in flight, and allowance offered back where the allocator has run out."""
        targets = self.grant_targets(snapshot)
        ledger = self.ledger
        return GrantRequest(asks=ledger.wants(targets, now_s=now, retry_s=retry_s),
                            returns=ledger.closable_returns(), give_back=ledger.take_excess(targets))
