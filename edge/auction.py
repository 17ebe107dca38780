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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple, Protocol

import numpy as np
from numba import njit, typeof

from edge.ctr import (
    NO_MODEL,
    ModelInputs,
    fill_ctrs,
    mean_ecpm,
    model_inputs,
    predicted_ctr_one,
    prefetch_weights,
    score_one,
)
from edge.frequency import NOTHING_CAPPED, Capped
from edge.prefetch import prefetch, prefetch2
from replication.calendar import local_hour
from replication.columns import BID_TYPES, CampaignColumns, best_by_format, frozen_array
from replication.ctr_model import country_of
from replication.snapshot import (
    CONTEXT_DIMENSIONS,
    DIMENSIONS,
    Lookup,
    RetrievalIndex,
    Snapshot,
    SnapshotCampaign,
    SnapshotCreative,
)

_CPM, _CPA = BID_TYPES.index("cpm"), BID_TYPES.index("cpa")


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
    FREQUENCY_CAP = "frequency_cap"  # this user has seen the campaign (or each fitting creative) enough
    BUDGET = "budget"
    PACING = "pacing"  # the campaign's pacing throttle sat this auction out
    BELOW_RESERVE = "below_reserve"
    BELOW_QUALITY = "below_quality"  # its predicted CTR is under the snapshot's quality floor (``min_ctr``)
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
    site: str = ""  # the publisher: the host of ``url`` (``replication.ctr_model.site_of``), a click model feature
    # The user's fresh behavioural segments, freshest first (``edge.audiences.fresh_segments``; they also join
    # ``interests`` to target): the click model reads them.
    segments: tuple[str, ...] = ()

    @property
    def country(self) -> str:
        return country_of(self.geo)


# Win and AuctionResult are named tuples, immutable like the frozen dataclasses they were, and built in a
# fraction of the time: a frozen dataclass sets each field through object.__setattr__, 3.2 us for a Win and
# 2.5 for a result on this machine, a tenth of an auction at 10,000 campaigns (one-off timing, 2cc1c40).
class Win(NamedTuple):
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
    # The click-through rate the auction priced with: the creative's prior, or the click model's prediction for
    # this context (ranking added an exploration bonus on top; pricing does not).
    ctr: float = 0.0


_NONE: Mapping = MappingProxyType({})


class AuctionResult(NamedTuple):
    wins: tuple[Win, ...]
    # Every candidate's fate by campaign id, filled only when the auction ran with ``explain``.
    reasons: Mapping[str, Reason] = _NONE
    # How many candidates each reason took out (always filled; metrics count these). Without ``explain``,
    # candidates ranked below what filling the slots needed are counted as outranked without being checked
    # for the quality floor, budget or pacing (so ``below_quality`` counts only the candidates the walk met).
    reason_counts: Mapping[Reason, int] = _NONE
    candidates: int = 0
    no_fill: NoFill | None = None


# Per targeting dimension, the values a request brings there (empty: it says nothing there).
_ASKED: Mapping[str, Callable[[AdRequest], tuple[str, ...]]] = {
    "placement": lambda r: (r.placement,),
    "format": lambda r: (r.format,),
    "country": lambda r: (country,) if (country := r.country) else (),
    "geo": lambda r: (r.geo,) if r.geo else (),
    "device": lambda r: (r.device,) if r.device else (),
    "keyword": lambda r: r.keywords,
    "interest": lambda r: r.interests,
}
if set(_ASKED) != set(DIMENSIONS):  # a dimension the table misses would fail every request it restricts
    raise RuntimeError(f"_ASKED must cover exactly the snapshot's dimensions {DIMENSIONS}")


def retrieve(snapshot: Snapshot, request: AdRequest) -> np.ndarray:
    """Candidate positions, ascending: the intersection over dimensions of (matching postings OR
    unrestricted), over the snapshot's bitsets (``RetrievalIndex``) in one compiled pass (``_candidates``).
    Dimensions no campaign is restricted in keep everyone and are skipped without looking at the request.
    The auction runs the same pass inside its own kernel (``_select``)."""
    index = snapshot.index
    assert index is not None  # built with every snapshot
    return _candidates(index.size, index.bits, index.flat, _plan(index, request))


def _plan(index: RetrievalIndex, request: AdRequest) -> np.ndarray:
    """What retrieval reads for ``request``, as int64, per restricted dimension: how many rows of
    ``index.bits`` to OR and then AND, and their numbers (the answers of the request's values there that
    have one, else the dimension's unrestricted campaigns), then how many spans of ``index.flat`` widen them
    (the positions of the campaigns naming the request's other values), then each span's start and end. A
    value no campaign names adds nothing. A value with an answer is OR-ed in, not widened by its span even
    when another value's answer is there: a popular value's span is long (2,500 of 10,000 campaigns'
    positions, the p99 of a request's widening in ``adserver bench --only auction`` when only the first
    answer was used, one-off), and each position costs two scattered reads where a row costs one word per
    64 campaigns.

    The dimensions of the request's context (placement, format, geo, device: one value each) come first,
    and their part is remembered per index and context (``RetrievalIndex.memo``): a context recurs across
    requests, its part was about half of this function's cost (a one-off profile), and the dimension order
    makes no difference to the AND.
    """
    memo = index.memo
    rest = index.other_lookups
    key = (request.placement, request.format, request.geo, request.device)
    known = memo.get(key)
    if known is None:
        if len(memo) >= _CONTEXTS_KEPT:
            memo.clear()
        known = memo[key] = _plan_part(index.context_lookups, request)
    return np.array(known + _plan_part(rest, request) if rest else known, dtype=np.int64)


# What ``_plan``'s key determines (CONTEXT_DIMENSIONS): the country is the geo's.
if set(CONTEXT_DIMENSIONS) != {"placement", "format", "country", "geo", "device"}:
    raise RuntimeError("_plan's memo key must determine exactly the snapshot's CONTEXT_DIMENSIONS")
# Contexts an index remembers the plans of (a few hundred bytes each, an estimate: a short tuple of ints and its
# key); all are forgotten when it is full.
_CONTEXTS_KEPT = 16_384


def _plan_part(lookups: tuple[Lookup, ...], request: AdRequest) -> tuple[int, ...]:
    """``_plan`` over some of the index's lookups."""
    plan: list[int] = []
    for dim, spans, rows, everyone in lookups:
        answers: list[int] = []
        widen: list[int] = []
        for value in _ASKED[dim](request):
            if (answer := rows.get(value)) is not None:
                answers.append(answer)
            elif (span := spans.get(value)) is not None:
                widen += span
        if not answers:
            answers.append(everyone)
        plan += (len(answers), *answers, len(widen) >> 1, *widen)
    return tuple(plan)


def _debruijn() -> tuple[np.uint64, np.ndarray]:
    """The 64-bit De Bruijn multiplier and its table: for a word with one bit set, the table at (word times
    the multiplier) >> 58 is that bit's index: the usual stand-in for count-trailing-zeros, which numba
    offers only as a private intrinsic."""
    multiplier = 0x03F79D71B4CB0A89
    table = np.zeros(64, dtype=np.int64)
    for bit in range(64):
        table[(((1 << bit) * multiplier) & 0xFFFFFFFFFFFFFFFF) >> 58] = bit
    return np.uint64(multiplier), table


