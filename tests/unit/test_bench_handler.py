"""The in-process handler benchmark drives the real edge app: every ad request is filled through the whole
middleware chain, its decisions reach the publisher, and the rate limit it keeps on never refuses one."""

from __future__ import annotations

import asyncio

from adserver.bench_handler import TICK_EVERY, _edge, _round, _scope, bench_handler
from adserver.bench_http import ad_paths


def test_a_short_run_fills_every_request_and_publishes_its_decisions() -> None:
    app, state = _edge()
    statuses: dict[int, int] = {}
    scopes = [_scope(p, n) for n, p in enumerate(ad_paths(500))]
    times = asyncio.run(_round(app, state, scopes, 2 * TICK_EVERY, statuses))
    assert statuses == {200: 2 * TICK_EVERY}
    assert len(times) == 2 * TICK_EVERY and min(times) > 0
    # One decision per filled slot, sent by each of the two control ticks as one batch.
    assert state.publisher.messages == 2 and not state.decisions_pending  # type: ignore[union-attr]


def test_the_report_keeps_every_round() -> None:
    r = bench_handler(duration_s=0.2, rounds=2, say=lambda _: None)
    assert r["handler_fill_rate"] == 1.0
    assert r["handler_tick_us"] > 0  # one control tick per TICK_EVERY requests, timed
    assert len(r["rounds"]) == 2 and all(run["requests"] >= 2_000 for run in r["rounds"])
