"""Time-decay multi-touch attribution, the reference arithmetic (pure).

The report runs the same rule in ClickHouse (``storage._TIME_DECAY_SQL``); this is the definition the SQL is
tested against and the one to read: every conversion hands out one unit of credit, and its value, among the
same user's earlier touches (valid impressions and clicks of the same advertiser within the look-back),
each weighted ``2 ** (-age / half_life)``. A conversion with no touch in the window credits nobody.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Touch:
    user_key: str
    ts_ms: int
    campaign_id: str


@dataclass(frozen=True, slots=True)
class Conversion:
    user_key: str
    ts_ms: int
    value_micros: int


def time_decay_credit(conversions: Iterable[Conversion], touches: Iterable[Touch], *, half_life_ms: int,
                      lookback_ms: int) -> dict[str, tuple[float, float]]:
    """Campaign -> (conversions credited, value credited)."""
    if half_life_ms <= 0 or lookback_ms <= 0:
        raise ValueError("half_life_ms and lookback_ms must be positive")
    by_user: dict[str, list[Touch]] = defaultdict(list)
    for t in touches:
        by_user[t.user_key].append(t)
    credit: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for c in conversions:
        eligible = [t for t in by_user.get(c.user_key, ()) if c.ts_ms - lookback_ms <= t.ts_ms <= c.ts_ms]
        if not eligible:
            continue
        # Weights relative to the newest touch (which weighs 1): the same shares as 2^(-age/half-life), but
        # the total never underflows to 0 however old the touches are.
        newest = max(t.ts_ms for t in eligible)
        weights = [2.0 ** (-(newest - t.ts_ms) / half_life_ms) for t in eligible]
        total = sum(weights)
        for t, w in zip(eligible, weights, strict=True):
            credit[t.campaign_id][0] += w / total
            credit[t.campaign_id][1] += c.value_micros * w / total
    return {campaign: (conv, value) for campaign, (conv, value) in sorted(credit.items())}
