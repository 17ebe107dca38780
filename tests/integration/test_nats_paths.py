"""The NATS paths against a real nats-server: KV compare-and-set, snapshot distribution, event publishing,
budget grants, and the collector writing to real chdb."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest

from control_plane.allocator import BudgetTerms
from control_plane.collector import Collector
from control_plane.grants import GrantService
from control_plane.storage import open_store
from control_plane.store import Conflict, Store
from replication import subjects as S
from replication.calendar import local_day
from replication.events import BidType, Event, EventType, encode_event
from replication.nats_io import (
    INLINE_SNAPSHOT_LIMIT,
    connect,
    ensure_events_hub,
    ensure_jetstream,
    follow_snapshots,
    publish_snapshot,
)
from replication.publisher import EventPublisher
from replication.snapshot import SnapshotCampaign, SnapshotCreative, build_snapshot, decode_snapshot, encode_snapshot

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return asyncio.run(coro_fn(*args))


async def _js(nats_url: str, name: str) -> tuple[Any, Any]:
    nc = await connect(nats_url, name)
    js = nc.jetstream()
    await ensure_jetstream(js)
    await ensure_events_hub(nc, ["eu", "us"])
    return nc, js


async def _empty_stores(js: Any) -> None:
    """The campaign and advertiser stores emptied, for a test that counts what a builder reads of them."""
    await js.delete_key_value(S.CAMPAIGNS_BUCKET)
    await js.delete_key_value(S.ADVERTISERS_BUCKET)
    await ensure_jetstream(js)


def _campaign(i: int, advertiser: str = "adv1") -> SnapshotCampaign:
    return SnapshotCampaign(
        campaign_id=f"cmp{i:06d}", advertiser_id=advertiser, revision=1, bid_type="cpm", max_bid_micros=2_000_000,
        daily_budget_micros=10_000_000, total_budget_micros=10_000_000, start_s=0, end_s=0, timezone="UTC",
        hours=frozenset(), countries=frozenset({"US"}), geos=frozenset(), devices=frozenset(),
        keywords=frozenset({f"kw{i % 50}", "shared"}), interests=frozenset(), placements=frozenset(),
        prior_cvr=0.02,
        creatives=(SnapshotCreative(f"cr{i}", "300x250", f"headline {i} " + "x" * 80, "https://i.example/a.png",
                                    "https://l.example/", "Go", 0.01),),
    )


def test_concurrent_updates_on_one_revision_give_exactly_one_conflict(nats_url: str) -> None:
    async def scenario() -> list[object]:
        nc, js = await _js(nats_url, "t-cas")
        store = await Store(js).open()
        created = await store.create_campaign({"id": "cmpcas1", "advertiser_id": "advcas1", "name": "a"})
        results = await asyncio.gather(
            *(store.update_campaign({**created.value, "name": f"writer-{i}"}, created.revision) for i in range(5)),
            return_exceptions=True,
        )
        final = await store.get_campaign("advcas1", "cmpcas1")
        await nc.close()
        return [*results, final]

    *results, final = run(scenario)
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    assert final.value["name"] == wins[0].value["name"]  # the winner's write is what is stored


def test_tenant_keys_do_not_leak_between_advertisers(nats_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        nc, js = await _js(nats_url, "t-tenant")
        store = await Store(js).open()
        await store.create_campaign({"id": "cmpa1", "advertiser_id": "advtena", "created_at": "1"})
        await store.create_campaign({"id": "cmpb1", "advertiser_id": "advtenb", "created_at": "1"})
        a = [v.value["id"] for v in await store.list_campaigns("advtena")]
        b = [v.value["id"] for v in await store.list_campaigns("advtenb")]
        await nc.close()
        return a, b

    a, b = run(scenario)
    assert a == ["cmpa1"]
    assert b == ["cmpb1"]


def test_a_listing_returns_every_campaign_every_time(nats_url: str) -> None:
    """nats-py's watcher can signal the end of its replay before values already on their way
    (nats-io/nats.py#842): a listing of 782 campaigns once came back empty in the e2e suite. The store counts
    the replay from the consumer instead. Listed many times, alone and several at once, every listing holds
    every campaign, oldest first; an advertiser without campaigns lists none, without waiting."""
    n = 1_500

    async def scenario() -> tuple[list[list[str]], list[str], float]:
        nc, js = await _js(nats_url, "t-list")
        store = await Store(js).open()
        await asyncio.gather(*(store.create_campaign({"id": f"cmpl{i:05d}", "advertiser_id": "advlist",
                                                      "created_at": f"{i:05d}"}) for i in range(n)))
        listings = []
        for _ in range(10):
            listings += await asyncio.gather(*(store.list_campaigns("advlist") for _ in range(4)))
        t0 = time.perf_counter()
        empty = await store.list_campaigns("advnone")
        waited = time.perf_counter() - t0
        await nc.close()
        return [[v.value["id"] for v in listing] for listing in listings], empty, waited

    listings, empty, waited = run(scenario)
    want = [f"cmpl{i:05d}" for i in range(n)]
    assert [len(listing) for listing in listings] == [n] * len(listings)
    assert all(listing == want for listing in listings)
    assert empty == [] and waited < 2.0


def test_the_first_snapshot_waits_for_every_stored_campaign_and_advertiser(nats_url: str) -> None:
    """The snapshot builder's first build, at a control plane's start, waits for the stores' whole replays
    (counted, not nats-py's early end-of-replay marker): otherwise edges would get a snapshot short of
    campaigns and forget their state, or short of an advertiser's postback token hashes and refuse its
    postbacks. Several builders started over 1,500 stored campaigns and 300 advertisers each hold all of them
    when they declare the replay done; over empty buckets a builder declares it at once. (Unlike the
    listing's, this test has not caught the marker early with the old code here: it checks the counting.)"""
    from control_plane.builder import SnapshotBuilder

    n, advertisers = 1_500, 300

    async def held_at_start(js: Any) -> tuple[tuple[int, int], float]:
        builder = SnapshotBuilder(js, ("eu",), reserve_cpm_micros=0)
        held: list[tuple[int, int]] = []

        class Recorded(asyncio.Event):  # what the builder holds at the moment it declares the replay done
            def set(self) -> None:
                held.append((len(builder._campaigns), len(builder._postback)))
                super().set()

        builder._initial_done = Recorded()
        t0 = time.perf_counter()
        watch = asyncio.create_task(builder._watch())
        await asyncio.wait_for(builder._initial_done.wait(), 30)
        waited = time.perf_counter() - t0
        watch.cancel()
        return held[0], waited

    async def scenario() -> tuple[list[tuple[int, int]], tuple[tuple[int, int], float]]:
        nc, js = await _js(nats_url, "t-first")
        await _empty_stores(js)
        store = await Store(js).open()
        await asyncio.gather(*(store.create_campaign({"id": f"cmpf{i:05d}", "advertiser_id": f"advf{i % 7}",
                                                      "created_at": f"{i:05d}"}) for i in range(n)))
        await asyncio.gather(*(store.create_advertiser({"id": f"advf{i}", "postback_token_sha256s": [f"{i:064x}"]})
                               for i in range(advertisers)))
        held = [h for h, _ in await asyncio.gather(*(held_at_start(js) for _ in range(8)))]
        await _empty_stores(js)
        empty = await held_at_start(js)
        await nc.close()
        return held, empty

    held, (empty_held, empty_waited) = run(scenario)
    assert held == [(n, advertisers)] * len(held)
    assert empty_held == (0, 0) and empty_waited < 2.0


def test_a_replay_that_stalls_before_its_first_entry_fails_instead_of_building_an_empty_snapshot(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay that times out before any entry (its consumer's size unread, say) fails the builder's watch,
    so the edges keep their last snapshot while ``run`` is restarted; before, it was "built from as far as it
    got": from nothing, a snapshot without campaigns. One that stalls later is still built from what it has."""
    from nats.errors import TimeoutError as NatsTimeoutError

    import control_plane.builder as builder_module

    real = builder_module.replay

    def stalling_after(count: int) -> Callable[[Any], Any]:
        async def stalls(watcher: Any) -> Any:
            seen = 0
            async for entry in real(watcher):
                if seen == count:
                    raise NatsTimeoutError
                seen += 1
                yield entry
        return stalls

    async def attempt(js: Any, count: int) -> tuple[bool, int, str]:
        monkeypatch.setattr(builder_module, "replay", stalling_after(count))
        builder = builder_module.SnapshotBuilder(js, ("eu",), reserve_cpm_micros=0)
        watch = asyncio.create_task(builder._watch())
        done = asyncio.create_task(builder._initial_done.wait())
        await asyncio.wait({watch, done}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        failure = repr(watch.exception()) if watch.done() else ""
        watch.cancel()
        done.cancel()
        return builder._initial_done.is_set(), len(builder._campaigns), failure

    async def scenario() -> list[tuple[bool, int, str]]:
        nc, js = await _js(nats_url, "t-stall")
        await _empty_stores(js)
        store = await Store(js).open()
        for i in range(3):
            await store.create_campaign({"id": f"cmps{i}", "advertiser_id": "advs", "created_at": f"{i}"})
        outcomes = [await attempt(js, 0), await attempt(js, 1)]
        await nc.close()
        return outcomes

    (first_done, first_held, failure), later = run(scenario)
    assert (first_done, first_held) == (False, 0) and "TimeoutError" in failure
    assert later[0] and later[1] >= 1 and later[2] == ""  # the watch goes on: the rest may have arrived since


def test_a_store_watch_that_ends_fails_the_builder_s_run_and_a_restart_replays_first(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-py ends a KV watch only when it is stopped, and then without an error: the builder's follow used
    to end quietly, leaving every later snapshot without that store's changes. Now the watch raises, the
    other store's watch stops with it (the task group), and ``run`` surfaces it for its supervisor. The
    supervisor's restart of ``run`` builds nothing until its own replays are done (a write while it was down
    is in the first build): held here until the test lets them go."""
    from nats.js.kv import KeyValue

    import control_plane.builder as builder_module

    watchers: list[Any] = []
    watchall = KeyValue.watchall

    async def recorded(self: Any, **kwargs: Any) -> Any:
        watcher = await watchall(self, **kwargs)
        watchers.append(watcher)
        return watcher

    monkeypatch.setattr(KeyValue, "watchall", recorded)
    built: list[int] = []
    build = builder_module.SnapshotBuilder.build_and_publish

    async def counted(self: Any) -> None:
        built.append(len(self._campaigns))
        await build(self)

    monkeypatch.setattr(builder_module.SnapshotBuilder, "build_and_publish", counted)

    async def scenario() -> tuple[str, list[int], list[int], bool]:
        nc, js = await _js(nats_url, "t-ended")
        builder = builder_module.SnapshotBuilder(js, ("ended",), reserve_cpm_micros=0, refresh_s=0.05,
                                                 debounce_s=0.0)
        running = asyncio.create_task(builder.run())
        await asyncio.wait_for(builder._initial_done.wait(), 30)
        await watchers[1].stop()  # the advertiser store's
        try:
            await asyncio.wait_for(running, 10)
            failure = "run returned"
        except Exception as exc:  # what run raised (or the wait timing out) is the subject
            failure = repr(exc)
        before = len(builder._campaigns)
        await (await Store(js).open()).create_campaign({"id": "cmp-while-down", "advertiser_id": "adv-down",
                                                        "created_at": "0"})
        gate = asyncio.Event()
        replay = builder_module.replay

        async def held(watcher: Any) -> Any:
            await gate.wait()
            async for entry in replay(watcher):
                yield entry

        monkeypatch.setattr(builder_module, "replay", held)
        built.clear()
        builder._dirty.set()  # as if a change were waiting: only the replays may hold the build back
        restarted = asyncio.create_task(builder.run())
        await asyncio.sleep(0.5)  # ten refresh periods
        while_held, waited = list(built), not builder._initial_done.is_set()
        gate.set()
        await asyncio.wait_for(builder._initial_done.wait(), 30)
        for _ in range(200):
            if built:
                break
            await asyncio.sleep(0.05)
        restarted.cancel()
        await nc.close()
        return failure, while_held, [n - before for n in built[:1]], waited

    failure, while_held, first_build, waited = run(scenario)
    assert f"the {S.ADVERTISERS_BUCKET} store's watch ended" in failure
    assert while_held == [] and waited  # nothing built from the state of before the restart
    assert first_build == [1]  # the first build after it has the campaign written while it was down


def test_a_rotated_or_deleted_advertiser_s_postback_keys_change_the_next_snapshot(nats_url: str) -> None:
    """After the first replay the builder follows the advertiser store: a rotated postback token is a change
    that marks the snapshot for a rebuild, with both hashes held; a write that leaves the hashes as they were
    is not; a deleted advertiser's hashes are dropped (they were kept before, valid at every edge until a
    restart)."""
    from control_plane.builder import SnapshotBuilder

    async def settled(applied: list[tuple[str, bool]], count: int) -> None:
        for _ in range(250):
            if len(applied) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the builder saw {applied}, not {count} changes")

    async def scenario() -> list[Any]:
        nc, js = await _js(nats_url, "t-adv")
        store = await Store(js).open()
        await store.create_advertiser({"id": "advrot", "postback_token_sha256s": ["a" * 64]})
        builder = SnapshotBuilder(js, ("eu",), reserve_cpm_micros=0)
        applied: list[tuple[str, bool]] = []
        apply = builder._apply_advertiser

        def recorded(entry: Any) -> bool:
            changed = apply(entry)
            if entry.key == "advrot":  # other tests' advertisers may be in the bucket
                applied.append((entry.key, changed))
            return changed

        builder._apply_advertiser = recorded  # type: ignore[method-assign]
        watch = asyncio.create_task(builder._watch())
        await asyncio.wait_for(builder._initial_done.wait(), 30)
        seen: list[Any] = [list(applied), builder._postback.get("advrot")]
        builder._dirty.clear()
        await store.add_postback_token("advrot", "b" * 64, keep=2)
        await settled(applied, 2)
        seen += [builder._dirty.is_set(), builder._postback.get("advrot")]
        builder._dirty.clear()
        kv = await js.key_value(S.ADVERTISERS_BUCKET)
        await kv.put("advrot", (await kv.get("advrot")).value)  # the same record again
        await settled(applied, 3)
        seen += [builder._dirty.is_set()]
        await kv.delete("advrot")
        await settled(applied, 4)
        seen += [builder._dirty.is_set(), builder._postback.get("advrot"), applied[1:]]
        watch.cancel()
        await nc.close()
        return seen

    assert run(scenario) == [
        [("advrot", True)], ["a" * 64],  # the replay
        True, ["b" * 64, "a" * 64],  # the rotation: the new token first, the previous one still valid
        False,  # the same hashes: no rebuild
        True, None, [("advrot", True), ("advrot", False), ("advrot", True)],  # the delete
    ]


@pytest.mark.parametrize("campaigns", [3, 4000], ids=["inline", "object-store"])
def test_snapshot_reaches_a_follower_now_and_on_every_change(nats_url: str, campaigns: int) -> None:
    region = f"snap{campaigns}"

    async def scenario() -> tuple[list[int], int]:
        nc, js = await _js(nats_url, "t-snap")
        first = build_snapshot([_campaign(i) for i in range(campaigns)], version=1, created_ms=1,
                               reserve_cpm_micros=0)
        data = encode_snapshot(first)
        pointer = await publish_snapshot(js, region, 1, data)
        assert pointer.inline == (len(data) <= INLINE_SNAPSHOT_LIMIT)
        seen: list[int] = []
        got = asyncio.Event()

        async def on_snapshot(version: int, payload: bytes) -> None:
            snap = decode_snapshot(payload)
            assert snap.version == version
            assert len(snap.campaigns) >= campaigns
            seen.append(version)
            if version == 2:
                got.set()

        sub = await follow_snapshots(js, region, on_snapshot)
        second = build_snapshot([_campaign(i) for i in range(campaigns + 1)], version=2, created_ms=2,
                                reserve_cpm_micros=0)
        await publish_snapshot(js, region, 2, encode_snapshot(second))
        await asyncio.wait_for(got.wait(), 10)
        await sub.unsubscribe()
        await nc.close()
        return seen, len(data)

    seen, size = run(scenario)
    assert seen == [1, 2]  # the existing snapshot on subscribe, then the change, in order
    if campaigns > 100:
        assert size > INLINE_SNAPSHOT_LIMIT  # really went through the Object Store path


async def _wait_messages(js: Any, stream: str, expected: int, timeout_s: float = 10) -> int:
    """The stream's message count once it reaches ``expected`` (sourcing is asynchronous), or at the timeout
    (then a little longer, so a count that overshoots shows up)."""
    deadline = time.monotonic() + timeout_s
    while (await js.stream_info(stream)).state.messages < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return (await js.stream_info(stream)).state.messages


def _event(i: int, kind: EventType = EventType.IMPRESSION, campaign: str = "cmpcol", cost: int = 1000) -> Event:
    return Event(event_id=f"imp:col-{i}", type=kind, ts_ms=int(time.time() * 1000), region="eu", pop="p1",
                 auction_id=f"a{i}", impression_id=f"col-{i}", campaign_id=campaign, creative_id="cr1",
                 advertiser_id="adv1", placement="p", bid_type=BidType.CPM, price_micros=cost, cost_micros=cost)


def test_publisher_sets_msg_id_so_jetstream_drops_republished_events(nats_url: str) -> None:
    async def scenario() -> tuple[int, int, int, int]:
        nc, js = await _js(nats_url, "t-pub")
        await js.purge_stream(S.EVENTS_STREAM)
        await js.purge_stream(S.region_events_stream("eu"))
        publisher = EventPublisher(nc)
        task = asyncio.create_task(publisher.run())
        for i in range(300):
            publisher.submit(S.event_subject("eu", EventType.IMPRESSION), f"imp:pub-{i}",
                             encode_event(_event(i)), billing=True)
        for i in range(100):  # the same ids again, as a retry after a lost PubAck would send them
            publisher.submit(S.event_subject("eu", EventType.IMPRESSION), f"imp:pub-{i}",
                             encode_event(_event(i)), billing=True)
        assert await publisher.drain(10)
        task.cancel()
        regional = (await js.stream_info(S.region_events_stream("eu"))).state.messages
        hub = await _wait_messages(js, S.EVENTS_STREAM, 300)
        await nc.close()
        return regional, hub, publisher.stats

    regional, hub, stats = run(scenario)
    assert regional == 300  # the region's stream dropped the 100 retries by Nats-Msg-Id
    assert hub == 300  # and the hub sourced each event once
    assert stats.acked == 400
    # The first 256 went as one atomic batch; the rest held ids the stream had, so that batch was refused
    # whole and its events went one by one: 44 stored, 100 recognised as duplicates.
    assert stats.batches == 1 and stats.batch_splits == 1
    assert stats.duplicates == 100


def test_publisher_falls_back_to_single_publishes_on_a_stream_without_atomic_batches(nats_url: str) -> None:
    from nats.js import api

    async def scenario() -> tuple[int, Any]:
        nc, js = await _js(nats_url, "t-pub-noatomic")
        await js.add_stream(api.StreamConfig(name="T_NOATOMIC", subjects=["t.noatomic.>"],
                                             storage=api.StorageType.FILE, duplicate_window=600))
        await js.purge_stream("T_NOATOMIC")
        publisher = EventPublisher(nc)
        acks = [publisher.submit_acked("t.noatomic.e", f"na-{i}", b"x") for i in range(50)]
        task = asyncio.create_task(publisher.run())
        await asyncio.wait_for(asyncio.gather(*acks), 10)
        task.cancel()
        stored = (await js.stream_info("T_NOATOMIC")).state.messages
        await nc.close()
        return stored, publisher.stats

    stored, stats = run(scenario)
    assert stored == 50
    assert stats.batch_splits == 1 and stats.batches == 0 and stats.acked == 50


def test_publisher_sheds_decisions_before_billing_events_when_full() -> None:
    publisher = EventPublisher(None, soft_limit=2, hard_limit=4)
    assert publisher.submit("s", "dec:1", b"", billing=False)
    assert publisher.submit("s", "dec:2", b"", billing=False)
    assert not publisher.submit("s", "dec:3", b"", billing=False)  # over the soft limit: shed
    assert publisher.submit("s", "imp:1", b"", billing=True)  # billing still accepted
    assert publisher.submit("s", "imp:2", b"", billing=True)
    assert not publisher.submit("s", "imp:3", b"", billing=True)  # hard limit
    assert (publisher.stats.shed, publisher.stats.rejected_billing) == (1, 1)


def test_collector_stores_each_event_once_and_dead_letters_poison(nats_url: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    async def scenario() -> dict[str, Any]:
        nc, js = await _js(nats_url, "t-col")
        await js.purge_stream(S.EVENTS_STREAM)
        store = open_store(str(tmp_path / "chdb"))
        store.ensure_schema()
        events = [_event(i) for i in range(250)]
        # A batch the "previous collector" inserted but crashed before acking: it must not count twice.
        store.insert_events(events[:50], "crashed-batch")
        for e in events + events[:30]:  # 30 retried publishes: JetStream drops them by Nats-Msg-Id
            await js.publish(S.event_subject("eu", e.type), encode_event(e), headers={"Nats-Msg-Id": e.event_id})
        for i in range(30):  # 30 copies that slipped past JetStream's window (new msg ids): ClickHouse must drop them
            await js.publish(S.event_subject("eu", EventType.IMPRESSION), encode_event(events[i]),
                             headers={"Nats-Msg-Id": f"late-copy-{i}"})
        await js.publish(S.event_subject("eu", EventType.CLICK), b"\x93not an event",
                         headers={"Nats-Msg-Id": "poison-1"})
        executor = ThreadPoolExecutor(max_workers=1)
        collector = Collector(js, store, executor, batch=100, fetch_timeout_s=0.2)
        task = asyncio.create_task(collector.run())
        deadline = time.monotonic() + 20
        while collector.stats.received < 281 and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        task.cancel()
        consumer = await js.consumer_info(S.EVENTS_STREAM, S.COLLECTOR_DURABLE)
        dlq = await js.stream_info("ADS_DLQ")
        stats = store.stats()
        spend = store.campaign_spend(["cmpcol"])
        store.close()
        executor.shutdown()
        await js.delete_consumer(S.EVENTS_STREAM, S.COLLECTOR_DURABLE)
        await nc.close()
        return {"stats": stats, "spend": spend, "pending": consumer.num_ack_pending,
                "unprocessed": consumer.num_pending, "dlq": dlq.state.messages, "collector": collector.stats}

    out = run(scenario)
    assert out["stats"].unique_events == 250
    assert out["stats"].duplicates == 0
    assert out["spend"]["cmpcol"] == 250 * 1000
    assert out["dlq"] == 1
    assert out["collector"].dead_lettered == 1
    assert out["pending"] == 0 and out["unprocessed"] == 0  # everything acknowledged after the insert


def test_grants_never_exceed_the_budget_under_concurrent_askers(nats_url: str) -> None:
    budget = 1_000_000
    terms = BudgetTerms(daily_budget_micros=budget, total_budget_micros=budget, timezone="UTC",
                        unit_ceiling_micros=1_000)

    async def scenario() -> tuple[int, int]:
        nc, js = await _js(nats_url, "t-grant")
        store = await Store(js).open()
        campaign_id = f"cmpgrant{time.time_ns()}"
        service = GrantService(nc, store, lambda cid: terms if cid == campaign_id else None, 0.05)
        await service.start()
        # A second control-plane replica racing the first through KV compare-and-set.
        nc2, js2 = await _js(nats_url, "t-grant-2")
        service2 = GrantService(nc2, await Store(js2).open(), lambda cid: terms, 0.05)
        await service2.start()

        async def asker() -> int:
            total = 0
            for _ in range(40):
                reply = await nc.request(S.BUDGET_GRANT_SUBJECT,
                                         msgpack.packb({"asks": {campaign_id: 200_000}}), timeout=5)
                granted, _, day = msgpack.unpackb(reply.data)["grants"][campaign_id]
                assert day == local_day(time.time(), "UTC")
                total += granted
            return total

        totals = await asyncio.gather(*(asker() for _ in range(6)))
        state, _ = await store.get_grant_state(campaign_id)
        await nc.close()
        await nc2.close()
        return sum(totals), state.granted_total if state else 0

    granted, recorded = run(scenario)
    assert granted == recorded  # every micro handed out is on record
    assert budget - 1_000 < granted <= budget  # the whole budget is granted, never more


def test_streams_are_configured_for_billing(nats_url: str) -> None:
    async def scenario() -> Any:
        nc, js = await _js(nats_url, "t-cfg")
        hub = (await js.stream_info(S.EVENTS_STREAM)).config
        regional = (await js.stream_info(S.region_events_stream("eu"))).config
        await nc.close()
        return hub, regional

    hub, regional = run(scenario)
    for config in (hub, regional):  # the hub's window is explicit: a sourcing stream has none by default
        assert config.duplicate_window == S.EVENTS_DUPLICATE_WINDOW_S
        assert json.dumps(str(config.storage)).lower().count("file") == 1
    assert not hub.subjects  # only sources: a stream that also listened on ads.ev.> would store twice
    assert sorted(src.name for src in hub.sources) == [S.region_events_stream("eu"), S.region_events_stream("us")]
    assert regional.subjects == ["ads.ev.eu.>"]


def test_a_lost_grant_reply_is_replayed_not_granted_twice(nats_url: str) -> None:
    terms = BudgetTerms(daily_budget_micros=1_000_000, total_budget_micros=1_000_000, timezone="UTC",
                        unit_ceiling_micros=1_000)

    async def scenario() -> tuple[list[int], int]:
        nc, js = await _js(nats_url, "t-replay")
        store = await Store(js).open()
        campaign_id = f"cmpreplay{time.time_ns()}"
        service = GrantService(nc, store, lambda cid: terms, 0.05)
        await service.start()
        request = msgpack.packb({"id": "req-1", "asks": {campaign_id: 30_000}})
        granted = []
        for _ in range(3):  # the edge never saw the first answer and re-sends the same request id
            reply = await nc.request(S.BUDGET_GRANT_SUBJECT, request, timeout=5)
            granted.append(msgpack.unpackb(reply.data)["grants"][campaign_id][0])
        state, _ = await store.get_grant_state(campaign_id)
        await nc.close()
        return granted, state.granted_total if state else 0

    granted, recorded = run(scenario)
    assert granted == [30_000, 30_000, 30_000]  # the same answer every time
    assert recorded == 30_000  # granted once


async def _grant_service(nats_url: str, name: str,
                         terms: BudgetTerms) -> tuple[Any, Store, Callable[[dict], Awaitable[dict]]]:
    """A started grant service (every campaign on ``terms``, whole-budget slices) and a function that sends
    it one grant request, as the edge's grant loop does, and returns the answer."""
    nc, js = await _js(nats_url, name)
    store = await Store(js).open()
    await GrantService(nc, store, lambda cid: terms, 1.0).start()

    async def ask(request: dict) -> dict:
        reply = await nc.request(S.BUDGET_GRANT_SUBJECT, msgpack.packb(request), timeout=5)
        return msgpack.unpackb(reply.data, raw=False)

    return nc, store, ask


def test_allowance_offered_back_is_credited_once_and_granted_again(nats_url: str) -> None:
    """A live account offers back what it holds beyond its needs; the counter goes down by exactly that (also
    when the request is re-sent after a lost reply), and another account's ask gets it."""
    terms = BudgetTerms(daily_budget_micros=100_000, total_budget_micros=1_000_000, timezone="UTC",
                        unit_ceiling_micros=1_000)

    async def scenario() -> tuple[int, int, int, int]:
        nc, store, ask = await _grant_service(nats_url, "t-giveback", terms)
        campaign_id = f"cmpgive{time.time_ns()}"
        first = await ask({"id": "a1", "worker": "eu.0", "region": "eu", "asks": {campaign_id: 100_000}})
        granted, exhausted, day = first["grants"][campaign_id]
        offer = {"id": "a2", "worker": "eu.0", "region": "eu", "asks": {},
                 "unused": {campaign_id: [granted - 15_000, day]}, "give_back": {campaign_id: [15_000, day]}}
        for _ in range(2):  # the reply was lost once: the same request id comes again
            assert (await ask(offer))["lease_s"] is not None
        state, _ = await store.get_grant_state(campaign_id)
        other = await ask({"id": "b1", "worker": "us.0", "region": "us", "asks": {campaign_id: 100_000}})
        await nc.close()
        return granted, int(exhausted), state.granted_day if state else -1, other["grants"][campaign_id][0]

    granted, exhausted, after_offer, regranted = run(scenario)
    assert granted == 25_000 and exhausted == 0  # a quarter of the remainder at a time
    assert after_offer == granted - 15_000  # credited once, not twice
    # A quarter of what is left once the 15,000 came back (90,000); without the credit it would be 18,750.
    assert regranted == 22_500


def test_every_answer_names_the_held_campaigns_the_allocator_has_run_out_of(nats_url: str) -> None:
    """A quiet holder that has not asked since the budget ran out learns it from its heartbeat's answer (so it
    can offer back its excess), and stops hearing it once allowance has come back."""
    terms = BudgetTerms(daily_budget_micros=4_000, total_budget_micros=1_000_000, timezone="UTC",
                        unit_ceiling_micros=1_000)

    async def scenario() -> tuple[list, list, list]:
        nc, _, ask = await _grant_service(nats_url, "t-exhausted", terms)
        cid = f"cmpex{time.time_ns()}"
        first = await ask({"id": "q1", "worker": "eu.0", "region": "eu", "asks": {cid: 1_000}})
        day = first["grants"][cid][2]
        before = (await ask({"id": "q2", "worker": "eu.0", "region": "eu", "asks": {},
                             "unused": {cid: [1_000, day]}}))["exhausted"]
        for n in range(6):  # another region takes the rest
            await ask({"id": f"b{n}", "worker": "us.0", "region": "us", "asks": {cid: 1_000}})
        # Nothing moved there since its last report: its heartbeat reports nothing, and still learns it.
        quiet = (await ask({"id": "q3", "worker": "eu.0", "region": "eu", "asks": {},
                            "unused": {}}))["exhausted"]
        await ask({"id": "b9", "worker": "us.0", "region": "us", "asks": {}, "unused": {cid: [0, day]},
                   "give_back": {cid: [2_000, day]}})
        after = (await ask({"id": "q4", "worker": "eu.0", "region": "eu", "asks": {},
                            "unused": {cid: [1_000, day]}}))["exhausted"]
        await nc.close()
        return before, quiet, after

    before, quiet, after = run(scenario)
    assert before == [] and after == []
    assert len(quiet) == 1 and quiet[0].startswith("cmpex")
