"""A worker's budget accounting between ad requests: the control tick and the allowance it asks for. Pure.

The per-ad part is the ledger's (``edge.budget``: reserve, settle, release); the cross-region spend view and
the pacing throttles are ``edge.spend``'s. This ties them together on the edge's 100 ms control tick (expire
reservations, track each campaign's spend rate, close a lapsed lease, roll campaign days, move the staged
spend into the CRDT replica, refresh the counter baseline's allowances, re-pace) and sizes the allowance
each campaign should hold. ``edge.state`` runs it on the event loop and ``adserver bench --only decisions``
runs the same code, so the bench pays for what the edge pays for.

A tick's cost is paid by every request the worker answers, so each step touches as few campaigns as it can
(an edge holds up to 100,000 of them, and walking them all cost 75 ms a tick and 83 ms a grant check at that
size, one-off timing on 1f992cb): spend rates are updated for the campaigns the ledger saw move
(``BudgetLedger.touched``) and decay lazily for the rest; the grant check sizes the moved campaigns, those
due for a retry and a round-robin slice of the others; the unused report carries what changed since the
last one; the day roll walks the campaigns only when a timezone's day turns or a new snapshot arrives, the
counter baseline only its own campaigns, and pacing re-paces a slice of the campaigns per tick (every
campaign every ``PACE_ROUND_TICKS`` ticks, at most ``PACE_MAX_PER_TICK`` per tick).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from edge.budget import BudgetLedger
from edge.spend import SpendView
from replication.calendar import earliest_local_day, local_day, utc_day
from replication.snapshot import Snapshot, SnapshotCampaign, unit_cost_ceiling

T = TypeVar("T")

MIN_UNITS = 5  # the least allowance a campaign holds, in billable units: enough to serve while a refill is out
BUDGET_SHARE = 20  # nor more than 1/20 of the budget (the allocator shrinks slices further near the end)
# Pacing takes turns: every campaign is re-paced once per PACE_ROUND_TICKS ticks (half a second), a slice of
# them per tick, and no tick paces more than PACE_MAX_PER_TICK (a tick's share and its cost per campaign:
# ``accounting_pace_ms_*`` and ``accounting_pace_us_per_campaign_*`` of ``adserver bench --only accounting``),
# so past 1,250 campaigns a round takes longer. A pass over all of them at once held up every request behind
# it: 14 ms at 1,000 campaigns and 79 ms at 5,000, twice a second (one-off timing on 0791ef3). The edge paces
# a tick's share in pieces with the event loop free between them (``edge.state``).
PACE_ROUND_TICKS = 5
PACE_MAX_PER_TICK = 250
# The grant check's safety net: besides the campaigns that moved and those due for a retry, it re-sizes a
# slice of the others (a target decays with an idle campaign's rate, which can make an exhausted campaign's
# holding worth offering back): every campaign once per GRANT_ROUND_CHECKS checks (a second), at most
# GRANT_MAX_PER_CHECK a check (about 1 us each), so past 5,000 campaigns a round takes longer.
GRANT_ROUND_CHECKS = 10
GRANT_MAX_PER_CHECK = 500
# Dropped campaigns whose books a tick looks at, at most (``Accounting.forget_dropped``): forgetting 50,000 at
# once held the event loop for 160 ms on a slow run of this machine (one-off), where a tick's budget is a few.
FORGET_PER_TICK = 2_000
# The unused report carries only what changed since the last one, and the whole of it every FULL_REPORT_EVERY
# reports (and whenever a report may not have arrived): the allocator keeps the last figure per campaign.
FULL_REPORT_EVERY = 100


def _per_snapshot(snapshot: Snapshot, key: str, build: Callable[[], T]) -> T:
    assert snapshot.columns is not None  # built with every snapshot
    return snapshot.columns.memoized(key, build)


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
    # campaign -> smoothed spend rate here (reserved + charged micros per campaign second) as of _rate_times'
    # entry: an idle campaign's rate decays lazily (``rate``)
    rates: dict[str, float] = field(default_factory=dict)
    _rate_times: dict[str, float] = field(default_factory=dict)
    _used_seen: dict[str, int] = field(default_factory=dict)
    _rate_at: float = 0.0
    # What the ledger saw move (``BudgetLedger.touched``), kept apart for each of the four walks over it
    _moved_rates: set[str] = field(default_factory=set)
    _moved_grants: set[str] = field(default_factory=set)
    _moved_unused: set[str] = field(default_factory=set)
    _moved_days: set[str] = field(default_factory=set)
    # The grant check: campaigns below their low-water mark, rechecked when their retry falls due
    # (campaign -> due time, and a heap of (due, campaign) whose stale entries are skipped)
    _due: dict[str, float] = field(default_factory=dict)
    _due_heap: list[tuple[float, str]] = field(default_factory=list)
    _round_at: int = 0  # where the round-robin slice starts next
    _sized_snapshot: Snapshot | None = None  # the snapshot the grant check last saw
    _sized_for: tuple[int, float] = (-1, 0.0)  # the ledger's epoch and the lease length at its last full check
    # The unused report: the account the last one spoke for, and how many reports ago the last whole one went
    _reported_account: str = ""
    _reports: int = 0
    _days: dict[str, str] = field(default_factory=dict)  # timezone -> its local day at the last roll
    _rolled: Snapshot | None = None  # the snapshot the last day roll saw
    _known: int = 0  # how many campaigns the ledger had then
    # The earliest day turned: the next tick lists the dropped campaigns whose books to forget
    _forget_due: bool = False
    _earliest: str = ""  # the earliest local day anywhere (``earliest_local_day``) at the last roll
    _forgetting: list[str] = field(default_factory=list)  # dropped campaigns still to look at, a slice a tick
    # Dropped campaigns whose day is over but that still held something when looked at: again at the next
    # zone's midnight
    _retry: list[str] = field(default_factory=list)

    def tick(self, snapshot: Snapshot | None, now: float, *, pace: bool) -> TickOutcome:
        """One control tick (every 100 ms, see ``edge.state``); ``pace``: re-pace this tick's slice."""
        ledger = self.ledger
        ledger.expire(now)
        self.observe_rates(now)
        lapsed = ledger.lapse(now)
        new_day = self.roll_days(snapshot, now) if snapshot is not None else False
        self.spend.stage(utc_day(now), ledger.drain_pn())
        if snapshot is not None:
            if self._forget_due or self._forgetting:
                self.forget_dropped(snapshot, now)
            for c in self._counter_campaigns(snapshot):
                day = local_day(now, c.timezone)
                ledger.set_counter_allowance(
                    c.campaign_id, day, self.spend.counter_allowance(c.campaign_id, day, c.daily_budget_micros))
            if pace:
                self.pace(snapshot, now, limit=self.pace_share(snapshot))
        return TickOutcome(lapsed=lapsed, new_day=new_day)

    @staticmethod
    def pace_share(snapshot: Snapshot) -> int:
        """How many campaigns a tick re-paces: every one once per PACE_ROUND_TICKS ticks, at most
        PACE_MAX_PER_TICK."""
        return min(PACE_MAX_PER_TICK, -(-len(snapshot.campaigns) // PACE_ROUND_TICKS))

    def pace(self, snapshot: Snapshot, now: float, *, limit: int) -> None:
        """Re-pace the next ``limit`` campaigns, taking turns (``SpendView.pace``). The edge calls this in
        pieces between requests (``edge.state``); ``tick(pace=True)`` does a tick's share at once."""
        self.spend.pace(snapshot, now, self.ledger.unit_prices, limit=limit)

    def _take_moved(self) -> None:
        """Hand what the ledger saw move since the last call to each walk that needs it."""
        ledger = self.ledger
        ledger.fold()  # reservations folded now count as moved
        moved = ledger.touched
        if moved:
            self._moved_rates |= moved
            self._moved_grants |= moved
            self._moved_unused |= moved
            self._moved_days |= moved
            moved.clear()

    @property
    def _decay_s(self) -> float:
        # Rates come down slowly (over a campaign minute, or five real seconds when the clock is compressed)
        return max(60.0, 5.0 * self.speed)

    def rate(self, campaign_id: str) -> float:
        """The campaign's smoothed spend rate here as of the last tick (decayed since it last moved)."""
        r = self.rates.get(campaign_id)
        if not r:
            return 0.0
        return r * math.exp((self._rate_times[campaign_id] - self._rate_at) / self._decay_s)

    def observe_rates(self, now: float) -> None:
        """Track each campaign's spend rate here, smoothed: down slowly, up fast (a burst that drains the
        allowance between refills must raise the next asks at once, not after a minute of no-fills: a new
        campaign starts from a few units). A campaign that did not move only decays, which ``rate`` works
        out when asked (e**-dt/T where a walk over every campaign multiplied by 1 - dt/T each tick)."""
        dt = now - self._rate_at
        if dt <= 0:
            return
        self._take_moved()
        slow = min(1.0, dt / self._decay_s)
        rates, times, seen, ledger = self.rates, self._rate_times, self._used_seen, self.ledger
        for cid in self._moved_rates:
            used = ledger.used(cid)
            last = seen.get(cid, used)
            if used == last and cid in seen:
                continue  # moved and moved back (a reservation given back): it only decays
            seen[cid] = used
            rate = max(0, used - last) / dt
            old = self.rate(cid) if cid in rates else rate
            alpha = 0.5 if rate > old else slow
            rates[cid] = old * (1 - alpha) + rate * alpha
            times[cid] = now
        self._moved_rates.clear()
        self._rate_at = now

    def roll_days(self, snapshot: Snapshot, now: float) -> bool:
        """At a campaign's local midnight drop yesterday's unspent slices; True when one turned (ask anew).
        When a timezone's day turns it walks that zone's campaigns (every zone's, the first time, and a zone
        new to the snapshot); besides, and on a new snapshot, or when the ledger took on a campaign (a late
        grant can bring in yesterday's day), it looks only at the campaigns that moved since the last roll:
        the ledger took them on, or the edge reset them (``swapped`` resets each campaign that is new to the
        snapshot or of a new revision: a campaign back from a pause over its midnight, one moved to another
        zone). A walk over every campaign of each new snapshot took about 100 ms at 100,000 (one-off
        profile), and so did each zone's midnight while it walked every zone's campaigns
        (``accounting_zone_midnight_ms_*`` of ``adserver bench --only accounting`` times one now)."""
        assert snapshot.columns is not None  # built with every snapshot
        ledger = self.ledger
        self._take_moved()
        moved, self._moved_days = self._moved_days, set()
        days = {tz: local_day(now, tz) for tz in snapshot.columns.timezones}
        earliest = earliest_local_day(now)
        if earliest != self._earliest:  # some dropped campaigns' day may have ended everywhere: list them
            self._forget_due, self._earliest = True, earliest
        elif days != self._days and self._retry:  # and those that still held something then, at each midnight
            self._forgetting += self._retry
            self._retry = []
        if snapshot is self._rolled and days == self._days and len(ledger.campaigns) == self._known:
            return False
        check = [c for cid in moved if (c := snapshot.campaign(cid)) is not None]
        if days != self._days:
            by_zone = self._campaigns_by_zone(snapshot)
            for tz, day in days.items():
                if self._days.get(tz) != day:
                    check += by_zone[tz]
        self._rolled, self._days, self._known = snapshot, days, len(ledger.campaigns)
        turned = False
        for c in check:
            if c.campaign_id in ledger.campaigns and ledger.new_day(c.campaign_id, days[c.timezone]):
                turned = True
        return turned

    def forget_dropped(self, snapshot: Snapshot, now: float) -> list[str]:
        """Forget the books of the campaigns ``snapshot`` no longer has (deleted, paused, ended) whose day is
        over everywhere and that hold nothing any more (``BudgetLedger.forget``): the ledger's and the spend
        rates kept here. When the earliest day turns (``roll_days``), the campaigns the ledger knows and the
        snapshot does not are listed (a set difference over every campaign, once a day: at each zone's
        midnight it cost 30-45 ms at 100,000 campaigns, one-off; ``accounting_forget_turn_ms_*`` times the
        tick that lists them); each tick, after its drain, looks at
        ``FORGET_PER_TICK`` of them. One that still held something (in flight, staged, offered back, or an
        unused figure the grant loop has not reported yet) is looked at again at the next zone's midnight.
        Returns the campaigns forgotten."""
        ledger = self.ledger
        if self._forget_due:
            self._forget_due = False
            self._forgetting = list(ledger.campaigns.keys() - snapshot.campaign_ids())
            self._retry = []
        chunk = self._forgetting[-FORGET_PER_TICK:]
        del self._forgetting[-FORGET_PER_TICK:]
        gone = [cid for cid in chunk if snapshot.campaign(cid) is None]  # not back since the list was made
        # A figure the unused report has yet to carry (a late billable event moved it) must reach the
        # allocator first, or a reclaim of this account would hand back the old one.
        unreported, touched = self._moved_unused, ledger.touched
        before = earliest_local_day(now)
        forgotten = ledger.forget([cid for cid in gone if cid not in unreported and cid not in touched],
                                  before_day=before) if gone else []
        done = set(forgotten)
        campaigns = ledger.campaigns
        self._retry += [cid for cid in gone if cid not in done and (b := campaigns.get(cid)) is not None
                        and b.day < before]
        for cid in forgotten:
            for kept in (self.rates, self._rate_times, self._used_seen, self._due):
                kept.pop(cid, None)  # a stale entry left in _due_heap is skipped when it comes up
            for moved in (self._moved_rates, self._moved_grants, self._moved_unused, self._moved_days):
                moved.discard(cid)
        self._known = len(ledger.campaigns)
        return forgotten

    @staticmethod
    def _campaigns_by_zone(snapshot: Snapshot) -> dict[str, tuple[SnapshotCampaign, ...]]:
        """The snapshot's campaigns per timezone, found once per snapshot (in its columns' memo)."""
        def build() -> dict[str, tuple[SnapshotCampaign, ...]]:
            zones: dict[str, list[SnapshotCampaign]] = {}
            for c in snapshot.campaigns:
                zones.setdefault(c.timezone, []).append(c)
            return {tz: tuple(cs) for tz, cs in zones.items()}
        return _per_snapshot(snapshot, "campaigns-by-zone", build)

    @staticmethod
    def _counter_campaigns(snapshot: Snapshot) -> tuple[SnapshotCampaign, ...]:
        """The snapshot's counter-baseline campaigns, found once per snapshot (in its columns' memo)."""
        return _per_snapshot(snapshot, "counter-campaigns",
                             lambda: tuple(c for c in snapshot.campaigns if c.budget_mode == "counter"))

    def grant_targets(self, snapshot: Snapshot | None, only: Iterable[str] | None = None) -> dict[str, int]:
        """How much allowance to hold per campaign (of the snapshot's allowance campaigns, or of those of
        them in ``only``): enough for this process's recent spend rate over a quarter lease or two real
        seconds of refills (whichever is longer), never less than a few units and never more than a
        twentieth of the budget (the allocator shrinks it further near the end)."""
        if snapshot is None:
            return {}
        horizon_s = max(self.lease_s / 4, 2.0 * self.speed)
        prices, rate = self.ledger.unit_prices, self.rate
        bounds = _per_snapshot(snapshot, "allowance-bounds", dict)
        targets = {}
        for cid in self._allowance_ids(snapshot) if only is None else only:
            found = bounds.get(cid)
            if found is None:
                found = bounds[cid] = self._bound(snapshot.campaign(cid))
            if not found:
                continue  # not an allowance campaign of this snapshot
            unit, cap = found
            # A few billable units at the price the campaign has been paying (a floor of five ceilings per
            # process locked up much of a small budget whose campaign pays the reserve), but never less than
            # one ceiling: a campaign whose price rose past what it holds is refused every ad, so nothing
            # is billed, its average never moves, and with no spend rate it would never ask for more.
            price = prices.get(cid)
            floor = MIN_UNITS * unit if price is None else max(unit, MIN_UNITS * min(unit, math.ceil(price)))
            targets[cid] = max(floor, min(cap, int(rate(cid) * horizon_s)))
        return targets

    @staticmethod
    def _bound(campaign: SnapshotCampaign | None) -> tuple[int, int] | tuple[()]:
        """(its unit cost ceiling, greatest target) of an allowance campaign; () for any other. Kept in the
        snapshot's memo: worked out for every campaign in the loader thread (``warm``), since for all 100,000
        campaigns of a new snapshot at once it took about 90 ms (one-off profile), or when a campaign is first
        sized on a snapshot nobody warmed."""
        if campaign is None or campaign.budget_mode != "allowance":
            return ()
        return (unit_cost_ceiling(campaign.bid_type, campaign.max_bid_micros),
                min(campaign.daily_budget_micros, campaign.total_budget_micros) // BUDGET_SHARE)

    @staticmethod
    def _allowance_ids(snapshot: Snapshot) -> tuple[str, ...]:
        """The snapshot's allowance campaigns, found once per snapshot (in its columns' memo)."""
        return _per_snapshot(snapshot, "allowance-ids", lambda: tuple(
            c.campaign_id for c in snapshot.campaigns if c.budget_mode == "allowance"))

    @classmethod
    def _allowance_id_set(cls, snapshot: Snapshot) -> frozenset[str]:
        return _per_snapshot(snapshot, "allowance-id-set", lambda: frozenset(cls._allowance_ids(snapshot)))

    def swapped(self, snapshot: Snapshot, previous: Snapshot | None, changed: Iterable[str],
                removed: Iterable[str]) -> None:
        """``snapshot`` replaced ``previous``, bringing ``changed`` new or edited (``Snapshot.changed_since``):
        their budget, bid or status may have changed, so they ask for allowance again, and only they can be
        new to the grant check and to pacing; pacing forgets ``removed`` (``Snapshot.removed_since``). This
        walks those alone; a walk over every campaign to find them (a set difference) took 15-30 ms of the
        event loop per swap at 100,000 (one-off timing)."""
        changed = tuple(changed)
        for campaign_id in changed:
            self.ledger.reset(campaign_id)  # ask again instead of staying exhausted
        if self._sized_snapshot is previous:  # else the grant check compares every campaign (``_to_size``)
            self._sized_snapshot = snapshot
            allowance = self._allowance_id_set(snapshot)
            self._moved_grants.update(cid for cid in changed if cid in allowance)
        self.spend.swapped(snapshot, previous, changed, removed)

    @classmethod
    def warm(cls, snapshot: Snapshot) -> None:
        """Build what the first tick, grant check and pacing piece on ``snapshot`` would build on the event
        loop, each walking every campaign: the edge calls this in the snapshot's loader thread, before the
        swap. At 100,000 campaigns they held the loop for 7-9 ms (tick), 40-58 ms (grant check) and 17-32 ms
        (first pacing piece) per snapshot (one-off timings); ``accounting_snapshot_swap_ms_*`` of ``adserver
        bench --only accounting`` times what is left."""
        cls._counter_campaigns(snapshot)
        cls._campaigns_by_zone(snapshot)
        cls._allowance_id_set(snapshot)
        snapshot.campaign_ids()
        bounds = _per_snapshot(snapshot, "allowance-bounds", dict)
        for c in snapshot.campaigns:
            if c.budget_mode == "allowance":
                bounds[c.campaign_id] = cls._bound(c)

    def _to_size(self, snapshot: Snapshot, now: float) -> Iterable[str]:
        """The campaigns the grant check sizes: every one after a closed account (every ask timer was reset)
        or a new lease length (every target moved); else those the ledger saw move, those whose retry fell
        due, the next round-robin slice of the rest and, on a new snapshot, the campaigns it brings (an edited
        campaign's new revision resets it in the ledger, which moves it). Over every campaign, the check
        takes 178-194 ms at 100,000 (``accounting_grant_check_every_campaign_ms_100k`` of ``adserver bench
        --only accounting``), and it used to run on every snapshot."""
        ids = self._allowance_ids(snapshot)
        if (self.ledger.epoch, self.lease_s) != self._sized_for:
            self._sized_snapshot, self._sized_for = snapshot, (self.ledger.epoch, self.lease_s)
            self._moved_grants.clear()
            self._due.clear()
            self._due_heap.clear()
            return ids
        chosen, self._moved_grants = self._moved_grants, set()
        if snapshot is not self._sized_snapshot:
            self._sized_snapshot = snapshot
            chosen.update(self._allowance_id_set(snapshot).difference(self.ledger.campaigns))
        heap, due = self._due_heap, self._due
        while heap and heap[0][0] <= now:
            at, cid = heapq.heappop(heap)
            if due.get(cid) == at:
                del due[cid]
                chosen.add(cid)
        if ids:
            share = min(GRANT_MAX_PER_CHECK, -(-len(ids) // GRANT_ROUND_CHECKS))
            start = self._round_at % len(ids)
            chosen.update(ids[start:start + share])
            self._round_at = start + share
        return chosen

    def _recheck_at(self, campaign_id: str, at: float) -> None:
        if at < self._due.get(campaign_id, math.inf):
            self._due[campaign_id] = at
            heapq.heappush(self._due_heap, (at, campaign_id))

    def grant_request(self, snapshot: Snapshot | None, now: float, *, retry_s: float,
                      every_campaign: bool = False) -> GrantRequest:
        """What the next grant request would carry (``edge.state.grant_loop`` sends it when not empty):
        campaigns below their low-water mark and how much each asks for, the returns of closed accounts with
        nothing left in flight, and allowance offered back where the allocator has run out.
        ``every_campaign``: size every campaign, not only those ``_to_size`` picks (the reference that tests
        and ``adserver bench --only accounting`` hold it against)."""
        ledger = self.ledger
        self._take_moved()
        if snapshot is None:
            targets = {}
        else:
            to_size = self._allowance_ids(snapshot) if every_campaign else self._to_size(snapshot, now)
            targets = self.grant_targets(snapshot, to_size)
        asks = ledger.wants(targets, now_s=now, retry_s=retry_s)
        give_back = ledger.take_excess(targets)
        available, campaigns = ledger.available_by_campaign, ledger.campaigns
        for cid, target in targets.items():
            if available.get(cid, 0) * 2 < target:  # still below its low-water mark: look again when due
                b = campaigns[cid]  # wants opened its account
                self._recheck_at(cid, b.asked_at + retry_s * (20 if b.exhausted else 1))
        return GrantRequest(asks=asks, returns=ledger.closable_returns(), give_back=give_back)

    def unused_report(self, *, whole: bool = False) -> dict[str, tuple[int, str]]:
        """What the grant request reports as not used (``BudgetLedger.unused``): only the campaigns that
        moved since the last report of this account; the whole of it on ``whole`` (the caller could not
        tell whether the last report arrived), for a new account and every ``FULL_REPORT_EVERY`` reports.
        The allocator keeps the last figure it was told per campaign and adds its grants to it."""
        ledger = self.ledger
        self._take_moved()
        self._reports += 1
        if whole or ledger.account != self._reported_account or self._reports >= FULL_REPORT_EVERY:
            report = ledger.unused()
            self._reported_account, self._reports = ledger.account, 0
        else:
            # Every campaign that moved, even back to the figure last reported: the allocator's figure is
            # that report plus what it granted since (a grant touches the campaign here), not the report.
            report = {}
            campaigns = ledger.campaigns
            for cid in self._moved_unused:
                b = campaigns.get(cid)
                if b is not None and not b.counter and b.day:
                    report[cid] = (b.available, b.day)
        self._moved_unused.clear()
        return report
