"""The edge's event publisher: buffered, retrying, and group-committed into JetStream.

Why batches. The events streams run with ``sync_interval: always`` (a PubAck means the event is on disk), so
a stream stores one plain publish per fsync, a few thousand msgs/s however many are in flight. JetStream's
atomic batch publish (nats-server 2.12+, ADR-50) stores a whole batch per commit, so throughput grows with
the batch size while the queue is long; ``python -m adserver.jetstream_bench`` prints both (on the 2-core
machine here: plain 4,491 msgs/s with 256 in flight; batches of 1, 32 and 128: 352, 8,989 and 25,800).
Each message keeps its own ``Nats-Msg-Id``, so JetStream still deduplicates per event.

How. ``run`` takes whatever is queued: one item goes out as a plain publish (lowest latency when idle),
several as one atomic batch of up to ``batch`` messages whose last carries the commit and the reply. Up to
``max_inflight`` requests are outstanding. Replies come back on one wildcard inbox subscription and are
matched by token, so a publish costs one ``nc.publish`` and no per-message future, timer or subscription
(nats-py's ``js.publish`` costs all three).

Failures. A request unanswered after ``timeout_s`` (NATS down, stalled, a reply lost in a reconnect) is
queued again with the same ids; a late answer to it is ignored. If the first attempt did land, the retry
is caught by JetStream's dedup: a single publish is acknowledged with ``duplicate: true``; an atomic batch
holding any id the stream already has is refused whole (err_code 10201), and then its messages go out
again one by one, each deduplicated on its own. A stream without ``allow_atomic`` (err_code 10174), or a
commit answered without the batch's count (a server older than 2.12 stores batch messages as plain
publishes and answers only the last), sends the batch again one by one and turns batching off for a
minute. Any other error (no responders while a stream restarts) retries the same request after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

DUPLICATE_IN_BATCH = 10201  # "atomic publish batch contains duplicate message id"
ATOMIC_DISABLED = 10174  # "atomic publish is disabled": the stream lacks allow_atomic
_BATCH_OFF_S = 60.0
_MIN_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0


@dataclass(slots=True)
class PublisherStats:
    submitted: int = 0
    acked: int = 0
    duplicates: int = 0  # JetStream told us it already had this id: a retry that had in fact landed
    retries: int = 0
    shed: int = 0  # non-billing events dropped because the buffer was full
    rejected_billing: int = 0  # billing events refused because the hard cap was hit
    batches: int = 0  # atomic batches committed
    batch_splits: int = 0  # batches refused (a duplicate id inside, or no atomic publish) and sent singly


@dataclass(slots=True)
class _Pending:
    subject: str
    msg_id: str
    payload: bytes
    attempts: int = 0
    single: bool = False  # refused once inside a batch: go alone from now on
    acked: asyncio.Future[None] | None = None  # resolved when JetStream has the message
    events: int = 1  # how many events the message carries (a batch of decisions: several); for the stats


@dataclass(slots=True)
class _Request:
    items: list[_Pending]
    deadline: float


class EventPublisher:
    """``submit`` / ``submit_acked`` never await the network; ``run`` is the background task that publishes.

    Billing events are kept until JetStream acknowledges them; when the buffer passes ``soft_limit`` new
    non-billing events (ad decisions) are shed instead, so billing data is the last thing to go.
    """

    def __init__(self, nc: NATS | None, *, soft_limit: int = 50_000, hard_limit: int = 500_000,
                 batch: int = 256, max_inflight: int = 4, timeout_s: float = 5.0) -> None:
        if not 1 <= batch <= 1000:  # nats-server's default ceiling for an atomic batch is 1,000 messages
            raise ValueError("batch must be 1..1000")
        self._nc = nc
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._soft = soft_limit
        self._hard = hard_limit
        self._batch = batch
        self._max_inflight = max_inflight
        self._timeout = timeout_s
        self._inflight: dict[str, _Request] = {}
        self._inflight_items = 0
        self._inbox = ""
        self._token = 0
        self._batch_off_until = 0.0
        self._retry_at = 0.0  # after a failure nothing is sent before this (exponential backoff)
        self._backoff = _MIN_BACKOFF_S
        self.stats = PublisherStats()

    @property
    def buffered(self) -> int:
        return len(self._queue) + self._inflight_items

    def has_room(self, *, billing: bool) -> bool:
        return self.buffered < (self._hard if billing else self._soft)

    def submit(self, subject: str, msg_id: str, payload: bytes, *, billing: bool, events: int = 1) -> bool:
        """Queue a message (``events``: how many events it carries, for the stats, which count events)."""
        if not billing and self.buffered >= self._soft:
            self.stats.shed += events
            return False
        return self._enqueue(_Pending(subject, msg_id, payload, events=events))

    def submit_acked(self, subject: str, msg_id: str, payload: bytes) -> asyncio.Future[None] | None:
        """Submit a billing event and get a future resolved by JetStream's PubAck (None when full).

        The caller can answer its client only once the event is durable, so a kill -9 of this process
        never loses an event it acknowledged; the future outlives a caller's timeout, and the publisher
        keeps retrying under the same id."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return future if self._enqueue(_Pending(subject, msg_id, payload, acked=future)) else None

    def _enqueue(self, item: _Pending) -> bool:
        if self.buffered >= self._hard:
            self.stats.rejected_billing += 1
            return False
        self._queue.append(item)
        self.stats.submitted += item.events
        self._wake.set()
        return True

    # --- the background task ------------------------------------------------------------------------------

    async def run(self) -> None:
        assert self._nc is not None
        self._inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        try:
            while True:
                now = time.monotonic()
                self._expire(now)
                if self._queue and len(self._inflight) < self._max_inflight and now >= self._retry_at:
                    await self._send_next()
                    continue
                self._wake.clear()
                # Woken by a submit or a reply; the timeout is the tick that expires unanswered requests, or the
                # end of a retry backoff (not a poll while every in-flight slot is busy: replies wake us).
                wait = min(1.0, self._timeout / 4)
                if self._queue and now < self._retry_at:
                    wait = min(wait, self._retry_at - now)
                # A timeout scope, not ``asyncio.wait_for``: on Python 3.11 that wraps the wait in a task of its
                # own every time, 13-17 us a wake against 10-11 (uvloop, a one-off microbenchmark); this loop
                # wakes a few times per batch it sends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _send_next(self) -> None:
        assert self._nc is not None
        first = self._queue.popleft()
        items = [first]
        batching = not first.single and time.monotonic() >= self._batch_off_until
        while batching and self._queue and len(items) < self._batch and not self._queue[0].single:
            items.append(self._queue.popleft())
        self._token += 1
        reply = f"{self._inbox}.{self._token}"
        self._inflight[str(self._token)] = _Request(items, time.monotonic() + self._timeout)
        self._inflight_items += len(items)
        try:
            if len(items) == 1:
                await self._nc.publish(first.subject, first.payload, reply=reply,
                                       headers={"Nats-Msg-Id": first.msg_id})
            else:
                batch_id = f"{self._inbox[7:]}.{self._token}"  # unique per attempt, well under the 64-char cap
                last = len(items)
                for seq, item in enumerate(items, 1):
                    headers = {"Nats-Msg-Id": item.msg_id, "Nats-Batch-Id": batch_id,
                               "Nats-Batch-Sequence": str(seq)}
                    if seq == last:
                        headers["Nats-Batch-Commit"] = "1"
                    await self._nc.publish(item.subject, item.payload, reply=reply if seq == last else "",
                                           headers=headers)
        except Exception as exc:  # not even written to the client's buffer (closed, buffer limit): retry
            self._fail(str(self._token), exc)

    def _finish(self, token: str) -> _Request | None:
        request = self._inflight.pop(token, None)
        if request is not None:
            self._inflight_items -= len(request.items)
            self._wake.set()
        return request

    def _requeue(self, items: list[_Pending], *, single: bool) -> None:
        for item in reversed(items):
            item.attempts += 1
            item.single = item.single or single
            self._queue.appendleft(item)
        self.stats.retries += len(items)

    def _fail(self, token: str, reason: object) -> None:
        request = self._finish(token)
        if request is None:
            return
        attempts = request.items[0].attempts + 1
        if attempts in (1, 10, 100) or attempts % 1000 == 0:
            log.warning("event publish of %d message(s) failed (attempt %d, will retry with the same ids): %s",
                        len(request.items), attempts, reason)
        self._requeue(request.items, single=False)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _expire(self, now: float) -> None:
        for token in [t for t, r in self._inflight.items() if r.deadline <= now]:
            self._fail(token, f"no PubAck within {self._timeout:g} s")

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        request = self._inflight.get(token)
        if request is None:
            return  # the answer to a request that already timed out: its retry is in flight
        try:
            ack: dict[str, Any] = json.loads(msg.data) if msg.data else {}
        except ValueError:
            ack = {}
        batch = len(request.items) > 1
        if batch and "error" not in ack and "stream" in ack and ack.get("count") != len(request.items):
            # A server without atomic batches (< 2.12) takes the messages as plain publishes and answers only
            # the last: the others may not have been stored. Send them all again one by one (the ones that
            # were stored are recognised as duplicates) and stop batching for a while.
            ack = {"error": {"err_code": ATOMIC_DISABLED,
                             "description": f"commit answered without the batch's count: {msg.data[:200]!r}"}}
        if "error" in ack or "stream" not in ack:  # an error, or a status message (503: no responders)
            error = ack.get("error") or {"description": f"status {msg.headers or 'without body'}"}
            code = error.get("err_code")
            if not batch or code not in (DUPLICATE_IN_BATCH, ATOMIC_DISABLED):
                # Transient (no responders during a restart, a leader change) or a single publish: the same
                # request again after a backoff, as a batch if it was one.
                self._fail(token, error.get("description"))
                return
            self._finish(token)
            self.stats.batch_splits += 1
            if code == ATOMIC_DISABLED:
                log.warning("atomic batch refused (%s); publishing one by one for %g s",
                            error.get("description"), _BATCH_OFF_S)
                self._batch_off_until = time.monotonic() + _BATCH_OFF_S
            self._requeue(request.items, single=code == DUPLICATE_IN_BATCH)
            return
        self._finish(token)
        self._backoff = _MIN_BACKOFF_S
        self.stats.acked += sum(item.events for item in request.items)
        if batch:
            self.stats.batches += 1
        elif ack.get("duplicate"):
            self.stats.duplicates += request.items[0].events
        for item in request.items:
            if item.acked is not None and not item.acked.done():
                item.acked.set_result(None)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything buffered is acknowledged (graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.buffered and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter, bounded
            await asyncio.sleep(0.02)
        return self.buffered == 0


class AckWaits:
    """Waits on PubAck futures with a deadline, without a timer per wait.

    ``asyncio.wait_for(shield(f), t)`` per beacon costs a timeout scope, a timer handle and a shielding
    future each time, on the beacon path's hottest await. Here a wait is one future and one done
    callback; a single sweep, scheduled only while waits are pending, gives up on the overdue ones. All
    waits share one timeout, so the pending deque is in deadline order."""

    def __init__(self, timeout_s: float, *, sweep_every_s: float = 0.05) -> None:
        self.timeout_s = timeout_s
        self._every = sweep_every_s
        self._pending: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None

    def wait(self, acked: asyncio.Future[None]) -> asyncio.Future[bool]:
        """A future resolved True once ``acked`` is, or False at the deadline (``acked`` itself is untouched:
        the publisher keeps retrying and a later wait can still see it resolve)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        if acked.done():
            waiter.set_result(True)
            return waiter
        acked.add_done_callback(lambda _f: waiter.done() or waiter.set_result(True))
        self._pending.append((loop.time() + self.timeout_s, waiter))
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._every, self._sweep)
        return waiter

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._pending
        while pending and (pending[0][1].done() or pending[0][0] <= now):
            _, waiter = pending.popleft()
            if not waiter.done():
                waiter.set_result(False)
        self._sweep_handle = loop.call_later(self._every, self._sweep) if pending else None
