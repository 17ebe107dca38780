"""The IVT store (edge/ivt_store.py) against a real redis-server this module starts on a free port.

Checks that the Redis adapter gives exactly the in-memory twin's answers (so the unit tests of the twin speak
for Redis too), that two edge workers share one region's counts and impressions, that keys expire, that
classify turns real counts into ip_flood and click_without_impression, and that a stopped or hung Redis fails
open within the time budget and recovers when Redis is back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from adserver.processes import Proc, ProcessGroup, start_redis
from edge.ivt import Activity, BeaconContext, InvalidReason, IvtPolicy, classify, ua_hash
from edge.ivt_store import IvtStoreUnavailable, MemoryFloodCounter, RedisFloodCounter, load_lists
from replication.events import EventType

pytestmark = pytest.mark.integration

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
T0 = 1_700_000_040.0  # a 60 s window boundary
_regions = (f"r{n}" for n in itertools.count())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[ProcessGroup, Proc, str]]:
    """A server of the test's own, for tests that stop, freeze or restart it."""
    group = ProcessGroup(tmp_path)
    proc, url = start_redis(group)
    try:
        yield group, proc, url
    finally:
        for p in group.procs:
            if p.alive():
                os.kill(p.popen.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        group.stop_all()


def store(url: str, **kw: object) -> RedisFloodCounter:
    kw.setdefault("region", next(_regions))  # keys of one test never meet another's
    return RedisFloodCounter.from_url(url, **kw)  # type: ignore[arg-type]


def test_redis_gives_the_in_memory_twins_answers(redis_url: str):
    async def scenario() -> None:
        redis = store(redis_url, window_s=10, impression_ttl_s=30)
        twin = MemoryFloodCounter(window_s=10, impression_ttl_s=30)
        rng = random.Random(7)
        now = T0
        impressions: list[str] = []
        try:
            for n in range(600):
                now += rng.choice([0.0, 0.05, 0.3, 1.7, 4.0, 11.0])  # inside windows, across them, past two
                ip = rng.choice(["81.2.69.160", "81.2.69.161", "2a02:1810:1:2::1", "2a02:1810:1:2::99"])
                ua = rng.choice(["ua-a", "ua-b", "ua-c"])
                mark = check = ""
                if rng.random() < 0.3:
                    mark = f"imp-{n}"
                    impressions.append(mark)
                elif impressions and rng.random() < 0.5:
                    check = rng.choice(impressions[-40:]) if rng.random() < 0.8 else f"never-{n}"
                got = await redis.observe(ip, ua, now, mark_impression=mark, check_impression=check)
                want = await twin.observe(ip, ua, now, mark_impression=mark, check_impression=check)
                assert got == want, (n, now, ip, ua, mark, check)
            assert redis.stats.calls == 600 and redis.stats.failures == 0
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_beacons_of_one_loop_iteration_share_one_round_trip_and_get_their_own_answers(redis_url: str):
    async def scenario() -> None:
        redis = store(redis_url, window_s=10, impression_ttl_s=30)
        twin = MemoryFloodCounter(window_s=10, impression_ttl_s=30)
        calls = [("81.2.69.160" if n % 3 else "81.2.69.161", f"ua-{n % 2}", f"imp-{n}" if n % 4 == 0 else "",
                  f"imp-{n - 2}" if n % 4 == 2 else "") for n in range(120)]
        try:
            got = await asyncio.gather(*(redis.observe(ip, ua, T0 + 1, mark_impression=mark, check_impression=check)
                                         for ip, ua, mark, check in calls))
            # The twin, one by one in the same order: what the batch must equal, beacon by beacon.
            want = [await twin.observe(ip, ua, T0 + 1, mark_impression=mark, check_impression=check)
                    for ip, ua, mark, check in calls]
            assert got == want
            assert redis.round_trips == 1
            assert got[-1].ip_count == 80 and got[2].impression_seen is True  # imp-0 marked earlier in the batch
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_two_workers_share_the_regions_counts_and_impressions(redis_url: str):
    async def scenario() -> None:
        region = next(_regions)
        a, b = store(redis_url, region=region), store(redis_url, region=region)
        other_region = store(redis_url)
        try:
            for _ in range(5):
                await a.hit("81.2.69.160", "ua", T0 + 1)
            assert await b.hit("81.2.69.160", "ua", T0 + 2) == (6, 6)
            assert await other_region.hit("81.2.69.160", "ua", T0 + 2) == (1, 1)
            await a.mark_impression("auc-1-0", T0 + 3)
            assert await b.seen_impression("auc-1-0", T0 + 4) is True
            assert await other_region.seen_impression("auc-1-0", T0 + 4) is False
        finally:
            for s in (a, b, other_region):
                await s.aclose()

    asyncio.run(scenario())


def test_every_key_written_expires(redis_url: str):
    async def scenario() -> None:
        s = store(redis_url, window_s=60, impression_ttl_s=900)
        try:
            await s.observe("81.2.69.160", ua_hash(CHROME), T0, mark_impression="auc-9-0")
            keys = [k async for k in s.client.scan_iter(match=f"{s.prefix}*")]
            assert len(keys) == 3  # the IP counter, the UA counter, the impression set
            for key in keys:
                ttl = await s.client.ttl(key)
                limit = 2 * 900 + 60 if b":imp:" in key else 2 * 60 + 1
                assert 0 < ttl <= limit, (key, ttl)
        finally:
            await s.aclose()

    asyncio.run(scenario())


def test_real_counts_drive_ip_flood_and_click_without_impression(redis_url: str):
    lists = load_lists()
    policy = IvtPolicy(ip_limit=50)

    async def scenario() -> None:
        s = store(redis_url)
        try:
            uah = ua_hash(CHROME)
            reasons = []
            for n in range(60):
                activity = await s.observe("81.2.69.160", uah, T0 + n * 0.1, mark_impression=f"auc-{n}-0")
                b = BeaconContext(EventType.IMPRESSION, {"geo": "US", "uah": uah}, user_agent=CHROME,
                                  ip="81.2.69.160")
                reasons.append(classify(b, now_s=T0 + n * 0.1, lists=lists, history=activity, policy=policy).reason)
            assert reasons[:50] == [InvalidReason.NONE] * 50
            assert reasons[50:] == [InvalidReason.IP_FLOOD] * 10
            # Clicks from another IP: one on a recorded impression, one on an impression never shown.
            cases = (("auc-3-0", InvalidReason.NONE), ("auc-999-0", InvalidReason.CLICK_WITHOUT_IMPRESSION))
            for imp, expected in cases:
                activity = await s.observe("81.2.69.170", uah, T0 + 30, check_impression=imp)
                click = BeaconContext(EventType.CLICK, {"geo": "US", "uah": uah, "iat": T0}, user_agent=CHROME,
                                      ip="81.2.69.170")
                assert classify(click, now_s=T0 + 30, lists=lists, history=activity, policy=policy).reason \
                    is expected
        finally:
            await s.aclose()

    asyncio.run(scenario())


def test_one_round_trip_per_beacon_is_fast(redis_url: str):
    async def scenario() -> float:
        s = store(redis_url)
        try:
            n = 2000
            started = time.perf_counter()
            for i in range(n):
                await s.observe(f"81.2.{i % 200}.1", "ua", T0 + i * 0.001, mark_impression=f"auc-{i}-0")
            return (time.perf_counter() - started) / n
        finally:
            await s.aclose()

    per_call = asyncio.run(scenario())
    print(f"observe: {per_call * 1e6:.0f} us per beacon (one script call, one round trip)")
    assert per_call < 0.002  # ~0.13 ms here; 2 ms means something does several round trips or sleeps


def test_a_stopped_redis_fails_open_fast_and_recovers_on_restart(own_redis: tuple[ProcessGroup, Proc, str]):
    group, proc, url = own_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    async def scenario() -> None:
        s = store(url, timeout_s=0.2, retry_after_s=0.5)
        closed = store(url, timeout_s=0.2, retry_after_s=0.5, fail_open=False)
        try:
            assert (await s.observe("81.2.69.160", "ua", T0, check_impression="x")).impression_seen is False
            proc.stop()
            started = time.perf_counter()
            assert await s.observe("81.2.69.160", "ua", T0 + 1, check_impression="x") == Activity()
            assert time.perf_counter() - started < 1.0
            assert s.stats.failures == 1 and s.stats.last_error
            # Inside the breaker's pause nothing is tried: no connection attempt per beacon.
            assert await s.observe("81.2.69.160", "ua", T0 + 1.2) == Activity()
            assert s.stats.skipped == 1 and s.stats.failures == 1
            with pytest.raises(IvtStoreUnavailable):
                await closed.observe("81.2.69.160", "ua", T0 + 1)
            # Redis comes back (empty: no persistence); the next try after the pause counts again.
            start_redis(group, port)
            activity = await s.observe("81.2.69.160", "ua", T0 + 2, check_impression="x")
            assert activity == Activity(ip_count=1, ua_count=1, impression_seen=False)
            assert s.stats.calls == 2
        finally:
            await s.aclose()
            await closed.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("client", ["from_url", "untuned"])
def test_a_hung_redis_costs_one_timeout_then_recovers(own_redis: tuple[ProcessGroup, Proc, str], client: str):
    _, proc, url = own_redis

    async def scenario() -> None:
        if client == "from_url":
            s = store(url, timeout_s=0.2, retry_after_s=0.5)
        else:
            # A client without socket timeouts (redis-py's default would wait 5 s and retry): the store's own
            # deadline must still bound the call.
            s = RedisFloodCounter(Redis.from_url(url), region=next(_regions), timeout_s=0.2, retry_after_s=0.5)
        try:
            await s.mark_impression("auc-1-0", T0)
            os.kill(proc.popen.pid, signal.SIGSTOP)  # accepts connections, answers nothing
            try:
                started = time.perf_counter()
                assert await s.observe("81.2.69.160", "ua", T0 + 1, check_impression="auc-1-0") == Activity()
                elapsed = time.perf_counter() - started
                assert elapsed < 1.0, elapsed
                assert s.stats.failures == 1
            finally:
                os.kill(proc.popen.pid, signal.SIGCONT)
            # Back: the answer is this call's own (a timed-out reply must not be read as the next one's). The
            # frozen server still had the timed-out call in its socket buffer and may have run it on waking,
            # so the counts are 1 or 2, and the same for IP and UA.
            activity = await s.observe("81.2.69.160", "ua", T0 + 2, check_impression="auc-1-0")
            assert activity.impression_seen is True
            assert activity.ip_count == activity.ua_count and activity.ip_count in (1, 2)
            assert s.stats.calls == 2 and s.stats.failures == 1
        finally:
            await s.aclose()

    asyncio.run(scenario())


# --- the conversion touch store on the same Redis ------------------------------------------------------


def test_touch_store_keeps_the_newest_touch_per_user_and_expires(redis_url: str) -> None:
    from edge.attribution import Touch
    from edge.touches import CLICK, TTL_S, VIEW, RedisTouchStore

    async def scenario() -> tuple[object, ...]:
        a = RedisTouchStore.from_url(redis_url, region="t1")  # two PoPs of one region
        b = RedisTouchStore.from_url(redis_url, region="t1")
        other_region = RedisTouchStore.from_url(redis_url, region="t2")
        await a.record(CLICK, "adv", "u1", Touch(200.0, {"cmp": "new"}))
        await b.record(CLICK, "adv", "u1", Touch(100.0, {"cmp": "old"}))  # arrives late: must not win
        await b.record(VIEW, "adv", "u1", Touch(150.0, {"cmp": "seen"}))
        got = await a.last("adv", "u1")
        ttl = await a.client.ttl("touch:t1:adv:u1")
        isolated = await other_region.last("adv", "u1"), await a.last("adv2", "u1")
        for s in (a, b, other_region):
            await s.aclose()
        return got, ttl, isolated

    (click, view), ttl, isolated = asyncio.run(scenario())  # type: ignore[misc]
    assert click is not None and click.claims == {"cmp": "new"} and click.ts_s == 200.0
    assert view is not None and view.claims == {"cmp": "seen"}
    assert TTL_S - 60 < ttl <= TTL_S
    assert isolated == ((None, None), (None, None))  # per region and per advertiser
