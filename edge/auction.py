"""The auction: a pure function over an immutable snapshot.

Inputs in (snapshot, request, clock, seeded random, budget allowances), result and per-candidate reasons
out, like prebid-server's winner selection. No I/O, no wall clock, no global random: the HTTP layer passes
all of them in, so the same inputs always give the same auction.

Ranking is by eCPM (micros per thousand impressions): CPM bids as they are, CPC bids times pCTR, CPA bids
times pCTR times pCVR. Pricing is a generalized second price with a reserve: each winner pays what it
needed to keep its slot, converted back into the unit it bid in, never more than its own bid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from replication.calendar import local_hour
from replication.snapshot import Snapshot, SnapshotCampaign, SnapshotCreative


class SupportsAllowance(Protocol):
    def get(self, campaign_id: str, default: int = 0, /) -> int: ...


class SupportsThrottle(Protocol):
    def get(self, campaign_id: str, default: float = 1.0, /) -> float: ...


class Reason(StrEnum):
    """Why a candidate did not win. Stable values: they land in metrics and explain output."""

    TARGETING = "targeting"
    SCHEDULE = "schedule"
    HOUR = "hour_of_day"
    FORMAT = "format"
    BUDGET = "budget"
    PACING = "pacing"  # the campaign's pacing throttle sat this auction out
    BELOW_RESERVE = "below_reserve"
    SAME_ADVERTISER = "same_advertiser"
    OUTRANKED = "outranked"


class NoFill(StrEnum):
    NO_CANDIDATES = "no_candidates"
    ALL_FILTERED = "all_filtered"


@dataclass(frozen=True, slots=True)
class AdRequest:
    placement: str
    slots: int
    format: str
    user: str = ""
    geo: str = ""  # "US-CA": country, dash, subdivision
    device: str = ""
    keywords: tuple[str, ...] = ()
    interests: tuple[str, ...] = ()
    url: str = ""
    # False without consent (GDPR without a TCF string, or Global Privacy Control): no user-level signals.
    personalized: bool = True

    @property
    def country(self) -> str:
        return self.geo.split("-", 1)[0] if self.geo else ""


@dataclass(frozen=True, slots=True)
class Win:
    slot: int
    campaign: SnapshotCampaign
    creative: SnapshotCreative
    ecpm_micros: int
    # Clearing price of the campaign's billable unit: per impression (CPM), per click (CPC), per action (CPA).
    price_micros: int
    # Spend reserved now against the allowance: the impression's cost for CPM; for CPC and CPA the expected
    # cost (price x P(click) [x P(conversion)], with a safety margin), settled when the click or conversion
    # arrives.
    reserve_micros: int


@dataclass(frozen=True, slots=True)
class AuctionResult:
    wins: tuple[Win, ...]
    reasons: Mapping[str, Reason] = field(default_factory=dict)
    candidates: int = 0
    no_fill: NoFill | None = None


def asked_values(request: AdRequest) -> dict[str, tuple[str, ...]]:
    """Per targeting dimension, the values the request brings (empty: it says nothing there)."""
    return {
        "placement": (request.placement,),
        "format": (request.format,),
        "country": (request.country,) if request.country else (),
        "geo": (request.geo,) if request.geo else (),
        "device": (request.device,) if request.device else (),
        "keyword": request.keywords,
        "interest": request.interests,
    }


def retrieve(snapshot: Snapshot, request: AdRequest) -> set[int]:
    """Candidate positions: the intersection over dimensions of (matching postings OR unrestricted), as
    boolean masks over the snapshot's campaigns (``RetrievalIndex``)."""
    index = snapshot.index
    assert index is not None  # built with every snapshot
    result = np.ones(index.size, dtype=bool)
    for dim, values in asked_values(request).items():
        any_mask = index.unrestricted[dim]
        postings = index.positions[dim]
        matched = [postings[v] for v in values if v in postings]
        if matched:
            mask = any_mask.copy()
            for positions in matched:
                mask[positions] = True
            result &= mask
        else:
            result &= any_mask
    return set(np.flatnonzero(result).tolist())


def _local_hour(now_s: float, tz: str, cache: dict[str, int]) -> int:
    hour = cache.get(tz)
    if hour is None:
        hour = local_hour(now_s, tz)
        cache[tz] = hour
    return hour


def ecpm_micros(campaign: SnapshotCampaign, creative: SnapshotCreative) -> float:
    if campaign.bid_type == "cpm":
        return float(campaign.max_bid_micros)
    if campaign.bid_type == "cpc":
        return campaign.max_bid_micros * creative.prior_ctr * 1000
    return campaign.max_bid_micros * creative.prior_ctr * campaign.prior_cvr * 1000


# Reserve this many times the expected click/conversion cost: P(click) is a prior, and an under-reservation
# is what lets a CPC campaign overspend.
RESERVE_MARGIN = 3.0


