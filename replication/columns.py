"""The snapshot's campaigns as columns: one numpy array per attribute the auction filters or scores on.

Built once per snapshot (next to the retrieval masks), so that an auction over a thousand candidates is a
handful of vector operations instead of a Python loop over a thousand campaign objects. The columns hold
plain data only; what to do with them (the eCPM formula, the filters' order) stays in ``edge.auction``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from replication.snapshot import SnapshotCampaign, SnapshotCreative

T = TypeVar("T")

ALL_HOURS = (1 << 24) - 1
BID_TYPES = ("cpm", "cpc", "cpa")


@dataclass(frozen=True, slots=True)
class FormatColumn:
    """Per campaign, its best creatives of one format: the highest prior CTR (NaN: none of this format) and
    the creatives that share it, so the auction rotates equal creatives by drawing among them."""

    ctr: np.ndarray  # float64
    best: Sequence[tuple[SnapshotCreative, ...]]  # () where the campaign has no creative of the format


@dataclass(frozen=True, slots=True)
class CampaignColumns:
    size: int
    start_s: np.ndarray  # float64
    end_s: np.ndarray  # float64; +inf for an open-ended campaign
    hour_bits: np.ndarray  # int64: bit h set = serves in local hour h (all 24 set: no hour targeting)
    timezone: np.ndarray  # intp index into ``timezones``
    timezones: tuple[str, ...]
    bid_type: np.ndarray  # int8 index into BID_TYPES
    max_bid: np.ndarray  # float64 micros (per thousand for CPM, per unit otherwise)
    prior_cvr: np.ndarray  # float64
    formats: Mapping[str, FormatColumn]
    any_hours: bool  # some campaign targets hours of the day (else the hour filter is skipped)
    # Arrays derived on first use by the auction (say, each format's prior-based eCPM): the same for every
    # request against this snapshot, so computed once; never part of equality.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def memoized(self, key: Any, build: Callable[[], T]) -> T:
        """``build()`` once per snapshot, kept in ``memo`` (which lives exactly as long as the snapshot)."""
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = build()
        return found

    def format_key(self, fmt: str) -> str:
        """``fmt`` as a memo key: every format no campaign has is one key (""), not one per string a caller
        sends (that would grow the memo without bound)."""
        return fmt if fmt in self.formats else ""

    @classmethod
    def build(cls, campaigns: Sequence[SnapshotCampaign]) -> CampaignColumns:
        n = len(campaigns)
        timezones = tuple(sorted({c.timezone for c in campaigns}))
        tz_pos = {tz: i for i, tz in enumerate(timezones)}
        bid_pos = {b: i for i, b in enumerate(BID_TYPES)}
        per_format: dict[str, tuple[np.ndarray, list[tuple[SnapshotCreative, ...]]]] = {}
        for fmt in sorted({k.format for c in campaigns for k in c.creatives}):
            per_format[fmt] = (np.full(n, np.nan), [()] * n)
        for pos, c in enumerate(campaigns):
            for fmt, fitted in best_by_format(c.creatives).items():
                ctr, best = per_format[fmt]
                ctr[pos] = fitted[0].prior_ctr
                best[pos] = fitted
        hour_bits = frozen_array(np.fromiter((_hour_bits(c.hours) for c in campaigns), dtype=np.int64, count=n))
        return cls(
            size=n,
            start_s=frozen_array(np.fromiter((c.start_s for c in campaigns), dtype=np.float64, count=n)),
            end_s=frozen_array(np.fromiter((c.end_s or np.inf for c in campaigns), dtype=np.float64, count=n)),
            hour_bits=hour_bits,
            any_hours=bool((hour_bits != ALL_HOURS).any()),
            timezone=frozen_array(np.fromiter((tz_pos[c.timezone] for c in campaigns), dtype=np.intp, count=n)),
            timezones=timezones,
            # An unknown bid type is scored as CPA (the most conservative formula); the control plane
            # validates bid types before they reach a snapshot.
            bid_type=frozen_array(np.fromiter((bid_pos.get(c.bid_type, 2) for c in campaigns), dtype=np.int8, count=n)),
            max_bid=frozen_array(np.fromiter((c.max_bid_micros for c in campaigns), dtype=np.float64, count=n)),
            prior_cvr=frozen_array(np.fromiter((c.prior_cvr for c in campaigns), dtype=np.float64, count=n)),
            formats=MappingProxyType({fmt: FormatColumn(frozen_array(ctr), tuple(best))
                                      for fmt, (ctr, best) in per_format.items()}),
        )


def best_by_format(creatives: Iterable[SnapshotCreative]) -> dict[str, tuple[SnapshotCreative, ...]]:
    """Per format, the creatives with the highest prior CTR, in the order given: what the auction serves of a
    campaign in a slot of that format (one of them drawn at random when there are several). The snapshot's
    columns hold them per campaign (``FormatColumn.best``); the auction asks again for a campaign whose best
    creatives this user has seen enough of, without those."""
    best: dict[str, tuple[SnapshotCreative, ...]] = {}
    for k in creatives:
        held = best.get(k.format)
        if held is None or k.prior_ctr > held[0].prior_ctr:
            best[k.format] = (k,)
        elif k.prior_ctr == held[0].prior_ctr:
            best[k.format] = (*held, k)
    return best


def _hour_bits(hours: frozenset[int]) -> int:
    if not hours:
        return ALL_HOURS
    bits = 0
    for h in hours:
        if 0 <= h < 24:  # the control plane validates hours; a stray value must not shift past 63
            bits |= 1 << h
    return bits


def frozen_array(array: np.ndarray) -> np.ndarray:
    """Read-only: a snapshot is shared by every request, so nothing may write into its arrays."""
    array.flags.writeable = False
    return array
