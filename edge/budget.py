"""The edge's budget ledger: spend only what the control plane granted this process.

Pure bookkeeping (time and the budget day are passed in). The allocator grants each edge process slices of
a campaign's remaining daily and total budget. When an ad is chosen the ledger reserves its expected cost
(the impression's price for CPM; price x P(click) or x P(conversion), with margin, for CPC and CPA); when
the billable event arrives, ``settle`` releases that reservation and takes the real cost; unrendered
reservations expire back into the allowance. A billable event that finds no allowance is not billed (the
caller marks it ``over_budget``), so spend can never exceed what was granted, and the control plane never
grants more than the budget. Grants carry the campaign-local day: at midnight yesterday's unspent slices
are dropped instead of being spent against today's budget.

Allowances are held in a leased *account* (see ``control_plane.allowances``): every grant answer renews the
lease, measured from when the request left this process, so this copy of the lease always ends first. When
it runs out (the allocator is unreachable) the ledger stops spending at once, moves what is left into a
*return* for the old account and opens a new one; the return is sent once the old account has no
reservations left, and the allocator re-grants it. Without any lease (unit tests, no allocator) the ledger
spends its grants freely.

Every movement is also staged as PN-counter increments (``pn``) for the replicated spend counter: P takes
reservations and charges, N takes releases and refunds, under ``"r"`` (in flight) and ``"c"`` (charged).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# Indices into a staged PN entry: reservations (P, N) then charges (P, N).
RES_P, RES_N, CHG_P, CHG_N = range(4)


@dataclass(slots=True)
class CampaignBudget:
    available: int = 0
    granted: int = 0
    spent: int = 0
    reserved: int = 0
    refused: int = 0  # billable events not billed for lack of allowance
    exhausted: bool = False
    asked_at: float = -1e18
    day: str = ""
    counter: bool = False  # the "counter" baseline: admitted against the replicated counter, not grants


class Reservation(NamedTuple):  # one per ad shown: a tuple is the cheapest immutable record to build
    campaign_id: str
    micros: int
    expires_s: float
    day: str
    account: str = ""


_new_reservation = tuple.__new__


@dataclass(slots=True)
class BudgetLedger:
    max_reservations: int = 1_000_000
    campaigns: dict[str, CampaignBudget] = field(default_factory=dict)
    # key (impression id) -> reservation; ordered by insertion, and every reservation gets the same TTL, so
    # expiry is a scan from the front that stops at the first live one.
    reservations: OrderedDict[str, Reservation] = field(default_factory=OrderedDict)
    worker_id: str = "w"
    epoch: int = 0
    lease_until: float = math.inf  # campaign-clock end of the account's lease; inf: no leases in force
    live: bool = True
    # closed account -> campaign -> micros never used; sent once the account holds no reservations
    returns: dict[str, dict[str, int]] = field(default_factory=dict)
    open_reservations: dict[str, int] = field(default_factory=dict)  # account -> reservations outstanding
    # (campaign, day) -> [reserved, released, charged, refunded] since the last drain, for the spend CRDT
    pn: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # campaign -> its CampaignBudget.available, kept in step by every method that changes it: the auction reads
    # it per candidate, and a plain dict's C-level get costs a fraction of a Python-level view's
    available_by_campaign: dict[str, int] = field(default_factory=dict)

    account: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.account = f"{self.worker_id}.{self.epoch}"

    def _stage(self, campaign_id: str, day: str, index: int, micros: int) -> None:
        entry = self.pn.get((campaign_id, day))
        if entry is None:
            entry = self.pn[(campaign_id, day)] = [0, 0, 0, 0]
        entry[index] += micros

    def drain_pn(self) -> dict[tuple[str, str], list[int]]:
        staged, self.pn = self.pn, {}
        return staged

    def renew(self, lease_until: float) -> None:
        """A grant answer renewed the account's lease until ``lease_until`` (campaign clock)."""
        self.lease_until = lease_until
        self.live = True

    def lapse(self, now_s: float, *, force: bool = False) -> bool:
        """Close the account when its lease has run out (or the allocator refused to renew it: ``force``):
        stop spending, move what is left into a return, open the next account. True when it closed."""
        if not force and (not self.live or now_s < self.lease_until):
            return False
        closed = self.account
        back = self.returns.setdefault(closed, {})
        for campaign_id, b in self.campaigns.items():
            if b.available > 0 and not b.counter:
                back[campaign_id] = back.get(campaign_id, 0) + b.available
                b.available = 0
                self.available_by_campaign[campaign_id] = 0
            b.asked_at = -1e18
        self.epoch += 1
        self.account = f"{self.worker_id}.{self.epoch}"
        self.live = False
        self.lease_until = -math.inf
        return True

    def add_return(self, account: str, campaign_id: str, micros: int) -> None:
        if micros > 0:
            back = self.returns.setdefault(account, {})
            back[campaign_id] = back.get(campaign_id, 0) + micros

    def closable_returns(self) -> dict[str, dict[str, int]]:
        """Returns of closed accounts whose reservations have all settled or expired; removed once taken."""
        ready = {a: r for a, r in self.returns.items() if not self.open_reservations.get(a)}
        for a in ready:
            del self.returns[a]
        return ready

    def unused(self) -> dict[str, tuple[int, str]]:
        """What this account has not used, per campaign and its day, zeros included (a spent-out campaign
        must overwrite the allocator's last figure, or a reclaim would hand that figure back)."""
        return {cid: (b.available, b.day) for cid, b in self.campaigns.items() if not b.counter and b.day}

    def allowance(self) -> dict[str, int]:
        return {cid: b.available for cid, b in self.campaigns.items() if b.available > 0}

    def allowance_view(self) -> Mapping[str, int]:
        """Live and read-only by convention: campaign -> micros this process may still spend."""
        return self.available_by_campaign

    def available(self, campaign_id: str) -> int:
        b = self.campaigns.get(campaign_id)
        return b.available if b is not None else 0

    def new_day(self, campaign_id: str, day: str) -> bool:
        """Enter the campaign-local ``day``. Returns True when it is newer: yesterday's slices are dropped."""
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        if day <= b.day:
            return False
        b.day = day
        b.available = 0
        self.available_by_campaign[campaign_id] = 0
        b.exhausted = False
        b.asked_at = -1e18
        return True

    def set_counter_allowance(self, campaign_id: str, day: str, micros: int) -> None:
        """The counter baseline: what this replica believes is left of the budget is the allowance."""
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        b.counter = True
        b.day = max(b.day, day)
        b.available = self.available_by_campaign[campaign_id] = max(0, micros)

    def grant(self, campaign_id: str, micros: int, *, exhausted: bool, day: str) -> None:
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        if day < b.day:
            return  # a late answer for a day that is over: those micros were yesterday's
        if day > b.day:
            b.day = day
            b.available = 0  # this grant is the new day's first: yesterday's leftovers are not carried over
        b.available += micros
        self.available_by_campaign[campaign_id] = b.available
        b.granted += micros
        b.exhausted = exhausted

    def reset(self, campaign_id: str) -> None:
        """The campaign's budget changed (raised budget, resumed): ask again instead of staying exhausted."""
        b = self.campaigns.get(campaign_id)
        if b is not None:
            b.exhausted = False
            b.asked_at = -1e18

    def reserve(self, key: str, campaign_id: str, micros: int, *, expires_s: float,
                now_s: float | None = None) -> bool:
        """``now_s``: refuse past the lease's end even before the next tick notices (a stalled event loop
        must not spend an expired lease)."""
        b = self.campaigns.get(campaign_id)
        if b is None or b.available < micros or micros < 0:
            return False
        if not b.counter and (not self.live or (now_s is not None and now_s >= self.lease_until)):
            return False
        reservations = self.reservations
        if len(reservations) >= self.max_reservations or key in reservations:
            return False
        b.available -= micros
        self.available_by_campaign[campaign_id] = b.available
        b.reserved += micros
        account, day = self.account, b.day
        # One of these per ad shown, so it is written for speed: the tuple built without NamedTuple.__new__'s
        # Python frame, and _stage inlined.
        reservations[key] = _new_reservation(Reservation, (campaign_id, micros, expires_s, day, account))
        open_reservations = self.open_reservations
        open_reservations[account] = open_reservations.get(account, 0) + 1
        entry = self.pn.get((campaign_id, day))
        if entry is None:
            entry = self.pn[(campaign_id, day)] = [0, 0, 0, 0]
        entry[RES_P] += micros
        return True

    def _release(self, key: str) -> None:
        r = self.reservations.pop(key, None)
        if r is None:
            return
        b = self.campaigns[r.campaign_id]
        b.reserved -= r.micros
        self._stage(r.campaign_id, r.day, RES_N, r.micros)
        self.open_reservations[r.account] = self.open_reservations.get(r.account, 1) - 1
        if r.day != b.day:
            return  # yesterday's reservation does not refill today's allowance
        if r.account != self.account:
            back = self.returns.setdefault(r.account, {})  # a closed account's: it goes back with the return
            back[r.campaign_id] = back.get(r.campaign_id, 0) + r.micros
        else:
            b.available += r.micros
            self.available_by_campaign[r.campaign_id] = b.available

    def release(self, key: str) -> None:
        """The event will not be billed (invalid traffic): give its reservation back now, not at expiry."""
        self._release(key)

    def settle(self, key: str, campaign_id: str, cost: int) -> bool:
        """A billable event arrived: release its reservation (if this process holds it) and take the real
        cost. Returns False, taking nothing, when the allowance cannot cover it: the event is not billed."""
        reservation = self.reservations.get(key)
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        if reservation is not None and (reservation.day != b.day or reservation.account != self.account) \
                and cost <= reservation.micros:
            # Decided against yesterday's grants or a closed account's: bill it there (the reservation covers
            # it) and leave today's allowance alone; what the reservation held beyond the cost goes back.
            self.reservations.pop(key)
            b.reserved -= reservation.micros
            b.spent += cost
            self._stage(campaign_id, reservation.day, RES_N, reservation.micros)
            self._stage(campaign_id, reservation.day, CHG_P, cost)
            self.open_reservations[reservation.account] = self.open_reservations.get(reservation.account, 1) - 1
            if reservation.day == b.day and reservation.micros > cost:
                back = self.returns.setdefault(reservation.account, {})
                back[campaign_id] = back.get(campaign_id, 0) + reservation.micros - cost
            return True
        self._release(key)
        if b.available < cost or not (self.live or b.counter):
            b.refused += 1
            return False
        b.available -= cost
        self.available_by_campaign[campaign_id] = b.available
        b.spent += cost
        self._stage(campaign_id, b.day, CHG_P, cost)
        return True

    def expire(self, now_s: float) -> int:
        released = 0
        while self.reservations:
            key, r = next(iter(self.reservations.items()))
            if r.expires_s > now_s:
                break
            self._release(key)
            released += r.micros
        return released

    def wants(self, targets: dict[str, int], *, now_s: float, retry_s: float) -> dict[str, int]:
        """Campaigns below their low-water mark (half the target) and how much to ask for each."""
        asks: dict[str, int] = {}
        for campaign_id, target in targets.items():
            b = self.campaigns.setdefault(campaign_id, CampaignBudget())
            if b.exhausted and now_s - b.asked_at < retry_s * 20:
                continue
            if b.available * 2 < target and now_s - b.asked_at >= retry_s:
                asks[campaign_id] = target - b.available
                b.asked_at = now_s
        return asks
