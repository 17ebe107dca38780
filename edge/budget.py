"""The edge's budget ledger: spend only what the control plane granted this process.

Pure bookkeeping (time and the budget day are passed in). The allocator grants each edge process slices of
a campaign's remaining daily and total budget. When an ad is chosen the ledger reserves its expected cost
(the impression's price for CPM; price x P(click) or x P(conversion), with margin, for CPC and CPA); when
the billable event arrives, ``settle`` releases that reservation and takes the real cost; unrendered
reservations expire back into the allowance. A billable event that finds no allowance is not billed (the
caller marks it ``over_budget``), so spend can never exceed what was granted, and the control plane never
grants more than the budget. Grants carry the campaign-local day: at midnight yesterday's unspent slices
are dropped instead of being spent against today's budget.

(The full escrow-with-leases and PN-counter model is its own issue; this is the simple per-process check.)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


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


@dataclass(frozen=True, slots=True)
class Reservation:
    campaign_id: str
    micros: int
    expires_s: float
    day: str


@dataclass(slots=True)
class BudgetLedger:
    max_reservations: int = 1_000_000
    campaigns: dict[str, CampaignBudget] = field(default_factory=dict)
    # key (impression id) -> reservation; ordered by insertion, and every reservation gets the same TTL, so
    # expiry is a scan from the front that stops at the first live one.
    reservations: OrderedDict[str, Reservation] = field(default_factory=OrderedDict)

    def allowance(self) -> dict[str, int]:
        return {cid: b.available for cid, b in self.campaigns.items() if b.available > 0}

    def allowance_view(self) -> AllowanceView:
        return AllowanceView(self.campaigns)

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
        b.exhausted = False
        b.asked_at = -1e18
        return True

    def grant(self, campaign_id: str, micros: int, *, exhausted: bool, day: str) -> None:
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        if day < b.day:
            return  # a late answer for a day that is over: those micros were yesterday's
        if day > b.day:
            b.day = day
            b.available = 0  # this grant is the new day's first: yesterday's leftovers are not carried over
        b.available += micros
        b.granted += micros
        b.exhausted = exhausted

    def reset(self, campaign_id: str) -> None:
        """The campaign's budget changed (raised budget, resumed): ask again instead of staying exhausted."""
        b = self.campaigns.get(campaign_id)
        if b is not None:
            b.exhausted = False
            b.asked_at = -1e18

    def reserve(self, key: str, campaign_id: str, micros: int, *, expires_s: float) -> bool:
        b = self.campaigns.get(campaign_id)
        if b is None or b.available < micros or micros < 0:
            return False
        if len(self.reservations) >= self.max_reservations or key in self.reservations:
            return False
        b.available -= micros
        b.reserved += micros
        self.reservations[key] = Reservation(campaign_id, micros, expires_s, b.day)
        return True

    def _release(self, key: str) -> None:
        r = self.reservations.pop(key, None)
        if r is None:
            return
        b = self.campaigns[r.campaign_id]
        b.reserved -= r.micros
        if r.day == b.day:
            b.available += r.micros  # yesterday's reservation does not refill today's allowance

    def release(self, key: str) -> None:
        """The event will not be billed (invalid traffic): give its reservation back now, not at expiry."""
        self._release(key)

    def settle(self, key: str, campaign_id: str, cost: int) -> bool:
        """A billable event arrived: release its reservation (if this process holds it) and take the real
        cost. Returns False, taking nothing, when the allowance cannot cover it: the event is not billed."""
        reservation = self.reservations.get(key)
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        if reservation is not None and reservation.day != b.day:
            # Decided yesterday, against yesterday's grants: bill it there, leave today's allowance alone.
            self.reservations.pop(key)
            b.reserved -= reservation.micros
            b.spent += cost
            return True
        self._release(key)
        if b.available < cost:
            b.refused += 1
            return False
        b.available -= cost
        b.spent += cost
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


class AllowanceView:
    """Read-only ``get`` over a ledger, so the auction sees live allowances without a dict copy per request."""

    __slots__ = ("_campaigns",)

    def __init__(self, campaigns: dict[str, CampaignBudget]) -> None:
        self._campaigns = campaigns

    def get(self, campaign_id: str, default: int = 0) -> int:
        b = self._campaigns.get(campaign_id)
        return b.available if b is not None else default