_DEBRUIJN, _BIT_INDEX = _debruijn()


@njit(nogil=True)
def _candidates(size: int, bits: np.ndarray, flat: np.ndarray, plan: np.ndarray) -> np.ndarray:
    """The positions whose bit survives AND-ing every planned dimension's rows of ``bits`` (OR-ed together),
    each first widened by its spans of positions in ``flat`` (``_plan``), ascending, in an array of their
    own. ``_select`` runs the same steps in its workspace."""
    acc = np.empty((size + 63) >> 6, dtype=np.uint64)
    out = np.empty(_intersect(size, bits, flat, plan, acc, np.empty(_widest(plan), dtype=np.uint64)),
                   dtype=np.int64)
    _positions(acc, out)
    return out


@njit(nogil=True)
def _widest(plan: np.ndarray) -> int:
    """The most positions one dimension of ``plan`` widens by: the buffer ``_intersect`` needs for them."""
    most = 0
    i = 0
    while i < plan.shape[0]:
        first = i + 2 + plan[i]
        last = first + 2 * plan[first - 1]
        widened = 0
        for s in range(first, last, 2):
            widened += plan[s + 1] - plan[s]
        if widened > most:
            most = widened
        i = last
    return most


@njit(nogil=True)
def _intersect(size: int, bits: np.ndarray, flat: np.ndarray, plan: np.ndarray, acc: np.ndarray,
               kept: np.ndarray) -> int:
    """AND every planned dimension into ``acc`` (one bit per campaign, ``(size + 63) >> 6`` words) and count
    the bits left. Widening without a copy of the rows: (rows | those) & acc keeps acc's bits at those
    positions, so remember them (in ``kept``, at least ``_widest(plan)`` long) before the AND and put them
    back after."""
    words = (size + 63) >> 6
    for w in range(words):
        acc[w] = ~np.uint64(0)
    if size & 63:  # no bit past the last campaign, whatever the rows hold
        acc[words - 1] = (np.uint64(1) << np.uint64(size & 63)) - np.uint64(1)
    i = 0
    while i < plan.shape[0]:
        rows = plan[i]
        row = plan[i + 1]
        first = i + 2 + rows
        last = first + 2 * plan[first - 1]
        k = 0
        for s in range(first, last, 2):
            for q in range(plan[s], plan[s + 1]):
                p = flat[q]
                kept[k] = acc[p >> 6] & (np.uint64(1) << np.uint64(p & 63))
                k += 1
        if rows == 1:
            for w in range(words):
                acc[w] &= bits[row, w]
        else:
            for w in range(words):
                either = bits[row, w]
                for r in range(i + 2, i + 1 + rows):
                    either |= bits[plan[r], w]
                acc[w] &= either
        k = 0
        for s in range(first, last, 2):
            for q in range(plan[s], plan[s + 1]):
                p = flat[q]
                acc[p >> 6] |= kept[k]
                k += 1
        i = last
    n = 0
    for w in range(words):
        x = acc[w]
        while x:
            x &= x - np.uint64(1)
            n += 1
    return n


@njit(nogil=True)
def _positions(acc: np.ndarray, out: np.ndarray) -> None:
    """The positions of ``acc``'s set bits, ascending, into ``out`` (as long as there are bits)."""
    i = 0
    for w in range(acc.shape[0]):
        x = acc[w]
        while x:
            low = x & (~x + np.uint64(1))
            out[i] = (w << 6) + _BIT_INDEX[(low * _DEBRUIJN) >> np.uint64(58)]
            i += 1
            x ^= low


@lru_cache(maxsize=4096)
def _zone_hours(timezones: tuple[str, ...], quarter: int) -> np.ndarray:
    """The local hour in each zone during one UTC quarter-hour. Every zone in use today is offset from UTC
    by a multiple of 15 minutes and changes its offset on such a boundary, so one lookup per zone serves
    the whole quarter-hour, and an auction pays for none."""
    return np.array([local_hour(quarter * 900, tz) for tz in timezones], dtype=np.int64)


def ecpm_scores(columns: CampaignColumns, fmt: str) -> np.ndarray:
    """``ecpm_micros`` of every campaign with its best creative of ``fmt`` (NaN: it has none), computed once
    per snapshot and format. Same operations in the same order as the scalar formula, so both give
    identical floats."""
    fmt = columns.format_key(fmt)
    cached = columns.memo.get(("ecpm", fmt))
    if cached is not None:
        return cached
    column = columns.formats.get(fmt)
    if column is None:
        scores = np.full(columns.size, np.nan)
    else:
        ctr, bid = column.ctr, columns.max_bid
        by_ctr = bid * ctr
        by_ctr = np.where(columns.bid_type == _CPA, by_ctr * columns.prior_cvr, by_ctr) * 1000
        # A CPM campaign without a creative of the format has no score either.
        scores = np.where(columns.bid_type == _CPM, np.where(np.isnan(ctr), np.nan, bid), by_ctr)
    scores.flags.writeable = False
    columns.memo[("ecpm", fmt)] = scores
    return scores


def cpm_bids(columns: CampaignColumns, fmt: str) -> np.ndarray:
    """What each campaign ranks on with a click model if it bids CPM: its bid, whatever the model predicts
    (NaN: it bids per click or action, or has no creative of ``fmt``), once per snapshot and format. The
    auction's kernel reads it instead of the campaign's model record: at 1,000,000 campaigns this column
    is 8 MB, the records 80 (a cache miss to memory per CPM candidate)."""
    fmt = columns.format_key(fmt)
    return columns.memoized(("cpm", fmt), lambda: frozen_array(
        np.where(columns.bid_type == _CPM, ecpm_scores(columns, fmt), np.nan)))


# What a candidate can fail before the ranking, in the order the checks apply. A candidate's fate is the code
# (index here) of the first check it failed, or _PASSED: one small integer per candidate, which the compiled
# sifting pass (``_sift``) counts and filters by.
_FATES = (Reason.SCHEDULE, Reason.HOUR, Reason.FORMAT, Reason.FREQUENCY_CAP, Reason.BELOW_RESERVE)
_CAPPED = _FATES.index(Reason.FREQUENCY_CAP)
_RESERVE = _FATES.index(Reason.BELOW_RESERVE)
_PASSED = len(_FATES)


@dataclass(frozen=True, slots=True)
class _Checks:
    """The filters that depend on the campaign and the time alone, for every campaign of a snapshot: per
    campaign the code of the first one it fails (``_FATES``; ``_PASSED`` for none), uint8."""

    second: int
    fate: np.ndarray


