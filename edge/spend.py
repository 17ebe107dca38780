"""This worker's view of every campaign's spend across regions, and what pacing derives from it. Pure.

The worker is one writer of the replicated spend PN-counter (``replication.budget_crdt``): the ledger stages
its reservations, releases and charges, ``stage`` moves them into the CRDT, ``flush`` turns them into the Yjs
update published on a tick, and ``apply`` merges every other writer's updates. Two counters per campaign and
campaign-local day: ``r`` (in flight: P reservations, N releases) and ``c`` (charged: P charges, N refunds).

On every control tick ``pace`` feeds the spend today (charged plus in flight, all regions, as far as this
replica knows) of a slice of the campaigns, taking turns, into their pacing controllers and keeps the
resulting throttles for the auction. For the
``counter`` budget baseline, ``counter_allowance`` is the budget minus that same view: admission against the
replicated counter alone, which is exactly what overspends while a region cannot hear the others.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.budget import CHG_N, CHG_P, RES_N, RES_P
from edge.pacing import TrafficShape, controller_for
from replication.budget_crdt import SpendBook, counter_key, decode_sync, encode_sync
from replication.calendar import local_day_and_second
from replication.snapshot import Snapshot, unit_cost_ceiling


@dataclass(slots=True)
class Paced:
    mode: str
    state: Any
    # When it was last paced: its controller's time step is its own (``pace`` takes turns). -inf until its
    # first update, which gets a step of 0: a campaign first seen mid-day already has spend today, and over
    # a step of 0.5 s the even controller read all of it as a burst and throttled to its floor.
    at: float = -math.inf


@dataclass
class SpendView:
    writer_id: str
    keep_periods: int = 3
    book: SpendBook = field(init=False)
    # campaign -> P(take part) < 1, for the auction; a campaign not in it takes part in every auction
    throttle: dict[str, float] = field(default_factory=dict)
    paced: dict[str, Paced] = field(default_factory=dict)
    _turn: int = 0  # where in the snapshot's campaigns the next ``pace`` call starts
    _turn_of: Snapshot | None = None  # the snapshot ``_turn`` indexes
    # The round's end must look for dropped campaigns: a snapshot came without ``swapped`` naming them (every
    # ``pace`` on a snapshot ``swapped`` was not told about sets it, the first one included).
    _forget_walk: bool = False
    _shape_key: tuple[float, ...] = ()
    _shape: TrafficShape = field(default_factory=TrafficShape.uniform)
    # (campaign, day) -> its in-flight and charged counter keys: every tick reads and writes them for every
    # campaign, and building and validating the strings each time was most of a tick's cost.
    _keys: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.book = SpendBook(self.writer_id, keep_periods=self.keep_periods)

    def stage(self, period: str, staged: dict[tuple[str, str], list[int]]) -> None:
        counter = self.book.counter(period)
        for (campaign_id, day), pn in staged.items():
            reserved, charged = self._keys_of(campaign_id, day)
            if pn[RES_P] or pn[RES_N]:
                counter.add(reserved, p=pn[RES_P], n=pn[RES_N])
            if pn[CHG_P] or pn[CHG_N]:
                counter.add(charged, p=pn[CHG_P], n=pn[CHG_N])

    def _keys_of(self, campaign_id: str, day: str) -> tuple[str, str]:
        keys = self._keys.get((campaign_id, day))
        if keys is None:
            if len(self._keys) > 1_000_000:  # days go by: a long-lived edge must not keep every day's keys
                self._keys.clear()
            key = counter_key(campaign_id, day)
            keys = self._keys[(campaign_id, day)] = (f"{key}|r", f"{key}|c")
        return keys

    def flush(self, *, full: bool) -> list[bytes]:
        """Sync messages for this tick: the deltas since the last one, or this writer's whole own state."""
        deltas = self.book.flush()
        messages = self.book.own_states() if full else deltas
        return [encode_sync(m.writer_id, m.period, m.update, m.full) for m in messages]

    def apply_message(self, data: bytes) -> None:
        """Merge another writer's sync message (our own echo is skipped; merging is idempotent anyway)."""
        message = decode_sync(data)
        if message.writer_id != self.writer_id:
            self.book.receive(message)

    def spent(self, campaign_id: str, day: str) -> int:
        """Charged plus in flight, every writer this replica has heard from (its own staged part included)."""
        reserved, charged = self._keys_of(campaign_id, day)
        return self.book.value(charged) + self.book.value(reserved)

    def _traffic_shape(self, weights: tuple[float, ...]) -> TrafficShape:
        if weights != self._shape_key:
            self._shape_key = weights
            self._shape = TrafficShape.from_weights(weights) if weights else TrafficShape.uniform()
        return self._shape

    def pace(self, snapshot: Snapshot, now_s: float, unit_prices: Mapping[str, float] | None = None, *,
             limit: int | None = None) -> None:
        """Update the pacing state and throttle of the next ``limit`` campaigns (all of them without one) from
        the spend view, taking turns round the snapshot's campaigns: a pass over every campaign (tens of
        microseconds each, ``accounting_pace_us_per_campaign_*`` of ``adserver bench --only accounting``)
        would hold up every request behind it, so the edge paces a slice per control tick, in pieces
        (``edge.state``). ``unit_prices`` (campaign -> what its billable units
        have been costing) sets how close to its budget a campaign counts as spent out; without a price, its
        bid's ceiling."""
        prices = unit_prices or {}
        shape = self._traffic_shape(snapshot.traffic_shape)
        campaigns = snapshot.campaigns
        total = len(campaigns)
        if snapshot is not self._turn_of:
            self._new_snapshot(snapshot)
        count = total if limit is None else min(total, max(1, limit))
        start = self._turn if self._turn < total else 0
        self._turn = (start + count) % total if total else 0
        if start + count >= total and self._forget_walk:
            # This call finishes a round after a snapshot ``swapped`` did not announce: forget the campaigns
            # it no longer has (a walk over every campaign, 40-50 ms at 100,000, one-off: only when needed).
            self._forget_walk = False
            live = snapshot.campaign_ids()
            for gone in [cid for cid in self.paced if cid not in live]:
                del self.paced[gone]
                self.throttle.pop(gone, None)
        local: dict[str, tuple[str, float]] = {}  # timezone -> (day, second): one conversion per zone per call
        controllers: dict[str, Any] = {}
        for k in range(start, start + count):
            c = campaigns[k % total]
            when = local.get(c.timezone)
            if when is None:
                when = local[c.timezone] = local_day_and_second(now_s, c.timezone)
            day, second = when
            controller = controllers.get(c.pacing)
            if controller is None:
                controller = controllers[c.pacing] = controller_for(c.pacing)
            paced = self.paced.get(c.campaign_id)
            if paced is None or paced.mode != c.pacing:
                paced = self.paced[c.campaign_id] = Paced(c.pacing, controller.start())
            dt, paced.at = (0.0 if paced.at == -math.inf else max(0.0, now_s - paced.at)), now_s
            paced.state = controller.update(
                paced.state, now_s_into_day=second, dt_s=dt, spent_today=float(self.spent(c.campaign_id, day)),
                daily_budget=float(c.daily_budget_micros), shape=shape,
                unit_cost=min(float(unit_cost_ceiling(c.bid_type, c.max_bid_micros)),
                              prices.get(c.campaign_id, math.inf)))
            self._set_throttle(c.campaign_id, paced.state)

    def swapped(self, snapshot: Snapshot, previous: Snapshot | None, changed: Iterable[str],
                removed: Iterable[str]) -> None:
        """``snapshot`` replaced ``previous``, bringing ``changed`` new or edited (``Snapshot.changed_since``):
        only those can be new to pacing; and ``removed`` are forgotten now. When pacing last saw a snapshot
        other than ``previous``, its next turn compares every campaign instead (``_new_snapshot``) and the end
        of its round forgets what is gone."""
        if self._turn_of is previous:
            self._new_snapshot(snapshot, changed)
            for gone in removed:
                self.paced.pop(gone, None)
                self.throttle.pop(gone, None)

    def _new_snapshot(self, snapshot: Snapshot, candidates: Iterable[str] | None = None) -> None:
        """Keep the turn on the campaign it had reached (campaigns are sorted by id, so others added or
        removed before it would shift a plain index), and start campaigns never paced at their controller's
        starting throttle (the even controller's slow start) rather than unthrottled until their turn: those
        of ``candidates``, or without them any of the snapshot's (a set difference over every campaign, which
        at 100,000 took 15-30 ms of the event loop; ``swapped`` spares the edge it)."""
        campaigns = snapshot.campaigns
        previous = self._turn_of
        if previous is not None and 0 < self._turn < len(previous.campaigns):
            at = previous.campaigns[self._turn].campaign_id
            self._turn = bisect.bisect_left(campaigns, at, key=lambda c: c.campaign_id)
        self._turn_of = snapshot
        if candidates is None:
            self._forget_walk = True  # what this snapshot dropped is found at the end of the round
        paced = self.paced
        new = snapshot.campaign_ids().difference(paced) if candidates is None else \
            [cid for cid in candidates if cid not in paced]
        for campaign_id in new:
            c = snapshot.campaign(campaign_id)
            assert c is not None  # a campaign of this snapshot
            state = controller_for(c.pacing).start()
            paced[campaign_id] = Paced(c.pacing, state)
            self._set_throttle(campaign_id, state)

    def _set_throttle(self, campaign_id: str, state: Any) -> None:
        p = 0.0 if state.done else float(state.p)
        if p < 1.0:
            self.throttle[campaign_id] = p
        else:  # absent means 1: an auction with nothing to throttle skips the lookups (edge/app.py)
            self.throttle.pop(campaign_id, None)

    def counter_allowance(self, campaign_id: str, day: str, daily_budget: int) -> int:
        return max(0, daily_budget - self.spent(campaign_id, day))
