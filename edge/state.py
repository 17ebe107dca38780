"""Edge worker wiring: the snapshot holder, the budget ledger, the event publisher and the grant loop.

Granian runs the lifespan once per worker process and copies the lifespan state into each request, so the
state is one mutable holder object: a new snapshot replaces ``holder.snapshot`` in a single assignment
(atomic for readers on the event loop), and every worker has its own snapshot, ledger and publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from starlette.applications import Starlette

from edge.budget import BudgetLedger
from edge.ivt import IvtPolicy
from edge.ivt_store import DATA_DIR, FloodCounter, ListsReloader, MemoryFloodCounter, RedisFloodCounter
from edge.metrics import EdgeMetrics, build_metrics
from edge.settings import EdgeSettings
from edge.touches import MemoryTouchStore, TouchStore, new_touch_store
from replication import subjects as S
from replication.calendar import local_day
from replication.events import Event, encode_event
from replication.nats_io import (
    EventPublisher,
    close_quietly,
    connect,
    ensure_jetstream,
    ensure_region_stream,
    follow_snapshots,
)
from replication.snapshot import Snapshot, SnapshotDecodeError, decode_snapshot, unit_cost_ceiling

log = logging.getLogger(__name__)


class SeenIds:
    """A bounded set of recently seen event ids: a cheap first dedup before JetStream's and ClickHouse's."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """True when the id is new."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


