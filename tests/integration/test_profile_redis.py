"""The user profile store (edge/profile_store.py) against a real redis-server: the Lua record keeps the
newest times per field and loses none under concurrency, the hash expires after its longest window, the
Redis adapter answers exactly what the in-memory twin does, and a stopped Redis fails fast, trips the
breaker, and is used again once it is back."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from adserver.processes import Proc, ProcessGroup, start_redis
from edge.profile_store import MAX_FIELDS, MemoryProfileStore, ProfileStoreDown, RedisProfileStore

pytestmark = pytest.mark.integration
NOW = 1_705_320_000.0
_regions = (f"f{n}" for n in itertools.count())


def store(url: str, **kw: object) -> RedisProfileStore:
    return RedisProfileStore.from_url(url, region=next(_regions), **kw)  # type: ignore[arg-type]


def test_records_keep_the_newest_times_and_the_twin_agrees(redis_url: str) -> None:
    async def run() -> None:
        redis, memory = store(redis_url), MemoryProfileStore()
        script = [(NOW + 5, [("c:a", 3, 3600)]), (NOW + 1, [("c:a", 3, 3600), ("k:a:x", 1, 600)]),
                  (NOW + 9, [("c:a", 3, 3600)]), (NOW + 7, [("c:a", 3, 3600), ("k:a:x", 1, 600)]),
                  (NOW + 8, [("c:b", 2, 60)])]
        for now, fields in script:
            await redis.record("u1", now, fields)
            await memory.record("u1", now, fields)
        want = {"c:a": [NOW + 5, NOW + 7, NOW + 9], "k:a:x": [NOW + 7], "c:b": [NOW + 8]}
        assert await redis.history("u1", NOW + 10) == want
        assert await memory.history("u1", NOW + 10) == want
        assert await redis.history("someone-else", NOW + 10) == {}
        await redis.aclose()

    asyncio.run(run())


def test_concurrent_records_of_one_user_lose_nothing(redis_url: str) -> None:
    async def run() -> None:
        stores = [store(redis_url, timeout_s=1.0) for _ in range(4)]  # atomicity is the point, not latency
        for s in stores[1:]:
            s.prefix = stores[0].prefix  # four workers of one region
        await asyncio.gather(*(stores[i % 4].record("u", NOW + i, [("c:a", 100, 3600)]) for i in range(80)))
        times = (await stores[0].history("u", NOW + 100))["c:a"]
        assert times == [NOW + i for i in range(80)]
        for s in stores:
            await s.aclose()

    asyncio.run(run())


def test_the_users_hash_lives_as_long_as_its_longest_window(redis_url: str) -> None:
    async def run() -> None:
        s = store(redis_url)
        await s.record("u", NOW, [("c:a", 1, 86_400)])
        await s.record("u", NOW, [("c:b", 1, 60)])  # a shorter window must not cut the longer one short
        client = Redis.from_url(redis_url)
        ttl = await client.ttl(s.prefix + "u")
        assert 86_000 < ttl <= 86_400
        await client.aclose()
        await s.aclose()

    asyncio.run(run())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    group = ProcessGroup(tmp_path)
    proc, url = start_redis(group)
    try:
        yield proc, url
    finally:
        if proc.alive():
            os.kill(proc.popen.pid, signal.SIGCONT)
        group.stop_all()


def test_a_frozen_redis_fails_fast_then_the_breaker_skips_it_until_it_is_back(own_redis: tuple[Proc, str]) -> None:
    proc, url = own_redis

    async def run() -> None:
        s = store(url, timeout_s=0.05, retry_after_s=0.5)
        await s.record("u", NOW, [("c:a", 2, 3600)])
        os.kill(proc.popen.pid, signal.SIGSTOP)  # accepts connections, never answers
        t0 = time.monotonic()
        with pytest.raises(ProfileStoreDown):
            await s.history("u", NOW)
        assert time.monotonic() - t0 < 0.5  # one timeout, not a hang
        t1 = time.monotonic()
        with pytest.raises(ProfileStoreDown, match="breaker"):
            await s.history("u", NOW + 0.1)  # within retry_after_s: not even tried
        assert time.monotonic() - t1 < 0.01
        os.kill(proc.popen.pid, signal.SIGCONT)
        # The connection that timed out may be half-read; the client drops it and the next call reconnects.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await s.history("u", NOW + 1 + time.monotonic()) == {"c:a": [NOW]}
                break
            except ProfileStoreDown:
                assert time.monotonic() < deadline, "the store did not come back after Redis did"
                await asyncio.sleep(0.1)
        await s.aclose()

    asyncio.run(run())


def test_a_full_profile_gives_up_its_stalest_segment_then_its_stalest_cap_for_a_new_field(redis_url: str) -> None:
    async def run() -> None:
        redis, memory = store(redis_url), MemoryProfileStore()
        for s in (redis, memory):
            # Full: 500 caps, 12 segments, each recorded at its own time (segment s:kw-3 the longest ago).
            assert await s.record("u", NOW, [(f"c:cmp{i}", 3, 86_400) for i in range(MAX_FIELDS - 12)]) == 0
            for i in range(12):
                await s.record("u", NOW + 100 - i, [(f"s:kw-{i}", 1, 3600)])
            # A known field still updates and gives up nothing.
            assert await s.record("u", NOW + 200, [("c:cmp0", 3, 86_400), ("s:kw-0", 1, 3600)]) == 0
            # A new cap: the stalest segment (s:kw-11) makes room, not a cap.
            assert await s.record("u", NOW + 300, [("c:new", 3, 86_400)]) == 1
            history = await s.history("u", NOW + 301)
            assert len(history) == MAX_FIELDS and history["c:new"] == [NOW + 300] and "s:kw-11" not in history
            assert history["c:cmp0"] == [NOW, NOW + 200]
            # Several new segments at once do not push each other out: each takes an older field's place.
            assert await s.record("u", NOW + 350, [("s:new-a", 1, 3600), ("s:new-b", 1, 3600)]) == 2
            history = await s.history("u", NOW + 351)
            assert {"s:new-a", "s:new-b"} <= history.keys() and "s:kw-10" not in history
            # Twelve new caps take the place of every segment, the two new ones last, then of the stalest cap:
            # one of those recorded at NOW (c:cmp0 was recorded again since; which of the tied ones goes is the
            # store's tie-break: by name, in Redis's collation).
            assert await s.record("u", NOW + 400, [(f"c:more{i}", 3, 86_400) for i in range(12)]) == 12
            history = await s.history("u", NOW + 401)
            assert len(history) == MAX_FIELDS and not any(f.startswith("s:") for f in history)
            assert "c:cmp0" in history and "c:more11" in history and "c:new" in history
            assert sum(1 for i in range(1, MAX_FIELDS - 12) if f"c:cmp{i}" not in history) == 1
            # Two new segments into a profile of caps only: the second must not push out the first (a
            # segment, the likeliest victim) but a cap.
            assert await s.record("u", NOW + 500, [("s:x", 1, 3600), ("s:y", 1, 3600)]) == 2
            assert {"s:x", "s:y"} <= (await s.history("u", NOW + 501)).keys()
        await redis.aclose()

    asyncio.run(run())
