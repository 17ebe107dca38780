"""The side-by-side ratio helpers the throughput benchmarks share."""

import statistics

import pytest

from adserver.sidebyside import in_turn, median_ratio


def test_rounds_alternate_which_side_goes_first() -> None:
    assert in_turn(0, ("a", "b", "c")) == ["a", "b", "c"]
    assert in_turn(1, ("a", "b", "c")) == ["c", "b", "a"]
    assert in_turn(2, ("a", "b")) == ["a", "b"]


def test_median_of_the_rounds_own_ratios() -> None:
    # Round ratios 1, 4 and 3: the median is 3. Dividing the sides' medians would give 4 / 1, and pairing
    # the rounds the wrong way round (1/3, 4/1, 9/1) a median of 4.
    assert median_ratio([1.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    with pytest.raises(ValueError, match="one numerator and one denominator per round"):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one round"):
        median_ratio([], [])


def test_a_steady_drift_tilts_alternate_rounds_both_ways() -> None:
    """A machine that speeds up through the run: whichever side goes second is measured faster. In a fixed
    order every round's ratio errs the same way; in turn the errors alternate around the true ratio."""
    true_rates = {"a": 2.0, "b": 1.0}  # b does twice a's work: the true ratio b / a is 0.5

    def ratios(alternate: bool) -> list[float]:
        measured: dict[str, list[float]] = {"a": [], "b": []}
        slot = 0
        for r in range(4):
            for side in in_turn(r, ["a", "b"]) if alternate else ["a", "b"]:
                measured[side].append(true_rates[side] * (1 + 0.1 * slot))
                slot += 1
        return [b / a for a, b in zip(measured["a"], measured["b"], strict=True)]

    fixed, alternating = ratios(alternate=False), ratios(alternate=True)
    assert all(ratio > 0.5 for ratio in fixed)
    assert any(ratio > 0.5 for ratio in alternating) and any(ratio < 0.5 for ratio in alternating)
    assert abs(statistics.median(alternating) - 0.5) < abs(statistics.median(fixed) - 0.5)
