"""The edge times each step of its background tasks (``adserver_edge_loop_hold_seconds``): while one runs,
the event loop is not the requests'. ``adserver bench --only http`` reads the histogram back per task."""

from __future__ import annotations

import asyncio
import time

from adserver.bench_http import hold_rates, parse_loop_holds
from edge.metrics import render


def test_each_step_is_counted_and_timed_under_its_task_and_the_bench_reads_them_back(make_edge_state) -> None:
    state = make_edge_state()
    for _ in range(3):
        with state.holding("control"):
            time.sleep(0.002)
    with state.holding("grant"):
        pass
    holds = parse_loop_holds(render(state.metrics).decode())
    assert holds["control"][0] == 3 and 0.006 <= holds["control"][1] < 1.0
    assert holds["grant"][0] == 1 and holds["grant"][1] < 0.1
    # Between two readings, per second of the run: steps, milliseconds held, the mean step.
    rates = hold_rates({"control": (1, 0.002)}, holds, seconds=2.0)
    assert rates["control"]["steps_per_s"] == 1.0 and rates["grant"]["steps_per_s"] == 0.5
    assert 2.0 <= rates["control"]["ms_per_s"] < 500 and rates["control"]["mean_us"] >= 2000


def test_a_step_that_fails_is_timed_too(make_edge_state) -> None:
    state = make_edge_state()
    try:
        with state.holding("spend-sync"):
            raise RuntimeError("publish failed")
    except RuntimeError:
        pass
    assert parse_loop_holds(render(state.metrics).decode())["spend-sync"][0] == 1


def test_the_control_loop_times_its_ticks(make_edge_state) -> None:
    state = make_edge_state()

    def ticks() -> float:
        return state.metrics.registry.get_sample_value("adserver_edge_loop_hold_seconds_count",
                                                       {"task": "control"}) or 0.0

    async def two_ticks() -> None:
        third = asyncio.Event()
        tick, calls = state.control_tick, []

        def counted(now: float, *, pace: bool) -> None:
            calls.append(now)
            tick(now, pace=pace)
            if len(calls) == 3:  # the first two are timed by now
                third.set()

        state.control_tick = counted  # type: ignore[method-assign]
        task = asyncio.create_task(state.control_loop())
        await asyncio.wait_for(third.wait(), timeout=10)
        task.cancel()

    asyncio.run(two_ticks())
    assert ticks() >= 2 and parse_loop_holds(render(state.metrics).decode())["control"][0] == ticks()


def test_pacing_without_a_snapshot_counts_no_step(make_edge_state) -> None:
    """No snapshot yet: nothing is paced, and no step of about nothing makes the pacing steps look cheap."""
    state = make_edge_state()
    asyncio.run(state.pace_in_pieces(1_800_000_000.0))
    assert "pacing" not in parse_loop_holds(render(state.metrics).decode())
