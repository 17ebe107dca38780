"""Edge worker wiring: the snapshot holder, the budget ledger, the event publisher and the grant loop.

Granian runs the lifespan once per worker process and copies the lifespan state into each request, so the
state is one mutable holder object: a new snapshot replaces ``holder.snapshot`` in a single assignment
(atomic for readers on the event loop), and every worker has its own snapshot, ledger and publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from starlette.applications import Starlette

from edge import compile_cache
from edge.accounting import Accounting
from edge.auction import warm_up as warm_up_auction
from edge.budget import BudgetLedger
from edge.decisions import DecisionBatches
from edge.ivt import IvtPolicy
from edge.ivt_store import DATA_DIR, FloodCounter, ListsReloader, MemoryFloodCounter, RedisFloodCounter
from edge.metrics import EdgeMetrics, build_metrics
from edge.profile_store import MemoryProfileStore, ProfileStore, new_profile_store
from edge.settings import EdgeSettings
from edge.spend import SpendView
from edge.touches import MemoryTouchStore, TouchStore, new_touch_store
from replication import subjects as S
from replication.events import Event, EventType, encode_event
from replication.nats_io import (
    close_quietly,
    connect,
    ensure_jetstream,
    ensure_region_stream,
    follow_snapshots,
)
from replication.publisher import AckWaits, EventPublisher
from replication.snapshot import Snapshot, SnapshotDecodeError, decode_snapshot

log = logging.getLogger(__name__)

PACE_PIECE = 25  # campaigns paced between two turns of the event loop (``EdgeState.pacing_pieces``)
_DONE = object()  # what ``next`` gives back for a generator of pieces that has ended
TOTALS_PIECE = 10_000  # campaigns a /metrics scrape sums between two turns (``BudgetLedger.totals_in_pieces``)


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


@dataclass(frozen=True, slots=True)
class Loaded:
    """A snapshot ready to swap in, and the campaigns it brings new or edited (``Snapshot.changed_since``) and
    no longer has (``Snapshot.removed_since``) against ``against``."""

    snapshot: Snapshot
    against: Snapshot | None
    changed: tuple[str, ...]
    removed: tuple[str, ...]


def prepare_swap(snapshot: Snapshot, previous: Snapshot | None) -> Loaded:
    """Everything about a new snapshot that walks its campaigns, done before the swap (in the loader thread):
    the first requests' columns and kernels (``edge.auction.warm_up``; the compile alone took 5.7-6.0 s on
    847517b, one-off, and with numba's cache, ``edge.compile_cache``, a process after the first loads it
    instead), the budget accounting's per-snapshot sets (``Accounting.warm``), and which campaigns changed."""
    warm_up_auction(snapshot)
    Accounting.warm(snapshot)
    return Loaded(snapshot, previous, snapshot.changed_since(previous), snapshot.removed_since(previous))


def _load_snapshot(data: bytes, previous: Snapshot | None) -> Loaded:
    started = time.monotonic()
    loaded = prepare_swap(decode_snapshot(data), previous)
    log.info("snapshot %d: %d campaigns decoded and warmed in %.2f s (compiled kernels loaded from the cache so "
             "far: %d)", loaded.snapshot.version, len(loaded.snapshot.campaigns), time.monotonic() - started,
             compile_cache.loaded())
    return loaded


