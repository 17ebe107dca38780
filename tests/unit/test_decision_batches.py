"""Decision events wait at the edge in batches of at most MAX_BATCH, their rows laid end to end as they are
emitted (``edge.decisions``), and go as one message each at the control tick or as soon as one is full."""

from __future__ import annotations

from typing import Any

from edge.decisions import DecisionBatches
from replication.events import MAX_BATCH, decode_events, encode_decision_row, join_event_rows


def _row(i: int) -> tuple[str, bytes]:
    event_id = f"dec-{i}"
    return event_id, encode_decision_row(event_id, 1_800_000_000_000 + i, "eu", "pop1", f"auc-{i}", f"imp-{i}",
                                         f"c{i % 7}", f"k{i % 7}", "adv", "p1", "cpm", 1000 + i, "DE", "desktop",
                                         "", "")


def _requests(n: int) -> list[list[tuple[str, bytes]]]:
    """``n`` events as ad requests emit them: one to three slots at a time."""
    out, i = [], 0
    while i < n:
        k = min(1 + i % 3, n - i)
        out.append([_row(j) for j in range(i, i + k)])
        i += k
    return out


def test_batches_hold_the_events_in_order_at_most_max_batch_each_and_are_named_by_their_first() -> None:
    batches = DecisionBatches()
    filled = [batches.extend(request) for request in _requests(2 * MAX_BATCH + 452)]
    assert sum(filled) == 2  # a request that filled a batch says so, once per batch
    assert len(batches) == 2 * MAX_BATCH + 452
    taken = batches.take()
    assert [count for _, count, _ in taken] == [MAX_BATCH, MAX_BATCH, 452] and len(batches) == 0
    ids = [e.event_id for _, _, message in taken for e in decode_events(message)]
    assert ids == [f"dec-{i}" for i in range(2 * MAX_BATCH + 452)]
    assert [first for first, _, _ in taken] == ["dec-0", f"dec-{MAX_BATCH}", f"dec-{2 * MAX_BATCH}"]
    # The same bytes as joining the rows at the end, as before.
    assert taken[2][2] == join_event_rows([row for _, row in (_row(i) for i in range(2 * MAX_BATCH, 2 * MAX_BATCH
                                                                                        + 452))])
    assert batches.take() == []


class _Recording:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, dict[str, Any]]] = []

    def submit(self, subject: str, msg_id: str, payload: bytes, **kw: Any) -> bool:
        self.sent.append((subject, msg_id, payload, kw))
        return True


def test_the_edge_sends_a_full_batch_at_once_and_the_rest_at_the_tick(make_edge_state) -> None:
    state = make_edge_state()
    publisher = state.publisher = _Recording()  # type: ignore[assignment]
    for request in _requests(MAX_BATCH + 10):
        state.emit_decisions(request)
    assert [(s, m, kw) for s, m, _, kw in publisher.sent] == [
        (f"ads.ev.eu.decision.{MAX_BATCH}", "decs:dec-0", {"billing": False, "events": MAX_BATCH})]
    state.flush_decisions()  # the control tick's
    subject, msg_id, payload, kw = publisher.sent[-1]
    assert (subject, kw["events"]) == ("ads.ev.eu.decision.10", 10) and msg_id == f"decs:dec-{MAX_BATCH}"
    assert [e.event_id for e in decode_events(payload)] == [f"dec-{i}" for i in range(MAX_BATCH, MAX_BATCH + 10)]
    assert not state.decisions_pending


def test_without_a_publisher_yet_the_events_wait_in_whole_batches(make_edge_state) -> None:
    state = make_edge_state()
    state.publisher = None
    for request in _requests(2 * MAX_BATCH + 5):
        state.emit_decisions(request)
    assert len(state.decisions_pending) == 2 * MAX_BATCH + 5
    publisher = state.publisher = _Recording()  # type: ignore[assignment]
    state.flush_decisions()
    assert [kw["events"] for *_, kw in publisher.sent] == [MAX_BATCH, MAX_BATCH, 5]
