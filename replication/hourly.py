"""Hourly traffic weights of a day: checking them, and blending observed counts with a prior. Pure.

Shared by the edge's pacing plan (``edge.pacing.TrafficShape``) and the control plane, which learns the
shape from past days' decisions (``control_plane.traffic``) and ships it in the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HOURS = 24


def check_hourly(values: Sequence[float], what: str, *, all_zero_ok: bool = False) -> tuple[float, ...]:
    """24 non-negative finite numbers as floats; ValueError names ``what`` and the bad hour."""
    if isinstance(values, (str, bytes)) or len(values) != HOURS:
        raise ValueError(f"{what}: need {HOURS} hourly values, got {len(values)}")
    out: list[float] = []
    for hour, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{what}: hour {hour} is {v!r}, not a number")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{what}: hour {hour} is {v!r}, not a finite number")
        if f < 0:
            raise ValueError(f"{what}: hour {hour} is {v!r}, negative")
        out.append(f)
    if sum(out) <= 0 and not all_zero_ok:
        raise ValueError(f"{what}: all {HOURS} values are zero; at least one hour must carry traffic")
    return tuple(out)


def blend_hourly(counts: Sequence[float], prior: Sequence[float] = (), *, prior_weight: float) -> tuple[float, ...]:
    """24 weights summing to 1: observed per-hour counts plus ``prior_weight`` observations spread like
    ``prior`` (any scale; flat when empty). A Dirichlet pseudo-count: with few observations the prior rules,
    as they outgrow ``prior_weight`` the data does."""
    observed = check_hourly(counts, "hourly counts", all_zero_ok=True)  # no data yet: the prior
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise ValueError(f"prior_weight must be a non-negative finite number, got {prior_weight!r}")
    shape = check_hourly(prior, "prior shape") if prior else (1.0,) * HOURS
    scale = prior_weight / sum(shape)
    blended = [c + scale * w for c, w in zip(observed, shape, strict=True)]
    total = sum(blended)
    if total <= 0:
        raise ValueError("hourly counts: all zero and prior_weight is 0; nothing to learn a shape from")
    return tuple(b / total for b in blended)