def freeze_long_lived() -> None:
    """Put what is alive now, a snapshot just swapped in above all, out of the cyclic collector's reach.

    A full collection walks every object the collector tracks: a decoded 100,000-campaign snapshot is 1.2
    million of them, and a collection took 559 ms (93 ms at 10,000; ``edge_gc_pause_ms_*`` of ``adserver
    bench --only auction`` on fe8b5f5), all of it a stall of the event loop. The
    collector runs one soon after a swap, since the new snapshot's objects are new long-lived ones. Frozen,
    they are never walked again. A snapshot holds no reference cycles (``test_snapshot_memory``), so the
    one it replaced is still freed, by reference counting, when it is dropped. The young generations are
    collected first (cheap: the decode's young collections already moved the snapshot into the oldest), so
    garbage waiting there is not frozen; what else is frozen is what was alive at the swap, and of that
    only what later turns into cyclic garbage is never freed, once per snapshot (not measured)."""
    gc.collect(1)
    gc.freeze()


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """No full cyclic collection while a snapshot is decoded. The decode's new objects set off full
    collections that walk the half-built snapshot, holding the GIL the requests need (the frozen objects no
    longer count as long-lived, so it takes few new ones to set one off): at 100,000 campaigns they took 4.2
    s of a 6.5 s load, which takes 2.2 s without them (``edge_gc_during_load_ms_*`` and
    ``edge_load_no_full_collections_s_*`` of ``adserver bench --only auction`` on fe8b5f5). The young
    collections go on: they free the requests' cyclic garbage meanwhile, and carry the snapshot into the
    oldest generation in small steps (turning the collector off instead left all of it in the youngest, for
    one collection of it all before the freeze). First a full collection: cheap, since everything older is
    frozen, and it frees the cyclic garbage made since the last swap."""
    gc.collect()
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(young, middle, 2**30)  # the oldest generation's turn never comes
    try:
        yield
    finally:
        gc.set_threshold(young, middle, oldest)