def _checks(columns: CampaignColumns, fmt: str, reserve: int, now_s: float) -> _Checks:
    """The campaign-level filters as of ``now_s`` per format and reserve, kept per second of the clock and
    computed again only when one can have turned (``_checks_turned``: a schedule's start or end, a quarter
    hour with hour targeting): a request then reads its candidates' verdicts from one array instead of
    evaluating five filters. The reserve verdict is on the campaign's own score; the auction's kernel
    judges the reserve again on each candidate's score for this request (a click model's, a capped best
    creative's stand-in), so of that verdict only "passed everything before the reserve" is final."""
    second = math.floor(now_s)
    fmt = columns.format_key(fmt)
    key = ("checks", fmt, reserve)
    cached = columns.memo.get(key)
    if cached is not None and cached.second == second:
        return cached
    # Either way: a request can bring an earlier second than the last one (its clock was read before an await).
    if cached is not None and not _checks_turned(columns, *sorted((cached.second, second))):
        # Nothing turned: the same verdicts. Recomputing them took 2 ms per format each second at 100,000
        # campaigns (0.2-0.4 ms at 10,000), one request's wait every second (one-off timing, f080e2a).
        made = columns.memo[key] = _Checks(second, cached.fate)
        return made
    # start_s and end_s are whole seconds, so "start <= now < end" is the same test on the second.
    checks = [(Reason.SCHEDULE, (columns.start_s <= second) & (second < columns.end_s))]
    if columns.any_hours:
        hours_now = _zone_hours(columns.timezones, second // 900)[columns.timezone]
        checks.append((Reason.HOUR, ((columns.hour_bits >> hours_now) & 1).astype(bool)))
    scores = ecpm_scores(columns, fmt)
    checks.append((Reason.FORMAT, ~np.isnan(scores)))
    with np.errstate(invalid="ignore"):  # NaN (no creative of the format) compares False, as wanted
        checks.append((Reason.BELOW_RESERVE, (scores >= reserve) & (scores > 0)))
    fate = np.full(columns.size, _PASSED, dtype=np.uint8)
    for reason, ok in reversed(checks):  # the last write wins: the first check failed
        fate[~ok] = _FATES.index(reason)
    fate.flags.writeable = False
    made = _Checks(second, fate)
    columns.memo[key] = made
    return made


def _checks_turned(columns: CampaignColumns, before: int, now: int) -> bool:
    """Whether a campaign-level verdict can differ at second ``now`` from second ``before`` (earlier): a
    campaign's start or end lies in (before, now] (``start <= t`` and ``t < end`` flip exactly there), or a
    quarter hour began in between while some campaign targets hours of the day (``_zone_hours``). The format
    and reserve verdicts do not move within a snapshot."""
    if columns.any_hours and before // 900 != now // 900:
        return True
    edges = _schedule_edges(columns)
    i = int(np.searchsorted(edges, before, side="right"))  # the first edge after ``before``
    return i < len(edges) and edges[i] <= now


def _schedule_edges(columns: CampaignColumns) -> np.ndarray:
    """Every campaign's start and end, sorted and unique, once per snapshot (139 ms at 1,000,000 campaigns,
    one-off: ``warm_up`` builds it)."""
    return columns.memoized("schedule-edges", lambda: frozen_array(np.unique(np.concatenate(
        (columns.start_s, columns.end_s)))))


class _PerFormat(NamedTuple):
    """What the auction's kernel reads per campaign for one format and reserve, as of one second of the
    clock: the campaign-level verdicts (``_checks``), the campaigns' own scores and CTRs (with a click model
    the kernel scores candidates itself; without a creative of the format no candidate gets past the format
    check, so the all-NaN scores stand in for the CTRs), and the CPM bids (``cpm_bids``)."""

    fate: np.ndarray
    scores: np.ndarray
    ctrs: np.ndarray
    cpm: np.ndarray
    second: int


def _per_format(columns: CampaignColumns, fmt: str, reserve: int,
                now_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``_PerFormat``'s arrays for a request: one memo lookup in the same second as the last request of the
    format and reserve, instead of the four (each with its own ``format_key`` and memo lookup) it stands
    for."""
    found = columns.memo.get(("per-format", fmt, reserve))
    if found is not None and found.second == math.floor(now_s):
        return found[:4]
    checks = _checks(columns, fmt, reserve, now_s)
    scores = ecpm_scores(columns, fmt)
    column = columns.formats.get(fmt)
    made = _PerFormat(checks.fate, scores, scores if column is None else column.ctr, cpm_bids(columns, fmt),
                      checks.second)
    if column is not None:  # not for a format no campaign has: every string a caller sends would be a key
        columns.memo[("per-format", fmt, reserve)] = made
    return made[:4]


def ecpm_micros(campaign: SnapshotCampaign, ctr: float) -> float:
    """What one thousand impressions are worth to the campaign, at click-through rate ``ctr``."""
    if campaign.bid_type == "cpm":
        return float(campaign.max_bid_micros)
    if campaign.bid_type == "cpc":
        return campaign.max_bid_micros * ctr * 1000
    return campaign.max_bid_micros * ctr * campaign.prior_cvr * 1000


# Reserve this many times the expected click/conversion cost: P(click) is a prior, and an under-reservation
# is what lets a CPC campaign overspend.
RESERVE_MARGIN = 3.0


def expected_cost(campaign: SnapshotCampaign, ctr: float, price: int) -> int:
    if campaign.bid_type == "cpm":
        return price
    p = (ctr if campaign.bid_type == "cpc" else ctr * campaign.prior_cvr) * RESERVE_MARGIN
    return math.ceil(price * p) if p < 1.0 else price  # not min(): see _finish


def _unit_price(campaign: SnapshotCampaign, ctr: float, pay_ecpm: float) -> int:
    """Convert the eCPM a winner must pay into its own bid unit, capped at its bid."""
    if campaign.bid_type == "cpm":
        per_unit = pay_ecpm / 1000
        cap = campaign.max_bid_micros / 1000
    elif campaign.bid_type == "cpc":
        per_unit = pay_ecpm / (ctr * 1000)
        cap = campaign.max_bid_micros
    else:
        per_unit = pay_ecpm / (ctr * campaign.prior_cvr * 1000)
        cap = campaign.max_bid_micros
    price = math.ceil(per_unit if per_unit < cap else cap)  # not min() and max(): see _finish
    return price if price > 1 else 1


def run_auction(
    snapshot: Snapshot,
    request: AdRequest,
    *,
    now_s: float,
    rng: random.Random,
    allowance: SupportsAllowance,
    reserve_cpm_micros: int | None = None,
    throttle: SupportsThrottle | None = None,
    capped: Capped = NOTHING_CAPPED,
    explain: bool = False,
) -> AuctionResult:
    """Run one auction. ``allowance`` maps campaign id -> micros this process may still spend; ``throttle``
    maps campaign id -> the probability its pacing lets it take part (absent: 1); ``capped`` names what this
    user has seen enough of (``edge.frequency``): a capped campaign sits out, a capped creative gives way to
    its campaign's next best one of the format. The reserve is the placement's own if the snapshot gives it one
    (``placement_reserves``), else the snapshot's, unless ``reserve_cpm_micros`` says otherwise.

    The filters that depend on the campaign alone (schedule, hour of day, format, reserve) are evaluated for
    every campaign when one can have turned (``_checks``), and one compiled pass (``_select``) retrieves the
    candidates, applies those verdicts, the caps and the reserve to each, scores the ones left (with the
    click model, if any) and sorts the head of the ranking. The rest (budget, pacing, one ad per advertiser)
    needs a dict lookup or a random draw per campaign, so it runs only down the ranking, as far as filling
    the slots and pricing the last one needs: each of those draws is independent, so skipping the ones
    nobody would look at changes no outcome's probability. With ``explain`` the walk goes on to the end and
    ``reasons`` gives every candidate's fate; the wins are the same either way for the same ``rng`` state."""
    if reserve_cpm_micros is not None:
        reserve = reserve_cpm_micros
    elif snapshot.placement_reserves:  # looked up only if any: 700 instructions an auction (callgrind, one-off)
        reserve = snapshot.placement_reserves.get(request.placement, snapshot.reserve_cpm_micros)
    else:
        reserve = snapshot.reserve_cpm_micros
    index, columns = snapshot.index, snapshot.columns
    assert index is not None and columns is not None  # built with every snapshot
    fmt = request.format
    fate, scores, ctrs, cpm = _per_format(columns, fmt, reserve, now_s)
    model = snapshot.click_model
    inputs = NO_MODEL if model is None else model_inputs(snapshot, fmt, request.placement, request.country,
                                                         request.device, now_s, request.site, request.segments)
    overrides: dict[int, tuple[SnapshotCreative, ...]] = {}
    caps = _NO_CAPS
    plan = _plan(index, request)
    if index.size <= SMALL_INVENTORY and model is None and not capped and not explain:
        positions = _candidates(index.size, index.bits, index.flat, plan)
        if not len(positions):
            return AuctionResult(wins=(), candidates=0, no_fill=NoFill.NO_CANDIDATES)
        if len(positions) <= SIFT_IN_PYTHON:
            head_lists, counts = _sift_few(positions, fate, scores, ctrs)
            return _finish(snapshot, request, len(positions), head_lists, None, overrides, counts, {}, reserve, rng,
                           allowance, throttle, explain=False)
    if capped:
        def ctr_of(campaign: SnapshotCampaign, creative: SnapshotCreative) -> tuple[float, float]:
            if model is None:
                return creative.prior_ctr, creative.prior_ctr
            return predicted_ctr_one(model, campaign, creative, request.placement, request.country,
                                     request.device, now_s, request.site, request.segments)

        caps = _caps(snapshot, index, plan, scores, fmt, capped, ctr_of, overrides)
    work = _WORK
    ints, floats = work.ints, work.floats
    while True:
        args = (index.size, index.bits, index.flat, plan, fate, scores, ctrs, cpm, inputs, caps, float(reserve), HEAD,
                explain, ints, floats)
        candidates, live, first, front = _kernel(columns, fmt, model is None, args)(*args)
        if live >= 0:
            break
        # Too small for the bitset, or for the candidates (known only once the bitset is done): grow it, again.
        ints, floats = work.grow(first, front)
    if not candidates:
        return AuctionResult(wins=(), candidates=0, no_fill=NoFill.NO_CANDIDATES)
    # One slice and one list each for what the walk reads first: the counts and the best candidates' positions,
    # and their scores and CTRs (``_layout``). The rest stays in the workspace until the walk gets there.
    counted = ints[:_CODES + first].tolist()
    counts = {_FATES[code]: n for code, n in enumerate(counted[:_PASSED]) if n}
    reasons: dict[str, Reason] = {}
    if explain and counts:
        campaigns = snapshot.campaigns
        where, fates = _layout(ints, floats, candidates, live, True)[2].tolist()
        reasons = {campaigns[p].campaign_id: _FATES[code] for p, code in zip(where, fates, strict=True)
                   if code != _PASSED}
    sorted_head = (counted[_CODES:], floats[:first].tolist(), floats[candidates:candidates + first].tolist())
    rest = _Rest(ints, floats, candidates, first, front, live, inputs) if first < live else None
    return _finish(snapshot, request, candidates, sorted_head, rest, overrides, counts, reasons, reserve, rng,
                   allowance, throttle, explain=explain)


class _Rest(NamedTuple):
    """The candidates that passed beyond what the walk reads first, left in the workspace (``ints``,
    ``floats``, laid out for ``candidates`` as ``_layout`` says) at [start, stop) of the live ones, of them
    [start, front) sorted, with the click model's inputs: a CPM campaign's CTR there is NaN until the walk
    gets to it (``_extend``)."""

    ints: np.ndarray
    floats: np.ndarray
    candidates: int
    start: int
    front: int
    stop: int
    inputs: ModelInputs


# A small inventory's auction without a click model, caps or explain retrieves first, and with up to
# SIFT_IN_PYTHON candidates sifts them in Python (``_sift_few``): for a handful, numba's call (typing and
# unboxing some twenty arguments, boxing two arrays) costs more than the work. With twenty campaigns
# (``adserver bench --only handler``) going through ``_select`` instead cost 20,000 more instructions per
# request, 4% of the handler (callgrind, one-off). Up to SMALL_INVENTORY campaigns retrieving twice, when
# there are more candidates, costs little: a bitset is at most eight words.
SMALL_INVENTORY = 512
SIFT_IN_PYTHON = 8


def _sift_few(positions: np.ndarray, fate_of: np.ndarray, scores: np.ndarray,
              ctrs: np.ndarray) -> tuple[tuple[list[int], list[float], list[float]], dict[Reason, int]]:
    """``_sift`` for a handful of candidates scored per campaign, read one by one: the ones that passed as
    (positions, scores, CTRs) lists in ranking order, and how many met each other fate. The same as
    ``_sift``'s (tested against it)."""
    counts: dict[Reason, int] = {}
    live = []
    for pos in positions.tolist():
        code = fate_of.item(pos)
        if code == _PASSED:
            live.append((scores.item(pos), pos, ctrs.item(pos)))
        else:
            counts[_FATES[code]] = counts.get(_FATES[code], 0) + 1
    live.sort(key=lambda entry: -entry[0])  # stable: equal scores keep position order, as _sift's
    return ([entry[1] for entry in live], [entry[0] for entry in live], [entry[2] for entry in live]), counts


Caps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ``_caps`` for a user who has seen nothing enough: arrays of the types ``_caps`` makes, so that ``_select`` is
# compiled once for both.
_NO_CAPS: Caps = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))


