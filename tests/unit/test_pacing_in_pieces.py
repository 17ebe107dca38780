"""The edge paces a control tick's share of campaigns in pieces, with the event loop free between them: a
request never waits behind more than one piece (``EdgeState.pace_in_pieces``)."""

from __future__ import annotations

import asyncio

from adserver.bench_auction import inventory
from edge.accounting import PACE_MAX_PER_TICK, Accounting
from edge.state import PACE_PIECE
from replication.snapshot import build_snapshot

NOW = 1_800_000_000.0


def test_a_ticks_share_is_paced_in_pieces_with_other_work_running_between_them(make_edge_state) -> None:
    state = make_edge_state()
    state.snapshot = build_snapshot(inventory(2_000), version=1, created_ms=0, reserve_cpm_micros=100_000)
    share = Accounting.pace_share(state.snapshot)
    assert share == PACE_MAX_PER_TICK and share > 3 * PACE_PIECE
    paced_between: list[int] = []

    def paced() -> int:
        return sum(p.at == NOW for p in state.spend.paced.values())

    async def other_requests() -> None:
        while True:
            paced_between.append(paced())
            await asyncio.sleep(0)

    async def tick() -> None:
        others = asyncio.create_task(other_requests())
        await asyncio.sleep(0)
        await state.pace_in_pieces(NOW)
        others.cancel()

    asyncio.run(tick())
    assert paced() == share  # the whole share, each campaign once
    # The other task ran between every two pieces and saw the count grow a piece at a time.
    seen = sorted(set(paced_between))
    assert seen == list(range(0, share, PACE_PIECE)), seen
    # Each piece was timed as a step of its own (``adserver_edge_loop_hold_seconds``).
    steps = state.metrics.registry.get_sample_value("adserver_edge_loop_hold_seconds_count", {"task": "pacing"})
    assert steps == share // PACE_PIECE
    # The next tick goes on where this one stopped: the first campaigns keep their time, the next share is new.
    asyncio.run(state.pace_in_pieces(NOW + 0.1))
    times = [state.spend.paced[c.campaign_id].at for c in state.snapshot.campaigns[:2 * share]]
    assert times == [NOW] * share + [NOW + 0.1] * share
    # A snapshot with no campaigns left: the campaigns it dropped are forgotten, throttles included.
    state.snapshot = build_snapshot([], version=2, created_ms=0, reserve_cpm_micros=100_000)
    asyncio.run(state.pace_in_pieces(NOW + 0.2))
    assert not state.spend.paced and not state.spend.throttle


def test_a_snapshot_swapped_between_pieces_stops_the_old_ones_pacing(make_edge_state) -> None:
    state = make_edge_state()
    campaigns = inventory(2_000)
    old = state.snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000)
    assert Accounting.pace_share(old) > PACE_PIECE
    # The new snapshot keeps a few campaigns of the old one's second piece (the others ended, say).
    new = build_snapshot(campaigns[PACE_PIECE:PACE_PIECE + 5], version=2, created_ms=0, reserve_cpm_micros=100_000)

    def paced_at(t: float) -> set[str]:
        return {cid for cid, p in state.spend.paced.items() if p.at == t}

    pieces = state.pacing_pieces(NOW)
    next(pieces)  # the first piece is paced; the loop is free
    assert len(paced_at(NOW)) == PACE_PIECE
    state.snapshot = new
    assert next(pieces, "done") == "done"  # nothing more of the old one
    assert len(paced_at(NOW)) == PACE_PIECE
    asyncio.run(state.pace_in_pieces(NOW + 0.1))  # the next tick paces the new one
    assert paced_at(NOW + 0.1) and paced_at(NOW + 0.1) <= {c.campaign_id for c in new.campaigns}