@dataclass
class EdgeState:
    settings: EdgeSettings
    metrics: EdgeMetrics
    rng: random.Random
    worker_id: str
    # Thompson sampling draws Beta variates for all of a creative's variants at once (replication.variants).
    variant_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    accounting: Accounting = field(default_factory=lambda: Accounting(BudgetLedger(), SpendView("unnamed")))
    seen: SeenIds = field(default_factory=SeenIds)
    snapshot: Snapshot | None = None
    snapshot_loaded_at: float = 0.0
    nc: NATS | None = None
    js: JetStreamContext | None = None
    publisher: EventPublisher | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Best-effort side work a request starts and does not wait for (frequency-cap records): strong
    # references until done, since the event loop keeps only weak ones.
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    grant_failures: int = 0
    grant_wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Billing events accepted but not yet acknowledged by JetStream: a retried beacon waits on the same one.
    unacked: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    decisions_pending: DecisionBatches = field(default_factory=DecisionBatches)  # for the next messages
    ivt_lists: ListsReloader = field(default_factory=ListsReloader)
    ivt_store: FloodCounter = field(default_factory=MemoryFloodCounter)
    ivt_policy: IvtPolicy = field(default_factory=IvtPolicy)
    touches: TouchStore = field(default_factory=MemoryTouchStore)
    profiles: ProfileStore = field(default_factory=MemoryProfileStore)
    ack_waits: AckWaits = field(default_factory=lambda: AckWaits(2.0))

    @property
    def ledger(self) -> BudgetLedger:
        return self.accounting.ledger

    @property
    def spend(self) -> SpendView:
        return self.accounting.spend

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

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

    def emit_decisions(self, events: list[tuple[str, bytes]]) -> None:
        """(event id, encoded event) pairs (``replication.events.encode_decision_row``) wait here for the next
        control tick (at most 100 ms) or until a batch is full, and go as one message: nats-server's work is
        per message, and one per ad request cost it 146 us of CPU per request (``adserver bench --only
        http``, c1b631c), against the edge's own 337. Decisions are not billing data: a kill -9 loses at most
        a tick of them, and under pressure they are shed first."""
        if self.decisions_pending.extend(events):
            self.flush_decisions()

    def flush_decisions(self) -> None:
        publisher = self.publisher
        if publisher is None or not self.decisions_pending:
            return
        for first, count, message in self.decisions_pending.take():
            publisher.submit(S.event_batch_subject(self.settings.edge_region, EventType.DECISION, count),
                             f"decs:{first}", message, billing=False, events=count)

    async def on_snapshot(self, version: int, data: bytes) -> None:
        current = self.snapshot
        if version and current is not None and version <= current.version:
            # Redelivered or older (its message says so): decoding and warming it would cost seconds of the
            # loader thread at 100,000 campaigns, sharing the GIL with the requests, for a snapshot
            # ``swap_in`` refuses. A message without a version (0) is decoded and judged by its contents.
            return
        with no_full_collections():
            try:
                # In a worker thread: decoding and indexing take seconds at 100,000 campaigns, and on the event
                # loop they would stall every request for that long. The thread shares the GIL, so requests slow
                # down while it runs, but they keep being answered (the interpreter switches every 5 ms).
                loaded = await asyncio.to_thread(_load_snapshot, data, current)
            except SnapshotDecodeError as exc:
                log.warning("rejected snapshot %s: %s", version, exc)
                return
            if not self.swap_in(loaded):
                return
            freeze_long_lived()
        self.snapshot_loaded_at = self.settings.clock.now()
        self.metrics.snapshot_version.set(loaded.snapshot.version)

    def swap_in(self, loaded: Loaded) -> bool:
        """Make ``loaded`` the snapshot requests see, unless one as new is in already; the campaigns it changed
        ask for their allowance again. On the event loop: it walks only the changed campaigns."""
        previous, snapshot = self.snapshot, loaded.snapshot
        if previous is not None and snapshot.version <= previous.version:
            return False
        # Another snapshot swapped in while this one loaded: compare with that one (a walk, but rare).
        if loaded.against is previous:
            changed, removed = loaded.changed, loaded.removed
        else:
            changed, removed = snapshot.changed_since(previous), snapshot.removed_since(previous)
        self.snapshot = snapshot  # the swap: one assignment, requests see the old or the new, never a mix
        self.accounting.swapped(snapshot, previous, changed, removed)
        if changed:
            self.grant_wake.set()
        return True

    def control_tick(self, now: float, *, pace: bool) -> None:
        """Every 100 ms: send the waiting decision events, run the budget accounting's tick
        (``edge.accounting``: pacing takes its turn with a slice of the campaigns; ``pace=False`` skips it, as
        the control loop does: ``pacing_loop`` paces in pieces), and keep the snapshot's age in the metrics."""
        self.flush_decisions()
        outcome = self.accounting.tick(self.snapshot, now, pace=pace)
        if outcome.lapsed:
            log.warning("budget lease ran out (allocator unreachable): stopped spending, opened %s",
                        self.ledger.account)
        if outcome.lapsed or outcome.new_day:
            self.grant_wake.set()
        if self.snapshot is not None:
            self.metrics.snapshot_age.set(now - self.snapshot.created_ms / 1000)

    async def control_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                with self.holding("control"):
                    self.control_tick(self.settings.clock.now(), pace=False)
            except Exception:
                log.exception("control tick failed")

    @contextlib.contextmanager
    def holding(self, task: str) -> Iterator[None]:
        """Time one step of a background task in ``adserver_edge_loop_hold_seconds``: the event loop is the
        step's until it ends, and every request that comes in meanwhile waits for it."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.loop_hold.labels(task).observe(time.perf_counter() - started)

    async def pacing_loop(self) -> None:
        """Pacing on the control tick's cadence, in a task of its own: its pieces wait behind the requests that
        are ready (``pace_in_pieces``), which under load can take a while, and the tick's own work (expiring
        reservations, the lease, sending decisions) must not wait for them."""
        while True:
            await asyncio.sleep(0.1)
            try:
                await self.pace_in_pieces(self.settings.clock.now())
            except Exception:
                log.exception("pacing failed")

    async def pace_in_pieces(self, now: float) -> None:
        """This tick's share of pacing with the event loop free between its pieces (``pacing_pieces``)."""
        if self.snapshot is None:
            return  # nothing to pace, and no step to count
        pieces = self.pacing_pieces(now)
        while True:
            with self.holding("pacing"):  # one step: a piece (the last one ends the generator)
                if next(pieces, _DONE) is _DONE:
                    return
            await asyncio.sleep(0)  # requests waiting since the last piece go first

    def pacing_pieces(self, now: float) -> Iterator[None]:
        """Pace this tick's share (``Accounting.pace_share``), PACE_PIECE campaigns at a time, pausing between
        pieces: in one piece, a tick's 250 campaigns held every request behind them (``accounting_pace_ms_*``
        of ``adserver bench --only accounting``; the longest piece is ``accounting_pace_piece_p99_ms_*``)."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        left = max(1, self.accounting.pace_share(snapshot))  # an empty snapshot too: its call forgets the gone
        while left > 0:
            piece = min(PACE_PIECE, left)
            self.accounting.pace(snapshot, now, limit=piece)
            left -= piece
            if left:
                yield
                if self.snapshot is not snapshot:
                    # Swapped between pieces: pacing the old one on would judge campaigns by budgets and
                    # targeting that no longer hold. The next tick starts on the new one.
                    return

    async def spend_sync_loop(self, every_s: float = 0.5, full_every: int = 10, big_full_every: int = 120,
                              big_bytes: int = 64 * 1024) -> None:
        """Publish this writer's spend deltas every ``every_s``, and its whole own state every ``full_every``
        ticks (a receiver that missed deltas, e.g. across a cut leaf link, converges on the next one). A big
        state (thousands of campaigns) goes out only every ``big_full_every`` ticks: repair traffic would
        otherwise outweigh the deltas (see ``adserver.crdt_bench``)."""
        assert self.nc is not None
        subject = S.spend_subject(self.settings.edge_region)
        ticks = 0
        every = full_every
        while True:
            await asyncio.sleep(every_s)
            ticks += 1
            try:
                with self.holding("spend-sync"):
                    messages = self.spend.flush(full=ticks % every == 0)
                if ticks % every == 0:
                    every = big_full_every if sum(map(len, messages)) > big_bytes else full_every
                for message in messages:
                    await self.nc.publish(subject, message)
            except Exception as exc:
                log.debug("spend sync publish failed: %r", exc)

    async def on_spend(self, msg: Any) -> None:
        try:
            self.spend.apply_message(msg.data)
        except Exception as exc:
            self.metrics.filtered.labels("bad_spend_sync").inc()
            log.debug("ignored a spend sync message: %r", exc)

    async def grant_loop(self) -> None:
        assert self.nc is not None
        ledger = self.ledger
        clock = self.settings.clock
        pending: bytes | None = None  # a request whose answer was lost: re-sent with the same id
        pending_sent = 0.0  # when it first left: a replayed answer's lease counts from then
        pending_account = ""  # the account it speaks for (it may have lapsed by the time the answer comes)
        renewed_at = -1e18
        report_whole = True  # the next unused report must be whole: the allocator may have missed the last
        while True:
            # Wake at once when a snapshot brings new campaigns (they cannot serve before their first grant),
            # else every 100 ms to top up allowances and renew the lease.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):  # not wait_for: see ``EventPublisher.run``
                    await self.grant_wake.wait()
            self.grant_wake.clear()
            now = clock.now()
            if pending is None:
                with self.holding("grant"):
                    # retry_s is campaign time: a compressed day must not flood the allocator with asks.
                    ask = self.accounting.grant_request(self.snapshot, now, retry_s=0.25 * clock.speed)
                    heartbeat = now - renewed_at >= self.accounting.lease_s / 4
                    if not ask and not heartbeat:
                        continue
                    pending_sent = now
                    pending_account = ledger.account
                    pending = msgpack.packb({"id": secrets.token_hex(8), "worker": ledger.account,
                                             "region": self.settings.edge_region, "asks": ask.asks,
                                             "unused": self.accounting.unused_report(whole=report_whole),
                                             "returns": ask.returns,
                                             "give_back": {cid: list(v) for cid, v in ask.give_back.items()}})
                report_whole = False
            try:
                reply = await self.nc.request(S.BUDGET_GRANT_SUBJECT, pending, timeout=2.0)
                answer: dict[str, Any] = msgpack.unpackb(reply.data, raw=False)
                if "error" in answer:
                    # Refused as malformed (say, an allocator of another version): resending the same bytes
                    # would be refused forever, so drop it and build a fresh request next tick.
                    log.error("budget grant request refused: %s", answer["error"])
                    pending = None
                    report_whole = True  # the refused request's report never arrived
                    ledger.resolve_giving(accepted=False)
                    await asyncio.sleep(1.0)
                    continue
                grants: dict[str, list[Any]] = answer["grants"]
            except Exception as exc:
                # Cut off from the allocator: keep spending only what was already granted. The same request
                # id goes out again, so an answer that was lost in flight is replayed, not granted twice.
                self.grant_failures += 1
                if self.grant_failures in (1, 10, 100) or self.grant_failures % 1000 == 0:
                    log.warning("budget grant request failed (%d): %r", self.grant_failures, exc)
                await asyncio.sleep(0.25)
                continue
            pending = None
            lease_s = answer.get("lease_s")
            if lease_s is None:
                # The allocator already counts this account as lapsed: close it and ask again from a new one.
                if pending_account == ledger.account:
                    ledger.lapse(now, force=True)
                ledger.resolve_giving(accepted=False)  # not taken back there: it goes with the return
                renewed_at = -1e18
                continue
            ledger.resolve_giving(accepted=True)  # the allocator renewed this request's account and took it
            lease = self.accounting.lease_s = float(lease_s)
            if pending_account != ledger.account or pending_sent + lease <= clock.now():
                # The answer outlived its account (it lapsed here while the request was out): those grants
                # belong to the closed account, so they go back with its return, and nothing is renewed.
                for campaign_id, (granted, _, _) in grants.items():
                    ledger.add_return(pending_account, campaign_id, int(granted))
                continue
            renewed_at = pending_sent
            ledger.renew(pending_sent + lease)
            for campaign_id, (granted, exhausted, day) in grants.items():
                ledger.grant(campaign_id, int(granted), exhausted=bool(exhausted), day=str(day))
            ledger.mark_exhausted(str(cid) for cid in answer.get("exhausted", ()) if cid not in grants)

    async def publisher_metrics(self) -> None:
        sums = None
        for sums in self.ledger.totals_in_pieces(TOTALS_PIECE):
            if sums is None:
                await asyncio.sleep(0)  # requests waiting since the last piece go first
        assert sums is not None
        for name, value in sums.items():
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
        accounting=Accounting(BudgetLedger(worker_id=worker_id, ttl_s=settings.edge_reservation_ttl_s),
                              SpendView(worker_id), speed=settings.clock.speed),
        ack_waits=AckWaits(settings.edge_beacon_ack_timeout_s),
        ivt_lists=ListsReloader(Path(settings.edge_ivt_data_dir) if settings.edge_ivt_data_dir else DATA_DIR),
        ivt_store=new_ivt_store(settings),
        touches=new_touch_store(settings.edge_redis_url, settings.edge_region),
        profiles=new_profile_store(settings.edge_redis_url, settings.edge_region),
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
    state.publisher = EventPublisher(state.nc)
    state.tasks.append(asyncio.create_task(state.publisher.run(), name="event-publisher"))
    state.tasks.append(asyncio.create_task(state.grant_loop(), name="grant-loop"))
    state.tasks.append(asyncio.create_task(state.control_loop(), name="control-loop"))
    state.tasks.append(asyncio.create_task(state.pacing_loop(), name="pacing-loop"))
    state.tasks.append(asyncio.create_task(state.spend_sync_loop(), name="spend-sync"))
    await state.nc.subscribe(S.SPEND_SUBJECTS, cb=state.on_spend)
    # Before the first snapshot, whose loading compiles the auction's kernels (or now loads them).
    compile_cache.enable(state.settings.edge_compile_cache_dir)
    sub = await follow_snapshots(hub, state.settings.edge_region, state.on_snapshot)
    log.info("edge worker %s up: %r", state.worker_id, state.settings)
    try:
        yield
    finally:
        # Graceful shutdown: stop taking snapshots, then give buffered billing events time to land.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        state.flush_decisions()
        if not await state.publisher.drain(timeout_s=10):
            log.error("shutting down with %d events not acknowledged by JetStream", state.publisher.buffered)
        log.info("event publisher at shutdown: %s", state.publisher.stats)
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await close_quietly(state.nc)
        with contextlib.suppress(Exception):
            await state.ivt_store.aclose()
        with contextlib.suppress(Exception):
            await state.touches.aclose()
        with contextlib.suppress(Exception):
            await state.profiles.aclose()