def _caps(snapshot: Snapshot, index: RetrievalIndex, plan: np.ndarray, scores: np.ndarray, fmt: str,
          capped: Capped, ctr_of: Callable[[SnapshotCampaign, SnapshotCreative], tuple[float, float]],
          overrides: dict[int, tuple[SnapshotCreative, ...]]) -> Caps:
    """The user's caps as ``_select`` applies them, by campaign position, ascending: the campaigns that sit
    out (capped themselves, or every creative of the format capped), and the candidates whose best
    creatives are capped, with the CTR and score of their best remaining one (whose creatives go in
    ``overrides``). A user has seen few campaigns, so this loops over what is capped; ``scores`` (the
    campaigns' own) says which have a creative of the format at all. Rescoring one with a click model is
    ``predicted_ctr_one``'s Python, tens of microseconds, so only a candidate's is: with creative caps the
    candidates are retrieved here once more (``plan``; a few microseconds), before ``_select`` does."""
    by_id = snapshot.by_id
    out = {pos for campaign_id in capped.campaigns if (pos := by_id.get(campaign_id)) is not None}
    rescored: list[tuple[int, float, float]] = []
    candidates = _candidates(index.size, index.bits, index.flat, plan) if capped.creatives else _NO_CAPS[0]
    for campaign_id, creative_ids in capped.creatives.items():
        pos = by_id.get(campaign_id)
        if pos is None or pos in out or math.isnan(scores[pos]):
            continue
        at = int(np.searchsorted(candidates, pos))
        if at == len(candidates) or candidates[at] != pos:  # not a candidate: the kernel never looks it up
            continue
        campaign = snapshot.campaigns[pos]
        best = best_by_format(k for k in campaign.creatives if k.creative_id not in creative_ids).get(fmt)
        if best is None:  # every creative of the format capped
            out.add(pos)
            continue
        overrides[pos] = best
        mean, ranking = ctr_of(campaign, best[0])
        rescored.append((pos, mean, ecpm_micros(campaign, ranking)))
    rescored.sort()
    return (np.array(sorted(out), dtype=np.int64), np.array([r[0] for r in rescored], dtype=np.int64),
            np.array([r[1] for r in rescored], dtype=np.float64), np.array([r[2] for r in rescored], dtype=np.float64))