@dataclass
class EdgeState:
    settings: EdgeSettings
    metrics: EdgeMetrics
    rng: random.Random
    worker_id: str
    ledger: BudgetLedger = field(default_factory=BudgetLedger)
    seen: SeenIds = field(default_factory=SeenIds)
    snapshot: Snapshot | None = None
    snapshot_loaded_at: float = 0.0
    nc: NATS | None = None
    js: JetStreamContext | None = None
    publisher: EventPublisher | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    grant_failures: int = 0
    grant_wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Billing events accepted but not yet acknowledged by JetStream: a retried beacon waits on the same one.
    unacked: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    ivt_lists: ListsReloader = field(default_factory=ListsReloader)
    ivt_store: FloodCounter = field(default_factory=MemoryFloodCounter)
    ivt_policy: IvtPolicy = field(default_factory=IvtPolicy)
    touches: TouchStore = field(default_factory=MemoryTouchStore)

    def publisher_has_room(self) -> bool:
        assert self.publisher is not None
        return self.publisher.has_room(billing=True)

    def emit_durable(self, event: Event) -> asyncio.Future[None] | None:
        """A billing event: returns a future resolved once JetStream holds it (None when the buffer is full)."""
        assert self.publisher is not None
        future = self.publisher.submit_acked(
            S.event_subject(self.settings.edge_region, event.type), event.event_id, encode_event(event))
        if future is not None:
            self.unacked[event.event_id] = future
            future.add_done_callback(lambda _f, eid=event.event_id: self.unacked.pop(eid, None))
        return future

    def emit(self, event: Event, *, billing: bool) -> bool:
        assert self.publisher is not None
        return self.publisher.submit(
            S.event_subject(self.settings.edge_region, event.type), event.event_id, encode_event(event),
            billing=billing,
        )

    async def on_snapshot(self, version: int, data: bytes) -> None:
        try:
            snapshot = decode_snapshot(data)
        except SnapshotDecodeError as exc:
            log.warning("rejected snapshot %s: %s", version, exc)
            return
        previous = self.snapshot
        if previous is not None and snapshot.version <= previous.version:
            return
        old_revisions = {c.campaign_id: c.revision for c in previous.campaigns} if previous else {}
        self.snapshot = snapshot  # the swap: one assignment, requests see the old or the new, never a mix
        self.snapshot_loaded_at = time.time()
        self.metrics.snapshot_version.set(snapshot.version)
        for c in snapshot.campaigns:
            if old_revisions.get(c.campaign_id) != c.revision:
                self.ledger.reset(c.campaign_id)  # budget or status may have changed: ask again
                self.grant_wake.set()

    def grant_targets(self) -> dict[str, int]:
        snapshot = self.snapshot
        if snapshot is None:
            return {}
        targets = {}
        for c in snapshot.campaigns:
            unit = unit_cost_ceiling(c.bid_type, c.max_bid_micros)
            targets[c.campaign_id] = max(unit * 10, min(c.daily_budget_micros, c.total_budget_micros) // 20)
        return targets

    def roll_days(self, now_s: float) -> None:
        """At a campaign's local midnight drop yesterday's unspent slices and ask for today's."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        days: dict[str, str] = {}
        for c in snapshot.campaigns:
            day = days.get(c.timezone)
            if day is None:
                day = days[c.timezone] = local_day(now_s, c.timezone)
            if c.campaign_id in self.ledger.campaigns and self.ledger.new_day(c.campaign_id, day):
                self.grant_wake.set()

    async def grant_loop(self) -> None:
        assert self.nc is not None
        pending: bytes | None = None  # a request whose answer was lost: re-sent with the same id
        while True:
            # Wake at once when a snapshot brings new campaigns (they cannot serve before their first grant),
            # else every 100 ms to top up allowances and expire reservations.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.grant_wake.wait(), timeout=0.1)
            self.grant_wake.clear()
            now = time.time()
            self.ledger.expire(now)
            self.roll_days(now)
            if self.snapshot is not None:
                self.metrics.snapshot_age.set(now - self.snapshot.created_ms / 1000)
            if pending is None:
                asks = self.ledger.wants(self.grant_targets(), now_s=now, retry_s=0.25)
                if not asks:
                    continue
                pending = msgpack.packb({"id": secrets.token_hex(8), "worker": self.worker_id,
                                         "region": self.settings.edge_region, "asks": asks})
            try:
                reply = await self.nc.request(S.BUDGET_GRANT_SUBJECT, pending, timeout=2.0)
                grants: dict[str, list[Any]] = msgpack.unpackb(reply.data, raw=False)["grants"]
            except Exception as exc:
                # Cut off from the allocator: keep spending only what was already granted. The same request
                # id goes out again, so an answer that was lost in flight is replayed, not granted twice.
                self.grant_failures += 1
                if self.grant_failures in (1, 10, 100) or self.grant_failures % 1000 == 0:
                    log.warning("budget grant request failed (%d): %r", self.grant_failures, exc)
                await asyncio.sleep(0.25)
                continue
            pending = None
            for campaign_id, (granted, exhausted, day) in grants.items():
                self.ledger.grant(campaign_id, int(granted), exhausted=bool(exhausted), day=str(day))

    def publisher_metrics(self) -> None:
        totals = {"available": 0, "reserved": 0, "spent": 0, "granted": 0, "refused_events": 0}
        for b in self.ledger.campaigns.values():
            totals["available"] += b.available
            totals["reserved"] += b.reserved
            totals["spent"] += b.spent
            totals["granted"] += b.granted
            totals["refused_events"] += b.refused
        for name, value in totals.items():
            self.metrics.allowance.labels(name).set(value)
        ivt = self.ivt_store.stats
        for name, value in (("calls", ivt.calls), ("failures", ivt.failures), ("skipped", ivt.skipped),
                            ("list_reloads", self.ivt_lists.reloads), ("list_errors", self.ivt_lists.reload_errors)):
            self.metrics.ivt_store.labels(name).set(value)
        if self.publisher is None:
            return
        st = self.publisher.stats
        for name, value in (("submitted", st.submitted), ("acked", st.acked), ("retries", st.retries),
                            ("duplicates", st.duplicates), ("shed", st.shed),
                            ("rejected_billing", st.rejected_billing), ("buffered", self.publisher.buffered)):
            self.metrics.events.labels(name).set(value)


def new_ivt_store(settings: EdgeSettings) -> FloodCounter:
    """The region's Redis when configured, else per-process counters. Seen impressions are remembered for the
    click token's lifetime: no valid click can come later."""
    common = {"window_s": settings.edge_ivt_window_s, "impression_ttl_s": settings.edge_click_ttl_s,
              "fail_open": settings.edge_ivt_fail_open}
    if settings.edge_redis_url:
        return RedisFloodCounter.from_url(settings.edge_redis_url, region=settings.edge_region, **common)
    # Without Redis an impression recorded by one worker is unknown to the others: with several workers the
    # click-without-impression rule is skipped rather than fired on every click that lands elsewhere.
    return MemoryFloodCounter(track_impressions=settings.edge_workers == 1, **common)


def new_state(settings: EdgeSettings) -> EdgeState:
    worker_id = f"{settings.edge_region}-{settings.edge_pop}-{os.getpid()}-{secrets.token_hex(3)}"
    # Seeded from the OS once per worker; the auction itself only ever sees this generator.
    return EdgeState(
        settings=settings, metrics=build_metrics(), rng=random.Random(secrets.randbits(64)), worker_id=worker_id,
        ivt_lists=ListsReloader(Path(settings.edge_ivt_data_dir) if settings.edge_ivt_data_dir else DATA_DIR),
        ivt_store=new_ivt_store(settings),
        touches=new_touch_store(settings.edge_redis_url, settings.edge_region),
        ivt_policy=IvtPolicy(min_click_delay_s=settings.edge_ivt_min_click_s, ip_limit=settings.edge_ivt_ip_limit,
                             ua_limit=settings.edge_ivt_ua_limit),
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state: EdgeState = new_state(app.state.settings)
    app.state.edge = state
    state.nc = await connect(state.settings.nats_url, f"edge-{state.worker_id}")
    # Events go to the region's own stream (the leaf's JetStream when there is one), so a region cut off from
    # the hub still gets PubAcks; snapshots come from the hub's domain.
    state.js = state.nc.jetstream()
    hub = state.nc.jetstream(domain=state.settings.edge_hub_domain) if state.settings.edge_hub_domain else state.js
    await ensure_region_stream(state.js, state.settings.edge_region)
    await ensure_jetstream(hub)
    state.publisher = EventPublisher(state.js)
    state.tasks.append(asyncio.create_task(state.publisher.run(), name="event-publisher"))
    state.tasks.append(asyncio.create_task(state.grant_loop(), name="grant-loop"))
    sub = await follow_snapshots(hub, state.settings.edge_region, state.on_snapshot)
    log.info("edge worker %s up: %r", state.worker_id, state.settings)
    try:
        yield
    finally:
        # Graceful shutdown: stop taking snapshots, then give buffered billing events time to land.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if not await state.publisher.drain(timeout_s=10):
            log.error("shutting down with %d events not acknowledged by JetStream", state.publisher.buffered)
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await close_quietly(state.nc)
        with contextlib.suppress(Exception):
            await state.ivt_store.aclose()
        with contextlib.suppress(Exception):
            await state.touches.aclose()
