"""Side-by-side ratios on a machine whose speed drifts while it is measured.

Dividing one side's median over the rounds by the other's lets drift between rounds into the ratio. On the
2-core machines here that drift is large. In one three-round ``auction`` run, the same fixed workload ran
2.8 times faster in the last round than in the first (its ``machine_spread``). In one ``decisions`` run,
the bare auction's rate was 14,274 decisions/s in one 4-second block and 11,017 in the next round's (both
one-off, 2026-11-29).

So each round measures every side back to back and yields its own ratio, and the median of those per-round
ratios is reported. Rounds alternate which side goes first (A B, then B A, ...). A drift that runs the same
way through two rounds then tilts their ratios in opposite directions, instead of always favouring the
side that goes second.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def in_turn(round_index: int, sides: Sequence[T]) -> list[T]:
    """The sides in the order round ``round_index`` (from 0) measures them: as given in even rounds, reversed
    in odd ones."""
    return list(sides) if round_index % 2 == 0 else list(reversed(sides))


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of each round's numerator / denominator (the two lists are per round, in
    the same order)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("need one numerator and one denominator per round, and at least one round")
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))