class _Workspace(threading.local):
    """The buffers ``_select`` works and answers in, one pair per thread, kept from one auction to the next.
    Allocating its dozen arrays and boxing the two it answered in cost about 8,400 of an auction's 180,000
    instructions at 10,000 campaigns (callgrind, one-off), and fresh memory is cold in the cache. An auction
    reads what it needs of them before it returns, so nothing of one auction's outlives it."""

    def __init__(self) -> None:
        self.ints = np.empty(4096, dtype=np.int64)
        self.floats = np.empty(4096, dtype=np.float64)

    def grow(self, ints: int, floats: int) -> tuple[np.ndarray, np.ndarray]:
        """Buffers at least ``ints`` and ``floats`` long: the kept ones, grown (doubled, or to what is asked
        if that is more, so that a growing inventory reallocates a few times, not on every larger auction)
        up to ``WORKSPACE_KEPT`` entries each; past that, ones for this auction alone, so that one huge
        auction (a request that targets nothing, at a million campaigns) does not hold its memory for
        good."""
        if self.ints.shape[0] < ints <= WORKSPACE_KEPT:
            self.ints = np.empty(min(max(ints, 2 * self.ints.shape[0]), WORKSPACE_KEPT), dtype=np.int64)
        if self.floats.shape[0] < floats <= WORKSPACE_KEPT:
            self.floats = np.empty(min(max(floats, 2 * self.floats.shape[0]), WORKSPACE_KEPT), dtype=np.float64)
        return (self.ints if ints <= self.ints.shape[0] else np.empty(ints, dtype=np.int64),
                self.floats if floats <= self.floats.shape[0] else np.empty(floats, dtype=np.float64))


WORKSPACE_KEPT = 1 << 21  # entries: 16 MB per buffer, about 340,000 candidates
_WORK = _Workspace()


def _kernel(columns: CampaignColumns, fmt: str, priors_only: bool,
            args: tuple[object, ...]) -> Callable[..., tuple[int, int, int, int]]:
    """``_select``'s compiled code for ``args``, to be called past numba's dispatcher: the dispatcher works out
    the type of each of its fifteen arguments on every call and looks up the compiled version for them, 9,400
    of an auction's 171,000 instructions at 10,000 campaigns (callgrind, one-off). The compiled code trusts
    its arguments to have the types it was compiled for, so they are worked out here, once per campaign
    columns (a snapshot's; ``dataclasses.replace`` shares them), format and whether there is a click model:
    what the arrays of a snapshot are is fixed when it is built or decoded, a click model's weights are
    float32 (read-only as ``ClickModel`` builds and decodes them; a writable array is read the same), and the
    rest (the plan, the caps, the workspace, the numbers) have one type by construction, which
    ``test_one_compiled_version_serves_every_path`` checks on every call of a varied run. A format no campaign
    has goes through the dispatcher: remembered, every string a caller sends would be a key, and worked out
    anew, every such request would pay the typing in Python."""
    key = ("select-kernel", fmt, priors_only)
    found = columns.memo.get(key)
    if found is None:
        if fmt not in columns.formats:
            return _select
        signature = tuple(typeof(arg) for arg in args)
        compiled = _select.overloads.get(signature)
        if compiled is None:
            _select.compile(signature)  # or loads it from the cache (``edge.compile_cache``)
            compiled = _select.overloads[signature]
        found = columns.memo[key] = compiled.entry_point
    return found


@njit(nogil=True)
def _select(size: int, bits: np.ndarray, flat: np.ndarray, plan: np.ndarray, fate_of: np.ndarray,
            scores: np.ndarray, ctrs: np.ndarray, cpm: np.ndarray, inputs: ModelInputs, caps: Caps, reserve: float,
            head: int, explain: bool, ints: np.ndarray, floats: np.ndarray) -> tuple[int, int, int, int]:
    """The auction from retrieval to the ranking walk in one compiled call: the candidates (``_candidates``'
    steps), then ``_sift``, in a ``_Workspace``'s ``ints`` and ``floats``. One call instead of three
    (retrieval, the click model's scoring, the sifting) with their arrays handed back and forth through
    Python, and no array allocated or boxed.

    Returns (candidates, then ``_sift``'s three numbers), or when the workspace is too small (candidates,
    -1, the ints and the floats it needs): nothing of it is then usable; grow it and call again. The
    bitset and the widening buffer take the end of ``ints``, the candidates' positions go where ``_sift``
    keeps them for explain (``_layout``)."""
    words = (size + 63) >> 6
    most = _widest(plan)
    tail = ints.shape[0] - words - most
    if tail < _CODES:
        return 0, -1, _CODES + words + most, 0
    acc = ints[tail:tail + words].view(np.uint64)
    m = _intersect(size, bits, flat, plan, acc, ints[tail + words:].view(np.uint64))
    if _CODES + 6 * m > tail or 6 * m > floats.shape[0]:
        return m, -1, _CODES + 6 * m + words + most, 6 * m
    positions = ints[_CODES + m:_CODES + 2 * m]
    _positions(acc, positions)
    n, first, front = _sift(positions, fate_of, scores, ctrs, cpm, inputs, caps, reserve, head, explain, ints,
                            floats)
    return m, n, first, front


