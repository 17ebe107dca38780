"""The edge's budget ledger: spend only what the control plane granted this process.

Pure bookkeeping (time is passed in). The allocator grants each edge process slices of a campaign's
remaining daily and total budget; the ledger reserves an impression's cost when the ad is chosen, turns the
reservation into spend when the impression beacon arrives, and releases it when it expires unrendered.
Because the control plane never grants more than the budget, overspend is bounded by the click and
conversion charges in flight, not by how long a region is cut off. (The full escrow-with-leases and
PN-counter model is its own issue; this is the simple per-process check it will replace.)
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
    exhausted: bool = False
    asked_at: float = -1e18


@dataclass(slots=True)
class BudgetLedger:
    max_reservations: int = 200_000
    campaigns: dict[str, CampaignBudget] = field(default_factory=dict)
    # impression id -> (campaign id, micros, expires at); ordered by insertion so expiry is a cheap scan.
    reservations: OrderedDict[str, tuple[str, int, float]] = field(default_factory=OrderedDict)

    def allowance(self) -> dict[str, int]:
        return {cid: b.available for cid, b in self.campaigns.items() if b.available > 0}

    def allowance_view(self) -> AllowanceView:
        return AllowanceView(self.campaigns)

    def grant(self, campaign_id: str, micros: int, *, exhausted: bool) -> None:
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        b.available += micros
        b.granted += micros
        b.exhausted = exhausted

    def reset(self, campaign_id: str) -> None:
        """The campaign's budget changed (new day, raised budget): ask again instead of staying exhausted."""
        b = self.campaigns.get(campaign_id)
        if b is not None:
            b.exhausted = False
            b.asked_at = -1e18

    def reserve(self, impression_id: str, campaign_id: str, micros: int, *, expires_s: float) -> bool:
        b = self.campaigns.get(campaign_id)
        if b is None or b.available < micros or micros < 0:
            return False
        if len(self.reservations) >= self.max_reservations or impression_id in self.reservations:
            return False
        b.available -= micros
        b.reserved += micros
        self.reservations[impression_id] = (campaign_id, micros, expires_s)
        return True

    def confirm(self, impression_id: str) -> int | None:
        """The impression rendered: its reservation becomes spend. None when nothing was reserved here."""
        entry = self.reservations.pop(impression_id, None)
        if entry is None:
            return None
        campaign_id, micros, _ = entry
        b = self.campaigns[campaign_id]
        b.reserved -= micros
        b.spent += micros
        return micros

    def charge(self, campaign_id: str, micros: int) -> None:
        """A click or conversion bills now. It is real money, so it is taken even past the allowance."""
        b = self.campaigns.setdefault(campaign_id, CampaignBudget())
        b.available -= micros
        b.spent += micros

    def expire(self, now_s: float) -> int:
        released = 0
        while self.reservations:
            impression_id, (campaign_id, micros, expires_s) = next(iter(self.reservations.items()))
            if expires_s > now_s:
                break
            del self.reservations[impression_id]
            b = self.campaigns[campaign_id]
            b.reserved -= micros
            b.available += micros
            released += micros
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
