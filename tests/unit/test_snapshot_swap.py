"""A snapshot swap walks only the campaigns it changed: the walks over every campaign (which held the event
loop for about 200 ms per swap at 100,000 campaigns) run in the loader thread (``edge.state.prepare_swap``)
or not at all (``Accounting.swapped``)."""

from __future__ import annotations

import pytest

from edge.accounting import Accounting
from edge.budget import BudgetLedger
from edge.spend import SpendView
from edge.state import prepare_swap
from replication.calendar import utc_day
from replication.snapshot import Snapshot, build_snapshot

NOW = 1_800_000_000.0


def _snapshot(version: int, *campaigns) -> Snapshot:
    return build_snapshot(campaigns, version=version, created_ms=0, reserve_cpm_micros=100_000)


def test_changed_since_names_new_and_edited_campaigns_only(make_campaign) -> None:
    v1 = _snapshot(1, make_campaign("c1"), make_campaign("c2"), make_campaign("c3"))
    v2 = _snapshot(2, make_campaign("c1"), make_campaign("c2", revision=2), make_campaign("c4"))  # c3 ended
    assert v1.changed_since(None) == ("c1", "c2", "c3")
    assert v2.changed_since(v1) == ("c2", "c4")
    assert v2.changed_since(v2) == ()
    assert (v2.removed_since(v1), v1.removed_since(v2), v1.removed_since(None)) == (("c3",), ("c4",), ())


def test_a_swap_touches_only_what_changed_and_the_changed_ask_again(make_campaign, monkeypatch) -> None:
    campaigns = [make_campaign(f"c{i:02d}") for i in range(10)]
    v1 = _snapshot(1, *campaigns)
    acc = Accounting(BudgetLedger(worker_id="w"), SpendView("w"))
    acc.swapped(v1, None, v1.changed_since(None), ())
    acc.grant_request(v1, NOW, retry_s=0.25)
    for c in campaigns:  # c03 has spent its budget: nothing held, and the allocator said it is out
        out = c.campaign_id == "c03"
        acc.ledger.grant(c.campaign_id, 0 if out else 10**6, exhausted=out, day=utc_day(NOW))
    acc.tick(v1, NOW, pace=True)
    assert acc.grant_request(v1, NOW + 0.1, retry_s=0.25).asks == {}  # everyone holds enough, c03 is out
    acc.spend.throttle["c09"] = 0.5  # as if pacing had held c09 back
    v2 = _snapshot(2, *campaigns[:3], make_campaign("c03", revision=2, daily_budget_micros=10**10),
                   *campaigns[4:9], make_campaign("c10"))  # c09 ended
    Accounting.warm(v2)  # the loader thread's part
    changed, removed = v2.changed_since(v1), v2.removed_since(v1)

    def walked(*_: object) -> None:
        raise AssertionError("a walk over every campaign on the event loop")

    monkeypatch.setattr(Snapshot, "campaign_ids", walked)
    acc.swapped(v2, v1, changed, removed)
    assert "c10" in acc.spend.paced  # new: at its controller's starting throttle from now on
    assert "c09" not in acc.spend.paced and "c09" not in acc.spend.throttle  # gone: forgotten at once
    assert not acc.ledger.campaigns["c03"].exhausted  # its budget was raised: no longer out
    assert set(acc.grant_request(v2, NOW + 0.2, retry_s=0.25).asks) == {"c03", "c10"}
    acc.tick(v2, NOW + 0.3, pace=True)
    # Without the swap's word, pacing compares every campaign itself (the path benches and tools take).
    with pytest.raises(AssertionError, match="a walk over every campaign"):
        acc.tick(_snapshot(3, *campaigns[:9], make_campaign("c11")), NOW + 0.4, pace=True)


def test_a_swap_after_another_compares_with_the_snapshot_it_replaces(make_campaign, make_edge_state) -> None:
    state = make_edge_state()
    v1 = _snapshot(1, make_campaign("c1"), make_campaign("c2"))
    assert state.swap_in(prepare_swap(v1, None))
    v2 = _snapshot(2, make_campaign("c1", revision=2), make_campaign("c2"))
    v3 = _snapshot(3, make_campaign("c1", revision=2), make_campaign("c2", revision=2))
    late = prepare_swap(v3, v1)  # loaded while v2 was being swapped in: it compared with v1
    assert late.changed == ("c1", "c2")
    assert state.swap_in(prepare_swap(v2, v1))
    for cid in ("c1", "c2"):
        state.ledger.grant(cid, 1_000, exhausted=True, day=utc_day(NOW))
    assert state.swap_in(late) and state.snapshot is v3
    assert state.ledger.campaigns["c1"].exhausted  # unchanged since v2: still out of budget
    assert not state.ledger.campaigns["c2"].exhausted  # edited in v3: asks again
    assert not state.swap_in(prepare_swap(v2, v3)) and state.snapshot is v3  # an older one never comes back