def _layout(ints: np.ndarray, floats: np.ndarray, m: int, n: int,
            explain: bool) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """``_sift``'s answer for ``m`` candidates, ``n`` of them live, taken apart: (the count per fate code,
    the live positions in ranking order, with ``explain`` every candidate's position and fate as two rows,
    else no rows, the live scores and CTRs as two rows). Views, not copies: the next auction overwrites them.

    ``ints``: the counts (``_CODES``), the live positions in ranking order (``m`` places, ``n`` used), every
    candidate's position, every candidate's fate, then scratch (3 ``m``). ``floats``: the live scores in
    ranking order, their CTRs (``m`` places each), then scratch (4 ``m``)."""
    return (ints[:_CODES].tolist(), ints[_CODES:_CODES + n],
            ints[_CODES + m:_CODES + 3 * m].reshape(2, m) if explain else ints[:0].reshape(2, 0),
            floats[:2 * m].reshape(2, m)[:, :n])


# How many candidates ahead ``_sift`` asks for a candidate's data (``edge.prefetch``): far enough for a miss to
# memory to land before the loop gets there, near enough not to evict what it asked for. 8 did as well and 24
# worse in side-by-side runs of ``adserver bench --only auction --auction-sizes 10000`` (one-off).
_AHEAD = 12
_CODES = _PASSED + 1  # fate codes: the length of the counts that open ``_sift``'s integers


