"""Collector: a durable JetStream pull consumer that writes events to ClickHouse, acking only after insert.

At-least-once delivery plus idempotent storage gives exactly-once counting: a batch is inserted (the store
drops event ids it already has, and ClickHouse drops a retried identical insert by its deduplication
token), and only then are its messages acknowledged. A crash between the two redelivers the batch, which
then inserts nothing new. A message that is not a valid event goes to the dead-letter stream with a reason
instead of blocking the consumer forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext, api

from control_plane.storage import EventStore
from replication import subjects as S
from replication.clock import REAL_CLOCK, Clock
from replication.events import Event, EventDecodeError, decode_events

log = logging.getLogger(__name__)
REPAIR_WINDOW_S = 2 * 86_400  # JetStream keeps events 7 days; a crash is noticed and restarted well within 2


@dataclass(slots=True)
class CollectorStats:
    received: int = 0
    inserted: int = 0
    duplicates_dropped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    errors: int = 0
    rollup_repairs: int = 0


def batch_token(events: list[Event]) -> str:
    """Deterministic for the same set of events, so a redelivered identical batch gets the same token."""
    digest = hashlib.sha256()
    for event_id in sorted(e.event_id for e in events):
        digest.update(event_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class Collector:
    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        executor: ThreadPoolExecutor,
        *,
        batch: int = 1000,
        fetch_timeout_s: float = 0.5,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self._js = js
        self._clock = clock
        self._store = store
        self._executor = executor  # one thread: chdb allows one session per process, used serially
        self._batch = batch
        self._fetch_timeout = fetch_timeout_s
        self.stats = CollectorStats()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        return await self._js.pull_subscribe(
            S.EVENTS_SUBJECTS,
            durable=S.COLLECTOR_DURABLE,
            stream=S.EVENTS_STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=10,  # a crashed collector's batch comes back in 10 s, not a minute (inserts take < 1 s)
                max_ack_pending=20_000,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )

    async def run(self) -> None:
        # A previous collector killed mid-INSERT can leave raw rows its rollup never counted: repair the
        # recent rollup before consuming (this process is the only writer, so nothing races the repair).
        since_ms = int((self._clock.now() - REPAIR_WINDOW_S) * 1000)
        repaired = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._store.repair_rollup, since_ms)
        if repaired:
            log.warning("rollup was behind the raw events in %d rows; repaired", repaired)
        self.stats.rollup_repairs += repaired
        self._sub = await self._subscribe()
        try:
            await self._loop()
        finally:
            # Fetched but unacked messages are redelivered to the next collector; unsubscribing lets the
            # connection drain instead of waiting on a queue nobody reads any more.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _loop(self) -> None:
        sub = self._sub
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                msgs = await sub.fetch(self._batch, timeout=self._fetch_timeout)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:
                failures += 1
                self.stats.errors += 1
                log.warning("fetch failed (%r); re-creating the subscription", exc)
                await asyncio.sleep(min(2.0, 0.1 * failures))
                # A pull subscription can stall after a reconnect: a fresh one on the same durable resumes.
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                try:
                    sub = self._sub = await self._subscribe()
                except Exception as sub_exc:
                    log.warning("re-subscribe failed: %r", sub_exc)
                continue
            failures = 0
            self.stats.received += len(msgs)
            events: list[Event] = []
            good = []
            for msg in msgs:
                try:
                    events.extend(decode_events(msg.data))
                    good.append(msg)
                except EventDecodeError as exc:
                    try:
                        await self._dead_letter(msg, str(exc))
                    except Exception:
                        # Not acked: it comes back after ack_wait and is dead-lettered then.
                        self.stats.errors += 1
                        log.exception("dead-lettering failed; the message will be redelivered")
            if events:
                try:
                    inserted = await loop.run_in_executor(
                        self._executor, self._store.insert_events, events, batch_token(events)
                    )
                except Exception:
                    # Not acked: JetStream redelivers after ack_wait, and the insert is idempotent.
                    self.stats.errors += 1
                    log.exception("insert failed; batch will be redelivered")
                    with contextlib.suppress(Exception):  # a lost nak only delays redelivery to ack_wait
                        for msg in good:
                            await msg.nak(delay=1.0)
                    await asyncio.sleep(0.5)
                    continue
                self.stats.inserted += inserted
                self.stats.duplicates_dropped += len(events) - inserted
                self.stats.batches += 1
            try:
                for msg in good[:-1]:
                    await msg.ack()
                if good:
                    await good[-1].ack_sync()  # waits for the server, so every earlier ack reached it too
            except Exception as exc:
                # The rows are stored; unacked messages are redelivered and the insert drops them as known.
                self.stats.errors += 1
                log.warning("acking a stored batch failed (%r); it will be redelivered and deduplicated", exc)

    async def _dead_letter(self, msg: nats.aio.msg.Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        log.warning("dead-lettering message on %s: %s", msg.subject, reason)
        await self._js.publish(
            f"ads.dlq.{msg.subject.replace('.', '_')}",
            msg.data,
            headers={"Dead-Reason": reason[:200], "Original-Subject": msg.subject},
        )
        await msg.term()
