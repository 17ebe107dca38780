"""Budget pacing as pure functions: the traffic-shaped plan, the three controllers, and a seeded day of traffic
that checks what matters (the budget is used up, never exceeded, and spent along the plan)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.pacing import (
    DAY_S,
    AsapController,
    AsapState,
    DayRun,
    EvenController,
    EvenState,
    PacingReason,
    StepController,
    StepState,
    TrafficShape,
    admit,
    compare,
    controller_for,
    diurnal_shape,
    refusal,
    simulate_day,
    traffic_day,
)

H = 3_600
BUDGET = 100_000_000  # $100 a day
PRICE = 2_000  # a $2 CPM: 2,000 micros an impression
FINISH = 23.5 * H
SEEDS = (1, 2, 3, 4, 5)
TRAFFIC = diurnal_shape()
PLAN = TrafficShape(TRAFFIC.weights, finish_s=FINISH)


def day(name: str, seed: int, *, plan: TrafficShape = PLAN, step_s: float = 60.0, demand_ratio: float = 3.0,
        controller: object = None) -> DayRun:
    """One seeded day for a campaign whose demand at p=1 is ``demand_ratio`` x its budget."""
    auctions = traffic_day(TRAFFIC, auctions_per_day=demand_ratio * BUDGET / PRICE, step_s=step_s,
                           rng=random.Random(seed))
    return simulate_day(controller or controller_for(name), auctions=auctions, plan=plan, daily_budget=BUDGET,
                        price=PRICE, step_s=step_s, rng=random.Random(f"admit-{seed}"))


def tick(controller, state, now, spent, *, dt=60.0, budget=BUDGET, shape=PLAN):
    return controller.update(state, now_s_into_day=now, dt_s=dt, spent_today=spent, daily_budget=budget,
                             shape=shape, unit_cost=PRICE)


def on_plan(controller: EvenController, until_s: float, *, demand_ratio: float = 3.0) -> EvenState:
    """An even controller driven with exact expected spend (no noise) up to ``until_s``: a learned state."""
    state, spent, t = controller.start(), 0.0, 0.0
    while t < until_s:
        spent = min(BUDGET, spent + state.p * demand_ratio * BUDGET * TRAFFIC.traffic_between(t, t + 60))
        t += 60
        state = tick(controller, state, t, spent)
    return state


# --- the plan ------------------------------------------------------------------------------------------------


def test_uniform_plan_is_linear_in_time() -> None:
    shape = TrafficShape.uniform()
    assert shape.plan_fraction(0) == 0.0
    assert shape.plan_fraction(DAY_S / 4) == pytest.approx(0.25)
    assert shape.plan_fraction(DAY_S / 2) == pytest.approx(0.5)
    assert shape.plan_fraction(DAY_S) == 1.0


def test_weights_are_normalised_whatever_their_scale() -> None:
    a = TrafficShape.from_weights(range(1, 25))
    b = TrafficShape.from_weights([10 * w for w in range(1, 25)])
    assert a == b
    assert math.fsum(a.weights) == pytest.approx(1.0)


@pytest.mark.parametrize(("weights", "message"), [
    ([1.0] * 23, "need 24 hourly values, got 23"),
    ([1.0] * 25, "need 24 hourly values, got 25"),
    ([1.0] * 23 + [-0.5], "hour 23 is -0.5, negative"),
    ([math.nan] + [1.0] * 23, "hour 0 is nan, not a finite number"),
    ([1.0] * 5 + [math.inf] + [1.0] * 18, "hour 5 is inf, not a finite number"),
    ([1.0] * 3 + ["busy"] + [1.0] * 20, "hour 3 is 'busy', not a number"),
    ([0] * 24, "all 24 values are zero"),
])
def test_shape_validation_names_the_problem(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficShape.from_weights(weights)


@pytest.mark.parametrize("finish_s", [0, -1, DAY_S + 1, math.nan])
def test_finish_must_be_inside_the_day(finish_s) -> None:
    with pytest.raises(ValueError, match="finish_s"):
        TrafficShape.uniform(finish_s=finish_s)


def test_a_plan_needs_traffic_before_its_finish() -> None:
    night_only = [0.0] * 22 + [1.0, 1.0]
    with pytest.raises(ValueError, match="no traffic before finish_s"):
        TrafficShape.from_weights(night_only, finish_s=20 * H)


def test_plan_ends_at_finish_and_keeps_the_traffic_shape_before_it() -> None:
    assert PLAN.plan_fraction(0) == 0.0
    assert PLAN.plan_fraction(FINISH) == 1.0
    assert PLAN.plan_fraction(FINISH + 600) == 1.0
    assert PLAN.plan_fraction(DAY_S) == 1.0
    # Before finish the plan is the traffic, scaled up by the share of traffic the finish cuts off.
    scale = 1 / TRAFFIC.traffic_fraction(FINISH)
    for t in (H, 9.5 * H, 20 * H):
        assert PLAN.plan_fraction(t) == pytest.approx(TRAFFIC.plan_fraction(t) * scale)
    # Busy hours carry more of the plan than quiet ones.
    assert PLAN.plan_fraction(20 * H) - PLAN.plan_fraction(19 * H) > 3 * (PLAN.plan_fraction(5 * H)
                                                                          - PLAN.plan_fraction(4 * H))


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0, 1e6), min_size=24, max_size=24).filter(lambda w: sum(w) > 0),
       finish_h=st.integers(1, 24))
def test_plan_fraction_is_monotone_from_0_to_1(weights: list[float], finish_h: int) -> None:
    try:
        shape = TrafficShape.from_weights(weights, finish_s=finish_h * H)
    except ValueError as e:
        assert "no traffic before finish_s" in str(e)
        return
    assert shape.plan_fraction(0) == 0.0
    assert shape.plan_fraction(finish_h * H) == 1.0
    points = [shape.plan_fraction(t) for t in range(0, DAY_S + 1, 900)]
    assert all(0.0 <= x <= 1.0 for x in points)
    assert all(a <= b for a, b in itertools.pairwise(points))


def test_learn_blends_counts_with_the_prior() -> None:
    counts = [0.0] * 12 + [100.0] * 12  # all observed traffic in the afternoon
    prior = TrafficShape.uniform(finish_s=FINISH)
    data_only = TrafficShape.learn(counts, prior, prior_weight=0)
    assert data_only.weights[0] == 0.0 and data_only.weights[12] == pytest.approx(1 / 12)
    prior_only = TrafficShape.learn(counts, prior, prior_weight=1e12)
    assert prior_only.weights[0] == pytest.approx(1 / 24)
    half = TrafficShape.learn(counts, prior, prior_weight=1200)  # the prior is worth as much as the data
    assert half.weights[0] == pytest.approx(0.5 / 24)
    assert half.weights[12] == pytest.approx(0.5 / 24 + 0.5 / 12)
    assert half.finish_s == FINISH  # the plan's finish comes from the prior
    assert TrafficShape.learn([0] * 24, prior).weights == pytest.approx(prior.weights)  # nothing seen: the prior


def test_learn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="hourly counts: need 24"):
        TrafficShape.learn([1] * 12)
    with pytest.raises(ValueError, match="hourly counts: hour 2 is -1, negative"):
        TrafficShape.learn([1, 1, -1] + [1] * 21)
    with pytest.raises(ValueError, match="prior_weight"):
        TrafficShape.learn([1] * 24, prior_weight=-1)
    with pytest.raises(ValueError, match="nothing to learn"):
        TrafficShape.learn([0] * 24, prior_weight=0)


# --- controllers, admit --------------------------------------------------------------------------------------


def test_controller_for_knows_the_names_and_refuses_others() -> None:
    assert isinstance(controller_for("even"), EvenController)
    assert isinstance(controller_for("asap"), AsapController)
    assert isinstance(controller_for("step"), StepController)
    with pytest.raises(ValueError, match=r"unknown pacing 'fast'.*asap.*even.*step"):
        controller_for("fast")


def test_reasons_have_stable_values() -> None:
    assert {r.value for r in PacingReason} == {"pacing_throttled", "pacing_spent"}


def test_admit_follows_p_and_draws_only_when_it_must() -> None:
    rng = random.Random(7)
    before = rng.getstate()
    assert admit(1.0, rng) and admit(AsapState(), rng)
    assert rng.getstate() == before  # an unthrottled campaign leaves everyone else's random stream alone
    assert refusal(0.0, rng) is PacingReason.THROTTLED
    assert refusal(AsapState(p=0.0, done=True), rng) is PacingReason.SPENT
    admitted = sum(admit(EvenState(p=0.3), rng) for _ in range(20_000))
    assert admitted / 20_000 == pytest.approx(0.3, abs=0.015)


@pytest.mark.parametrize("name", ["even", "asap", "step"])
def test_update_returns_a_new_frozen_state(name: str) -> None:
    controller = controller_for(name)
    state = controller.start()
    snapshot = dataclasses.astuple(state)
    new = tick(controller, state, 600, 0.0, dt=600)
    assert new is not state
    assert dataclasses.astuple(state) == snapshot
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.p = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("name", ["even", "asap", "step"])
def test_within_one_unit_of_the_budget_p_is_zero(name: str) -> None:
    controller = controller_for(name)
    state = tick(controller, controller.start(), 12 * H, BUDGET - PRICE + 1)
    assert state.p == 0.0 and state.done
    assert refusal(state, random.Random(1)) is PacingReason.SPENT
    assert not tick(controller, state, 12 * H + 60, BUDGET - PRICE - 1).done  # a raised budget: back in


# --- a seeded day --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_even_uses_97_to_100_percent_never_more_and_finishes_near_the_end(seed: int) -> None:
    run = day("even", seed)
    assert 0.97 <= run.utilisation <= 1.0
    assert run.spent <= BUDGET and max(run.cumulative) <= 1.0
    assert run.spent_out_s is not None and FINISH - H <= run.spent_out_s <= DAY_S
    # Along the way it stays close to the plan: within 1.5% of budget at every minute.
    assert all(abs(c - PLAN.plan_fraction(60 * (i + 1))) <= 0.015 for i, c in enumerate(run.cumulative))


def test_even_tracks_the_plan_better_than_the_step_baseline() -> None:
    for seed in SEEDS:
        even, step = day("even", seed), day("step", seed)
        assert even.rmse <= 0.8 * step.rmse, (seed, even.rmse, step.rmse)


def test_even_uses_the_budget_with_a_wrong_shape_or_coarse_ticks() -> None:
    uniform_plan = day("even", 11, plan=TrafficShape.uniform(finish_s=FINISH))
    coarse = day("even", 12, step_s=300)
    for run in (uniform_plan, coarse):
        assert 0.97 <= run.utilisation <= 1.0
        assert run.rmse < 0.01


def test_even_starts_slow_and_ramps_at_most_twice_a_minute() -> None:
    controller = EvenController()
    run = day("even", 1, controller=controller)
    assert run.ps[0] == controller.p_start == 0.1
    assert run.ps[1] == pytest.approx(0.2)  # capped by the ramp, though the first minute says ~0.33
    for before, after in zip(run.ps[:60], run.ps[1:61], strict=True):
        assert after <= max(before, controller.p_start) * controller.ramp + 1e-12
    assert 0.25 <= run.ps[10] <= 0.45  # demand is 3x budget: settles near a third


def test_even_throttles_down_when_over_delivered() -> None:
    controller = EvenController()
    state = on_plan(controller, 10 * H)
    target = PLAN.plan_fraction(10 * H + 60) * BUDGET
    steady = tick(controller, state, 10 * H + 60, target)
    slightly_over = tick(controller, state, 10 * H + 60, target + 0.01 * BUDGET)
    far_over = tick(controller, state, 10 * H + 60, target + 0.2 * BUDGET)
    assert 0.2 < steady.p < 0.5
    assert slightly_over.p < steady.p
    assert far_over.p == controller.p_min


def test_even_catches_up_when_behind_and_after_the_finish() -> None:
    controller = EvenController()
    state = on_plan(controller, 10 * H)
    target = PLAN.plan_fraction(10 * H + 60) * BUDGET
    steady = tick(controller, state, 10 * H + 60, target)
    behind = tick(controller, state, 10 * H + 60, target - 0.03 * BUDGET)
    assert behind.p > steady.p
    late = on_plan(controller, 23 * H)
    left_over = tick(controller, late, FINISH + 60, late.spent)  # nothing came in: budget left at the finish
    assert not left_over.done
    assert left_over.p == pytest.approx(min(1.0, 2 * late.p))  # as fast as the ramp allows


def test_even_started_mid_day_plans_the_rest_of_the_day_not_a_burst() -> None:
    controller, rng = EvenController(), random.Random(5)
    state, spent, t = controller.start(), 0, 14 * H
    first_hour = 0
    while t < DAY_S:
        wins = sum(1 for _ in range(round(3 * BUDGET / PRICE * TRAFFIC.traffic_between(t, t + 60)))
                   if admit(state, rng))
        spent += min(wins, (BUDGET - spent) // PRICE) * PRICE
        t += 60
        state = tick(controller, state, t, spent)
        if t == 15 * H:
            first_hour = spent
    rest_of_plan = (PLAN.plan_fraction(15 * H) - PLAN.plan_fraction(14 * H)) / (1 - PLAN.plan_fraction(14 * H))
    assert first_hour <= 1.5 * rest_of_plan * BUDGET
    assert 0.97 <= spent / BUDGET <= 1.0


def test_even_starts_a_new_day_fresh_but_keeps_what_it_learned() -> None:
    controller = EvenController()
    yesterday = tick(controller, on_plan(controller, DAY_S - 60), DAY_S, BUDGET)
    assert yesterday.done
    today = tick(controller, yesterday, 60, 0.0)
    assert not today.done and today.p >= controller.p_start
    assert today.demand_estimate == pytest.approx(yesterday.demand_estimate, rel=0.2)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_asap_spends_the_budget_early(seed: int) -> None:
    run = day("asap", seed)
    assert run.utilisation == pytest.approx(1.0, abs=PRICE / BUDGET)
    assert run.spent_out_s is not None and run.spent_out_s < 15 * H
    assert run.cumulative[12 * 60 - 1] > 0.75  # three quarters gone by noon, when the plan has under a third
    assert all(p == 1.0 for p in run.ps[: int(run.spent_out_s // 60)])


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_step_stays_within_bounds_and_uses_the_budget(seed: int) -> None:
    controller = StepController()
    run = day("step", seed, controller=controller)
    live = [p for p in run.ps if p > 0]
    assert all(controller.p_min <= p <= 1.0 for p in live)
    assert run.ps[0] == 1.0
    assert 0.97 <= run.utilisation <= 1.0


def test_step_moves_every_60_seconds_of_the_clock_by_the_fixed_factors() -> None:
    controller = StepController()
    state = StepState(p=0.5)
    half_plan = PLAN.plan_fraction(12 * H) * BUDGET
    ahead = tick(controller, state, 12 * H, half_plan * 1.1, dt=20)
    assert ahead.p == pytest.approx(0.45)
    assert tick(controller, ahead, 12 * H + 20, half_plan * 1.1, dt=20).p == ahead.p  # inside the minute
    assert tick(controller, ahead, 12 * H + 60, 0.0, dt=60).p == pytest.approx(0.495)  # behind: up
    floor = StepState(p=0.01, last_step_s=12 * H)
    assert tick(controller, floor, 12 * H + 60, BUDGET * 0.9).p == controller.p_min
    ceiling = StepState(p=1.0, last_step_s=12 * H)
    assert tick(controller, ceiling, 12 * H + 60, 0.0).p == 1.0


def test_compare_is_seeded_and_reports_every_controller() -> None:
    first = compare(3)
    assert first == compare(3)
    assert set(first) == {"even", "asap", "step"}
    for utilisation, rmse in first.values():
        assert 0.97 <= utilisation <= 1.0 and rmse >= 0.0
    assert first["even"][1] < first["step"][1] < first["asap"][1]
