"""How EventPublisher (replication/publisher.py) treats the answers to a batch it sent, without a server.

The server paths (a committed batch, a batch refused for a duplicate id, a stream without atomic publish)
run against a real nats-server in tests/integration/test_nats_paths.py; these are the answers that are hard
to provoke there: a transient 503 and a pre-2.12 server that ignores the batch headers."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

from replication.publisher import EventPublisher, _Pending, _Request


def _with_batch_in_flight(n: int = 3) -> tuple[EventPublisher, list[_Pending]]:
    publisher = EventPublisher(None)
    items = [_Pending("ads.ev.eu.impression", f"imp:{i}", b"x") for i in range(n)]
    publisher._inbox = "_INBOX.test"
    publisher._inflight["7"] = _Request(items, time.monotonic() + 5)
    publisher._inflight_items = n
    return publisher, items


def _reply(data: bytes, headers: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(subject="_INBOX.test.7", data=data, headers=headers)


def test_a_transient_503_retries_the_batch_as_a_batch_after_a_backoff() -> None:
    publisher, items = _with_batch_in_flight()
    asyncio.run(publisher._on_reply(_reply(b"", {"Status": "503"})))  # type: ignore[arg-type]
    assert list(publisher._queue) == items and not any(i.single for i in items)
    assert publisher._batch_off_until == 0.0  # batching stays on
    assert publisher._retry_at > time.monotonic() - 1 and publisher.buffered == 3
    assert all(i.acked is None for i in items)


def _answer(publisher: EventPublisher, items: list[_Pending], ack: dict) -> list[bool]:
    """Give every item an ack future, deliver ``ack`` as the reply, and say which futures it resolved."""
    loop = asyncio.new_event_loop()
    try:
        for item in items:
            item.acked = loop.create_future()
        loop.run_until_complete(publisher._on_reply(_reply(json.dumps(ack).encode())))  # type: ignore[arg-type]
        return [bool(i.acked and i.acked.done()) for i in items]
    finally:
        loop.close()


def test_a_commit_answer_without_the_batch_count_sends_every_message_again_alone() -> None:
    # A server older than 2.12 stores batch messages as plain publishes and answers only the last.
    publisher, items = _with_batch_in_flight()
    assert _answer(publisher, items, {"stream": "EV", "seq": 9}) == [False] * 3  # nothing acknowledged on it
    assert list(publisher._queue) == items  # all again, each deduplicated by its id on the way
    assert publisher._batch_off_until > time.monotonic() and publisher.stats.batch_splits == 1  # one by one


def test_a_committed_batch_acknowledges_every_message() -> None:
    publisher, items = _with_batch_in_flight()
    assert _answer(publisher, items, {"stream": "EV", "seq": 9, "batch": "b", "count": 3}) == [True] * 3
    assert publisher.buffered == 0 and publisher.stats.batches == 1 and publisher.stats.acked == 3
