"""The decision benchmark's sides: what a slice times is what it ran, the budget side's control tick too."""

import random
import time

from adserver.bench_budget import _requests, _Side, _snapshot
from edge.auction import warm_up


def test_a_slice_times_its_control_ticks_too(monkeypatch):
    """The tick falls due on the chunk a slice usually ends on: its cost must land inside ``elapsed``, or the
    budget side would look cheaper than it is. A tick made 20 ms slow shows it plainly."""
    rng = random.Random(1)
    snapshot = _snapshot(rng)
    warm_up(snapshot)
    side = _Side(snapshot, _requests(rng, 40), budget=True)
    tick = side.accounting.tick

    def slow_tick(*args, **kwargs):
        time.sleep(0.02)
        return tick(*args, **kwargs)

    monkeypatch.setattr(side.accounting, "tick", slow_tick)
    started = time.perf_counter()
    for _ in range(4):
        side.run(0.1)
    wall = time.perf_counter() - started
    assert side.ticks >= 3
    assert side.elapsed > 0.97 * wall  # only the calls' own overhead is outside
    assert side.decisions > 0 and side.rate == side.decisions / side.elapsed