def expected_cost(campaign: SnapshotCampaign, creative: SnapshotCreative, price: int) -> int:
    if campaign.bid_type == "cpm":
        return price
    p = creative.prior_ctr if campaign.bid_type == "cpc" else creative.prior_ctr * campaign.prior_cvr
    return math.ceil(price * min(1.0, p * RESERVE_MARGIN))


def _unit_price(campaign: SnapshotCampaign, creative: SnapshotCreative, pay_ecpm: float) -> int:
    """Convert the eCPM a winner must pay into its own bid unit, capped at its bid."""
    if campaign.bid_type == "cpm":
        per_unit = pay_ecpm / 1000
        cap = campaign.max_bid_micros / 1000
    elif campaign.bid_type == "cpc":
        per_unit = pay_ecpm / (creative.prior_ctr * 1000)
        cap = campaign.max_bid_micros
    else:
        per_unit = pay_ecpm / (creative.prior_ctr * campaign.prior_cvr * 1000)
        cap = campaign.max_bid_micros
    return max(1, math.ceil(min(per_unit, cap)))


def run_auction(
    snapshot: Snapshot,
    request: AdRequest,
    *,
    now_s: float,
    rng: random.Random,
    allowance: SupportsAllowance,
    reserve_cpm_micros: int | None = None,
    throttle: SupportsThrottle | None = None,
) -> AuctionResult:
    """Run one auction. ``allowance`` maps campaign id -> micros this process may still spend; ``throttle``
    maps campaign id -> the probability its pacing lets it take part (absent: 1)."""
    reserve = snapshot.reserve_cpm_micros if reserve_cpm_micros is None else reserve_cpm_micros
    positions = retrieve(snapshot, request)
    if not positions:
        return AuctionResult(wins=(), candidates=0, no_fill=NoFill.NO_CANDIDATES)

    reasons: dict[str, Reason] = {}
    hours: dict[str, int] = {}
    scored: list[tuple[float, float, SnapshotCampaign, SnapshotCreative]] = []
    for pos in positions:
        c = snapshot.campaigns[pos]
        if now_s < c.start_s or (c.end_s and now_s >= c.end_s):
            reasons[c.campaign_id] = Reason.SCHEDULE
            continue
        if c.hours and _local_hour(now_s, c.timezone, hours) not in c.hours:
            reasons[c.campaign_id] = Reason.HOUR
            continue
        if allowance.get(c.campaign_id, 0) <= 0:
            reasons[c.campaign_id] = Reason.BUDGET
            continue
        if throttle is not None:
            p = throttle.get(c.campaign_id, 1.0)
            if p < 1.0 and rng.random() >= p:
                reasons[c.campaign_id] = Reason.PACING
                continue
        fitting = [k for k in c.creatives if k.format == request.format]
        if not fitting:
            reasons[c.campaign_id] = Reason.FORMAT
            continue
        # Best creative by prior CTR; the random tie-break keeps equal creatives rotating.
        creative = max(fitting, key=lambda k: (k.prior_ctr, rng.random()))
        score = ecpm_micros(c, creative)
        if score < reserve or score <= 0:
            reasons[c.campaign_id] = Reason.BELOW_RESERVE
            continue
        scored.append((score, rng.random(), c, creative))

    scored.sort(key=lambda s: (-s[0], s[1]))
    ranked: list[tuple[float, float, SnapshotCampaign, SnapshotCreative]] = []
    seen_advertisers: set[str] = set()
    for entry in scored:
        advertiser = entry[2].advertiser_id
        if advertiser in seen_advertisers:
            reasons[entry[2].campaign_id] = Reason.SAME_ADVERTISER
            continue
        seen_advertisers.add(advertiser)
        ranked.append(entry)

    wins: list[Win] = []
    slots = max(1, request.slots)
    for position, (score, _, campaign, creative) in enumerate(ranked):
        if len(wins) == slots:
            reasons[campaign.campaign_id] = Reason.OUTRANKED
            continue
        runner_up = ranked[position + 1][0] if position + 1 < len(ranked) else 0.0
        pay = min(score, max(runner_up, float(reserve)))
        price = _unit_price(campaign, creative, pay)
        # The price is known only now: a campaign that cannot afford one billable unit at this price
        # gives its slot to the next candidate instead of overspending.
        if allowance.get(campaign.campaign_id, 0) < price:
            reasons[campaign.campaign_id] = Reason.BUDGET
            continue
        wins.append(
            Win(
                slot=len(wins),
                campaign=campaign,
                creative=creative,
                ecpm_micros=round(score),
                price_micros=price,
                reserve_micros=expected_cost(campaign, creative, price),
            )
        )
    return AuctionResult(
        wins=tuple(wins),
        reasons=reasons,
        candidates=len(positions),
        no_fill=None if wins else NoFill.ALL_FILTERED,
    )
