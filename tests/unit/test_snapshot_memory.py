"""An edge freezes what is alive when a snapshot is swapped in (``edge.state.freeze_long_lived``), so the cyclic
collector never walks the snapshot's objects again. That is safe only because a snapshot, once used, holds
no reference cycles: dropping it frees all of it by reference counting, frozen or not."""

from __future__ import annotations

import gc
import random
import weakref

from adserver.bench_auction import click_model, inventory, requests
from edge.accounting import Accounting
from edge.auction import run_auction
from edge.budget import BudgetLedger
from edge.spend import SpendView
from edge.state import freeze_long_lived
from replication.snapshot import Snapshot, build_snapshot, decode_snapshot, encode_snapshot

NOW = 1_800_000_000.0


def _used_snapshot():
    """A decoded snapshot after what an edge does with it: auctions with its click model and without (they
    fill its columns' memo) and the accounting's per-snapshot tables."""
    campaigns = inventory(300)
    snapshot = decode_snapshot(encode_snapshot(build_snapshot(
        campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000, click_model=click_model(campaigns))))
    allowance = {c.campaign_id: 10**12 for c in snapshot.campaigns}
    rng = random.Random(1)
    for request in requests(50):
        run_auction(snapshot, request, now_s=NOW, rng=rng, allowance=allowance)
    Accounting.warm(snapshot)  # as the edge's loader thread does
    accounting = Accounting(BudgetLedger(), SpendView("w"))
    accounting.tick(snapshot, NOW, pace=True)
    accounting.grant_request(snapshot, NOW, retry_s=0.25)
    assert snapshot.columns is not None and len(snapshot.columns.memo) > 3  # the memo did fill
    return snapshot, accounting


def test_a_used_snapshot_leaves_no_cyclic_garbage_when_dropped() -> None:
    snapshot, accounting = _used_snapshot()
    gone = weakref.ref(snapshot.columns.max_bid)  # a column: freed with the snapshot
    del accounting  # its ledger and budgets do refer to each other: collected here, not counted below
    gc.collect()
    gc.disable()  # nothing may collect before the check: the drop alone must free it
    try:
        del snapshot
        assert gone() is None  # freed on the spot by reference counting
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_frozen_snapshot_is_out_of_the_collectors_reach_and_still_freed() -> None:
    snapshot, _ = _used_snapshot()
    campaign = snapshot.campaigns[0]
    frozen_before = gc.get_freeze_count()
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > frozen_before + 300
        assert not any(o is campaign for o in gc.get_objects())  # no generation holds it: never walked
        gone = weakref.ref(snapshot.columns.max_bid)  # a column: freed with the snapshot
        del snapshot, campaign, _
        assert gone() is None  # freed on the spot by reference counting, frozen as it is
    finally:
        gc.unfreeze()


def test_the_edge_decodes_without_full_collections_and_freezes_after_the_swap(monkeypatch) -> None:
    """``EdgeState.on_snapshot``: no full collection while the snapshot is decoded (they walked the half-built
    snapshot: 4.2 s of a 6.5 s load at 100,000 campaigns in the auction bench), the thresholds back
    afterwards, even when the snapshot is refused, and the new snapshot frozen once it serves."""
    import asyncio

    import edge.state as edge_state
    from adserver.bench_handler import _edge

    _, state = _edge()
    campaigns = inventory(50)
    seen: list[tuple[int, int, int]] = []
    real_load = edge_state._load_snapshot
    thresholds = gc.get_threshold()

    def load(data: bytes, previous: Snapshot | None):
        seen.append(gc.get_threshold())
        return real_load(data, previous)

    monkeypatch.setattr(edge_state, "_load_snapshot", load)
    data = encode_snapshot(build_snapshot(campaigns, version=7, created_ms=0, reserve_cpm_micros=100_000))
    frozen_before = gc.get_freeze_count()
    try:
        asyncio.run(state.on_snapshot(7, data))
        assert seen == [(*thresholds[:2], 2**30)] and gc.get_threshold() == thresholds
        assert state.snapshot is not None and state.snapshot.version == 7
        assert not any(o is state.snapshot.campaigns[0] for o in gc.get_objects())  # frozen
        assert gc.get_freeze_count() > frozen_before
        asyncio.run(state.on_snapshot(8, b"not a snapshot"))  # refused: the thresholds are back anyway
        assert gc.get_threshold() == thresholds and state.snapshot.version == 7
        asyncio.run(state.on_snapshot(7, data))  # redelivered: not even decoded
        assert len(seen) == 2 and state.snapshot.version == 7
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