@njit(nogil=True)
def _sift(positions: np.ndarray, fate_of: np.ndarray, scores: np.ndarray, ctrs: np.ndarray, cpm: np.ndarray,
          inputs: ModelInputs, caps: Caps, reserve: float, head: int, explain: bool, ints: np.ndarray,
          floats: np.ndarray) -> tuple[int, int, int]:
    """Everything between retrieval and the ranking walk, in one compiled pass over the candidates: each one's
    fate (the first check it failed: the campaign-level ones from ``fate_of``, then the user's caps, then
    the reserve on this request's score), how many met each fate, and the ones that passed (positions,
    scores and CTRs), the best ``head`` of them and everything tied with the last of those sorted first by
    descending score (stable: ties keep position order), the rest after them unsorted. As numpy expressions
    this was some thirty calls whose fixed costs outweighed the work: ``auction_p50_us_10k`` of ``adserver
    bench --only auction`` went from 60.1 us on fe8b5f5 to 50.2 with a first version of this pass (aaf030d).

    A candidate's score and CTR: the caps' own for a campaign whose best creatives are capped (``_caps``),
    else the click model's (``score_one``) when ``inputs`` has records, else the campaign's own (``scores``,
    ``ctrs``: per campaign). Only candidates that pass the campaign-level checks are scored, and the reserve
    verdict of ``fate_of`` (on the campaign's own score) is replaced by one on the candidate's. A CPM
    candidate with a click model ranks on its bid (``cpm``): its CTR is predicted here only if it is among
    what the walk reads first, and the others' come back NaN, for whoever reads further to fill
    (``fill_ctrs``).

    Answers in ``ints`` and ``floats`` (at least 6 ``len(positions)`` plus ``_CODES`` and 6 ``len(positions)``
    long; laid out as ``_layout`` reads them, ``positions`` may be their place there) with: how many
    passed, how many of them the walk reads first (the best ``FIRST`` and their ties: only theirs of the CPM
    campaigns' CTRs are predicted here), and how many are sorted."""
    records, values, mix, columns, weights, shift, own, exploration = inputs
    modelled = records.shape[0] > 0
    out, over, over_ctr, over_score = caps
    m = positions.shape[0]
    by_fate = ints[:_CODES]
    ranked = ints[_CODES:_CODES + m]
    where = ints[_CODES + m:_CODES + 2 * m]
    fates = ints[_CODES + 2 * m:_CODES + 3 * m]
    live = ints[_CODES + 3 * m:_CODES + 4 * m]
    order = ints[_CODES + 4 * m:_CODES + 5 * m]
    scratch = ints[_CODES + 5 * m:_CODES + 6 * m]
    ranked_scores, ranked_ctrs = floats[:m], floats[m:2 * m]
    live_scores, live_ctrs = floats[2 * m:3 * m], floats[3 * m:4 * m]
    neg, kth_work = floats[4 * m:5 * m], floats[5 * m:6 * m]
    for code in range(_CODES):  # a loop, not ``by_fate[:] = 0``: slice assignments cost numba seconds to compile
        by_fate[code] = 0
    n = 0
    o = v = 0  # the next capped campaign and rescored one at or after this candidate (both ascending)
    for j in range(m):
        if j + _AHEAD < m:
            q = positions[j + _AHEAD]
            prefetch(fate_of, q)
            if modelled:
                prefetch(cpm, q)
                prefetch2(records, q, 0)  # its record: one cache line (``edge.ctr._records``)
            else:
                prefetch(scores, q)
                prefetch(ctrs, q)
        if modelled and j + _AHEAD // 2 < m:  # its record has arrived by now: the weights it reads
            q = positions[j + _AHEAD // 2]
            if fate_of[q] >= _RESERVE and math.isnan(cpm[q]):
                prefetch_weights(q, records, mix, columns, weights, shift)
        pos = positions[j]
        fate = fate_of[pos]
        score = ctr = 0.0
        if fate >= _RESERVE:  # passed, or failed the reserve on the campaign's own score (the last check)
            while o < out.shape[0] and out[o] < pos:
                o += 1
            while v < over.shape[0] and over[v] < pos:
                v += 1
            if o < out.shape[0] and out[o] == pos:
                fate = _CAPPED
            else:
                # The reserve holds against the candidate's mean eCPM (``worth``), not the score it ranks on,
                # which carries the click model's exploration bonus: a publisher's floor is what an
                # impression is expected to pay, and pricing (``_finish``) never charges past the bid.
                if v < over.shape[0] and over[v] == pos:
                    ctr, score = over_ctr[v], over_score[v]
                elif modelled:
                    score = cpm[pos]
                    if math.isnan(score):
                        ctr, score = score_one(pos, records, values, mix, columns, weights, shift, own,
                                               exploration)
                    else:  # a CPM campaign: its bid, and its CTR only if the walk reads it first (below)
                        ctr = math.nan
                else:
                    ctr, score = ctrs[pos], scores[pos]
                # A CPM campaign's worth is its bid, as is a campaign's ranked on without a click model.
                worth = mean_ecpm(pos, values, ctr) if modelled and math.isnan(cpm[pos]) else score
                fate = _PASSED if worth >= reserve and score > 0.0 else _RESERVE  # NaN fails too
        if explain:
            where[j] = pos  # a no-op when ``positions`` is already there (``_select``)
            fates[j] = fate
        by_fate[fate] += 1
        if fate == _PASSED:
            live[n] = pos
            live_scores[n] = score
            live_ctrs[n] = ctr
            neg[n] = -score
            n += 1
    # Order: the front (the best ``head`` and their ties) sorted, then the rest as they came.
    kth = np.inf
    if n > head:
        for i in range(n):
            kth_work[i] = neg[i]
        kth = _kth_smallest(kth_work[:n], head - 1)
    front = 0
    for i in range(n):
        if neg[i] <= kth:
            order[front] = i
            front += 1
    _stable_sort(order[:front], neg, scratch)
    rest = front
    for i in range(n):
        if neg[i] > kth:
            order[rest] = i
            rest += 1
    for i in range(n):
        ranked[i] = live[order[i]]
        ranked_scores[i] = live_scores[order[i]]
        ranked_ctrs[i] = live_ctrs[order[i]]
    # What the walk reads first: the best FIRST and their ties (most auctions look at no more).
    first = front if front < FIRST else FIRST
    while first < front and ranked_scores[first] == ranked_scores[first - 1]:
        first += 1
    if modelled:  # their CPM campaigns' CTRs; the others' wait until the walk gets there (``_extend``)
        fill_ctrs(ranked[:first], ranked_ctrs[:first], inputs)
    return n, first, front


# Selection and sorting written out rather than numpy's np.partition and np.argsort: numba took 5 s to
# compile the one and 1 s the other, paid by every edge process at start (0.3 s each as written here; all
# one-off timings of a first call).
@njit(nogil=True)
def _kth_smallest(values: np.ndarray, k: int) -> float:
    """The ``k``-th smallest (from 0) of ``values``, which it reorders: Hoare's quickselect."""
    lo, hi = 0, values.shape[0] - 1
    while lo < hi:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return values[k]


@njit(nogil=True)
def _stable_sort(which: np.ndarray, keys: np.ndarray, scratch: np.ndarray) -> None:
    """Order ``which`` (indexes into ``keys``) by ascending key in place, equal keys in their order in
    ``which``: a bottom-up merge sort through ``scratch`` (at least as long), O(n log n) however many keys
    are equal."""
    n = which.shape[0]
    src, dst = which, scratch[:n]
    width = 1
    passes = 0
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if j >= hi or (i < mid and keys[src[i]] <= keys[src[j]]):
                    dst[k] = src[i]
                    i += 1
                else:
                    dst[k] = src[j]
                    j += 1
        src, dst = dst, src
        width *= 2
        passes += 1
    if passes & 1:  # the last pass wrote the scratch: copy it back
        for k in range(n):
            which[k] = scratch[k]


def warm_up(snapshot: Snapshot) -> None:
    """Compile ``_select`` (once per process: its arrays have the same types for every snapshot, with a click
    model or without), and build what the snapshot's first request of each format (and of a format no
    campaign has) would otherwise build: the campaigns' scores and, with a click model, the model's columns;
    and the schedule edges ``_checks_turned`` reads. The model's columns of a format took 121-127 ms at
    100,000 campaigns (1.2 s at 1,000,000), and before, only the common format's were built here: each other
    format's first request after a snapshot swap waited that long (one-off timing, f080e2a; at 1,000,000 it
    put ``auction_p99_us_1m`` at 2 s)."""
    index, columns = snapshot.index, snapshot.columns
    assert index is not None and columns is not None  # built with every snapshot
    _schedule_edges(columns)
    for fmt in (*columns.formats, ""):  # "": every format no campaign has (``format_key``)
        scores = ecpm_scores(columns, fmt)
        column = columns.formats.get(fmt)
        inputs = NO_MODEL if snapshot.click_model is None else model_inputs(snapshot, fmt, "", "", "", 0.0)
        # Size 0 and an empty plan: no candidates, only the compile (the first time) for this snapshot's arrays.
        _select(0, index.bits, index.flat, np.zeros(0, dtype=np.int64), _NO_FATES, scores,
                scores if column is None else column.ctr, cpm_bids(columns, fmt), inputs, _NO_CAPS, 0.0, HEAD, False,
                _WORK.ints, _WORK.floats)
        if snapshot.click_model is not None:  # as ``_extend`` calls it, on slices of the workspace
            fill_ctrs(_WORK.ints[1:1], _WORK.floats[1:1], inputs)


_NO_FATES = frozen_array(np.zeros(0, dtype=np.uint8))  # read-only like ``_Checks.fate``: the same compiled version


def _finish(snapshot: Snapshot, request: AdRequest, candidates: int,
            sorted_head: tuple[list[int], list[float], list[float]],
            rest: _Rest | None,
            overrides: dict[int, tuple[SnapshotCreative, ...]], counts: dict[Reason, int],
            reasons: dict[str, Reason], reserve: int, rng: random.Random, allowance: SupportsAllowance,
            throttle: SupportsThrottle | None, *, explain: bool) -> AuctionResult:
    """Walk the ranking of the candidates that passed to fill the slots and price them: ``sorted_head`` the
    best of them in order (positions, scores, CTRs), ``rest`` the others (``_Rest``).

    Each step takes the next campaign by score and applies the per-campaign filters (the quality floor on its
    mean CTR, budget, pacing, one per advertiser; a candidate failing one is counted under its reason; its CTR
    is known by then, as ``_extend`` says) and picks its creative: an eligible
    entry. An entry is priced when the next eligible one, its runner-up, is known: at the runner-up's mean
    eCPM (its expected value, ``ecpm_micros`` at its mean CTR), not the score it ranked on, which carries the
    click model's exploration bonus: a winner pays for what the runner-up's impressions are worth, not for
    the runner-up's optimism. Equal scores come out in random order (a Fisher-Yates shuffle done one step at
    a time, so only the ties that are reached cost a draw).

    An advertiser holds its place from its entry on, so its other campaigns ranked below are passed over
    while the entry waits for its runner-up. If the entry then cannot afford its price, the advertiser has
    no slot after all: those passed-over campaigns (``shelved``) are priced in turn against the same
    runner-up (nothing between them and it was eligible), and with none able to pay, the advertiser's
    campaigns further down compete again. The outcome is the ranking's, as if the entry had been filtered
    out for its budget from the start.

    Turning every candidate into Python objects was a fifth of a large auction, while the walk rarely goes
    past the first few: only the best ``FIRST`` come as lists, then the rest of the sorted head if the walk
    gets there, then the others, sorted only then (``_extend``; ``_sift`` puts every tie of an entry on the
    same side of each cut, so a run of equal scores never straddles one). Same order as one stable sort of
    all of them.

    Written for the interpreter's sake (this was a third of an auction's instructions at 10,000 campaigns,
    callgrind, one-off): one loop with its state in fast locals (it was a generator of entries and a loop
    pricing them: 87k instructions to unpack and walk a 3-slot auction at 10,000 campaigns, 76k now,
    callgrind, one-off), no ``min`` or ``max`` (a builtin call each, about 700 instructions in CPython 3.11),
    named tuples built from positional arguments (keywords go through a dict)."""
    positions, scores, ctrs = sorted_head
    wins: list[Win] = []
    assert snapshot.columns is not None
    # No column for a format no campaign has: then there is nothing to walk either.
    column = snapshot.columns.formats.get(request.format)
    campaigns, best = snapshot.campaigns, () if column is None else column.best
    marked = reasons if explain else None  # where the walk notes each candidate's fate, if anywhere
    slots = request.slots if request.slots > 1 else 1
    floor = float(reserve)
    advertisers: set[str] = set()
    pending: SnapshotCampaign | None = None  # the last eligible entry, waiting for its runner-up
    pending_score = pending_ctr = 0.0
    pending_creative = None
    # The pending entry's advertiser's other campaigns passed over since it became pending: (walk index,
    # campaign), in ranking order.
    shelved: list[tuple[int, SnapshotCampaign]] = []
    # Without a click model (and so without its exploration bonus) a score is its campaign's mean eCPM.
    exact = snapshot.click_model is None
    quality = snapshot.min_ctr
    group_end = 0  # where the run of equal scores the walk is in ends
    i = 0
    while True:
        campaign: SnapshotCampaign | None = None
        if i < len(positions):
            if i >= group_end:  # a new score: find where its run of equals ends
                end = i + 1
                while end < len(scores) and scores[end] == scores[i]:
                    end += 1
                group_end = end
            if group_end - i > 1:  # equal scores: draw which of the rest comes next
                j = i + rng.randrange(group_end - i)
                positions[i], positions[j] = positions[j], positions[i]
                ctrs[i], ctrs[j] = ctrs[j], ctrs[i]  # equal eCPMs can come from different bids and CTRs
            pos = positions[i]
            campaign = campaigns[pos]
            i += 1
            if ctrs[i - 1] < quality:  # NaN (no creative of the format) never gets this far
                _mark(counts, marked, campaign, _QUALITY)
                continue
            if allowance.get(campaign.campaign_id, 0) <= 0:
                _mark(counts, marked, campaign, _BUDGET)
                continue
            if throttle is not None:
                p = throttle.get(campaign.campaign_id, 1.0)
                if p < 1.0 and rng.random() >= p:
                    _mark(counts, marked, campaign, _PACING)
                    continue
            if campaign.advertiser_id in advertisers:
                _mark(counts, marked, campaign, _SAME_ADVERTISER)
                if pending is not None and campaign.advertiser_id == pending.advertiser_id:
                    shelved.append((i - 1, campaign))
                continue
            advertisers.add(campaign.advertiser_id)
        elif rest is not None:
            rest = _extend(rest, positions, scores, ctrs)  # the walk got past what it had
            continue
        if pending is not None:
            if len(wins) < slots:
                runner_up = 0.0
                if campaign is not None:
                    runner_up = scores[i - 1] if exact else ecpm_micros(campaign, ctrs[i - 1])
                pay = runner_up if runner_up > floor else floor
                # The price is known only now: a campaign that cannot afford one billable unit at this
                # price gives its slot to the next candidate instead of overspending.
                price = _unit_price(pending, pending_ctr, pending_score if pending_score < pay else pay)
                if allowance.get(pending.campaign_id, 0) >= price:
                    wins.append(Win(len(wins), pending, pending_creative, round(pending_score), price,
                                    expected_cost(pending, pending_ctr, price), pending_ctr))
                else:
                    _mark(counts, marked, pending, _BUDGET)
                    advertisers.discard(pending.advertiser_id)
                    # The advertiser has no slot: its passed-over campaigns try, priced as the entry was above
                    # (those lines stay inline there, where every auction runs them: see the docstring's end).
                    for at, sibling in shelved:
                        _unmark(counts, marked, sibling, _SAME_ADVERTISER)
                        score, ctr = scores[at], ctrs[at]
                        price = _unit_price(sibling, ctr, score if score < pay else pay)
                        if allowance.get(sibling.campaign_id, 0) >= price:
                            fitting = overrides.get(positions[at]) or best[positions[at]]
                            wins.append(Win(len(wins), sibling, fitting[0] if len(fitting) == 1 else
                                            fitting[rng.randrange(len(fitting))], round(score), price,
                                            expected_cost(sibling, ctr, price), ctr))
                            advertisers.add(sibling.advertiser_id)
                            break
                        _mark(counts, marked, sibling, _BUDGET)
            else:  # explain walks on past the slots
                _mark(counts, marked, pending, _OUTRANKED)
        if campaign is None:
            break
        if shelved:
            shelved = []
        pending, pending_score, pending_ctr = campaign, scores[i - 1], ctrs[i - 1]
        fitting = overrides.get(pos) or best[pos]
        pending_creative = fitting[0] if len(fitting) == 1 else fitting[rng.randrange(len(fitting))]
        if len(wins) >= slots and not explain:  # this one, the last win's runner-up, is outranked
            _mark(counts, marked, campaign, _OUTRANKED)
            break
    # Every candidate that passed and is neither a win nor counted under a reason was never reached by the
    # walk: ranked below what the slots needed.
    unvisited = candidates - len(wins) - sum(counts.values())
    if unvisited:
        counts[_OUTRANKED] = counts.get(_OUTRANKED, 0) + unvisited
    return AuctionResult(tuple(wins), reasons, counts, candidates, None if wins else NoFill.ALL_FILTERED)


HEAD = 32  # candidates a ranking sorts up front (see _sift)
# Of those, the walk reads this many (and their ties) first: their CTRs predicted, turned into Python lists. An
# auction walked 2.8 candidates on average in ``adserver bench --only auction`` (one-off count).
FIRST = 8
# The reasons the walk marks, read once: a member of a StrEnum costs CPython 3.11 a call of the enum's
# metaclass hook (``__getattr__``) on every read.
_BUDGET, _PACING, _SAME_ADVERTISER, _OUTRANKED = Reason.BUDGET, Reason.PACING, Reason.SAME_ADVERTISER, Reason.OUTRANKED
_QUALITY = Reason.BELOW_QUALITY


def _mark(counts: dict[Reason, int], reasons: dict[str, Reason] | None, campaign: SnapshotCampaign,
          reason: Reason) -> None:
    counts[reason] = counts.get(reason, 0) + 1
    if reasons is not None:
        reasons[campaign.campaign_id] = reason


def _unmark(counts: dict[Reason, int], reasons: dict[str, Reason] | None, campaign: SnapshotCampaign,
            reason: Reason) -> None:
    """Take back a ``_mark`` of ``campaign`` under ``reason``."""
    if counts[reason] == 1:
        del counts[reason]
    else:
        counts[reason] -= 1
    if reasons is not None:
        del reasons[campaign.campaign_id]


def _extend(rest: _Rest, positions: list[int], scores: list[float], ctrs: list[float]) -> _Rest | None:
    """Append the next candidates to the walk's lists: the rest of the sorted head if any is left (what is
    left of ``rest`` is returned), else all the others, sorted like it."""
    ints, floats, m, start, front, stop, inputs = rest
    sort = start >= front
    end = stop if sort else front
    live, more_scores, more_ctrs = ints[_CODES + start:_CODES + end], floats[start:end], floats[m + start:m + end]
    if inputs[0].shape[0]:  # with a click model, the CPM campaigns' CTRs are still to predict (``_sift``)
        fill_ctrs(live, more_ctrs, inputs)
    if sort:
        order = np.argsort(-more_scores, kind="stable")
        live, more_scores, more_ctrs = live[order], more_scores[order], more_ctrs[order]
    positions.extend(live.tolist())
    scores.extend(more_scores.tolist())
    ctrs.extend(more_ctrs.tolist())
    return None if end == stop else rest._replace(start=end)
