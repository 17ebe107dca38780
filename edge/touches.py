"""The last click and the last rendered impression per advertiser and user, for view-through and user-level
conversion attribution (adapters: the region's Redis, or process memory).

Only consenting users have a user key, so only they are remembered. One small hash per (advertiser, user)
whose fields are overwritten, so memory is bounded by users, not by traffic; it expires after the longest
attribution window. Attribution is best effort on top of billing: a store error is counted and the beacon
still answers (its event is already durable).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

import msgpack
from redis.asyncio import Redis

from edge.attribution import Touch
from edge.redis_fast import fast_fail_client

CLICK, VIEW = "click", "view"
# The longest windows a campaign may set (control_plane.models): 90 days of clicks, 30 of views.
TTL_S = 90 * 86_400


class TouchStore(Protocol):
    async def record(self, kind: str, advertiser_id: str, user_key: str, touch: Touch) -> None: ...

    async def last(self, advertiser_id: str, user_key: str) -> tuple[Touch | None, Touch | None]:
        """(last click, last view)."""
        ...

    async def aclose(self) -> None: ...


def _pack(touch: Touch) -> bytes:
    return msgpack.packb([touch.ts_s, dict(touch.claims)], use_bin_type=True)


def _unpack(raw: bytes | None) -> Touch | None:
    if not raw:
        return None
    ts, claims = msgpack.unpackb(raw, raw=False)
    return Touch(float(ts), claims)


class MemoryTouchStore:
    """Per-process twin, bounded LRU (a PoP without Redis, and unit tests)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._data: OrderedDict[tuple[str, str], dict[str, Touch]] = OrderedDict()
        self._capacity = capacity

    async def record(self, kind: str, advertiser_id: str, user_key: str, touch: Touch) -> None:
        key = (advertiser_id, user_key)
        entry = self._data.pop(key, {})
        if kind not in entry or entry[kind].ts_s <= touch.ts_s:
            entry[kind] = touch
        self._data[key] = entry
        while len(self._data) > self._capacity:
            self._data.popitem(last=False)

    async def last(self, advertiser_id: str, user_key: str) -> tuple[Touch | None, Touch | None]:
        entry = self._data.get((advertiser_id, user_key), {})
        return entry.get(CLICK), entry.get(VIEW)

    async def aclose(self) -> None:
        return None


# Keep the newer touch: two PoPs may record the same user's touches out of order.
_RECORD_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if (not old) or tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':ts') or '0') <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':ts', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisTouchStore:
    def __init__(self, client: Redis, *, region: str, timeout_s: float = 0.25) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.prefix = f"touch:{region}:"
        self._record = client.register_script(_RECORD_LUA)

    @classmethod
    def from_url(cls, url: str, *, region: str, timeout_s: float = 0.25) -> RedisTouchStore:
        return cls(fast_fail_client(url, timeout_s=timeout_s), region=region, timeout_s=timeout_s)

    def _key(self, advertiser_id: str, user_key: str) -> str:
        return f"{self.prefix}{advertiser_id}:{user_key}"

    async def record(self, kind: str, advertiser_id: str, user_key: str, touch: Touch) -> None:
        async with asyncio.timeout(self.timeout_s * 2):
            await self._record(keys=[self._key(advertiser_id, user_key)],
                               args=[kind, _pack(touch), repr(touch.ts_s), TTL_S])

    async def last(self, advertiser_id: str, user_key: str) -> tuple[Touch | None, Touch | None]:
        async with asyncio.timeout(self.timeout_s * 2):
            click, view = await self.client.hmget(self._key(advertiser_id, user_key), [CLICK, VIEW])
        return _unpack(click), _unpack(view)

    async def aclose(self) -> None:
        await self.client.aclose()


def new_touch_store(redis_url: str, region: str) -> TouchStore:
    return RedisTouchStore.from_url(redis_url, region=region) if redis_url else MemoryTouchStore()


__all__ = ["CLICK", "VIEW", "MemoryTouchStore", "RedisTouchStore", "TouchStore", "new_touch_store"]
