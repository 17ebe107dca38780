"""A consenting user's profile in the region: recent impressions (frequency caps) and behavioural segments
(real-time audiences); in the region's Redis, or process memory.

One Redis hash per user (``profile:<region>:<user key>``), one field per capped campaign and per capped
creative (``edge.frequency`` names them) and per segment the user was seen in (``edge.audiences``), each
holding the newest times as a msgpack list (a segment keeps one: when it was last seen). An ad request reads
the user's whole hash in one HGETALL: a profile is small, and the edge need not know the candidates first. A
record appends its time in a Lua script, so two PoP workers recording the same user at once cannot lose one.
The hash expires after the longest window it serves.

Failures are the caller's policy (``ADSERVER_EDGE_FREQUENCY_FAIL_OPEN``): ``history`` raises, the ad path
counts it and either ignores caps or leaves every capping campaign out (segments are then unknown: the
request is served on its contextual signals). After a failure the store does not try again for
``retry_after_s``, so a hung Redis costs one timeout, not one per request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import msgpack
from redis.asyncio import Redis

from edge.audiences import SEGMENT_FIELD
from edge.frequency import appended
from edge.redis_fast import Breaker, fast_fail_client


class ProfileStoreDown(RuntimeError):
    """The store failed just now (or recently: the breaker is open)."""


class ProfileStore(Protocol):
    async def history(self, user_key: str, now_s: float) -> dict[str, list[float]]:
        """The user's field -> impression times. Raises ProfileStoreDown."""
        ...

    async def record(self, user_key: str, now_s: float, fields: Sequence[tuple[str, int, int]]) -> int:
        """One impression, for each (field, times to keep, seconds to live); returns how many fields a full
        profile gave up for new ones (``MAX_FIELDS``). Raises ProfileStoreDown."""
        ...

    async def aclose(self) -> None: ...


class MemoryProfileStore:
    """Per-process twin, a bounded LRU of users (a PoP without Redis, and unit tests). With several workers
    each sees only the impressions it recorded, so caps are per worker there."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._users: OrderedDict[str, tuple[float, dict[str, list[float]]]] = OrderedDict()
        self._capacity = capacity

    async def history(self, user_key: str, now_s: float) -> dict[str, list[float]]:
        entry = self._users.get(user_key)
        if entry is None or entry[0] <= now_s:
            return {}
        return {k: list(v) for k, v in entry[1].items()}

    async def record(self, user_key: str, now_s: float, fields: Sequence[tuple[str, int, int]]) -> int:
        expires, data = self._users.pop(user_key, (0.0, {}))
        if expires <= now_s:
            data = {}
        evicted = 0
        written = {field for field, _, _ in fields}
        for field, keep, ttl_s in fields:
            if field not in data and len(data) >= MAX_FIELDS:
                del data[stalest(data, written)]
                evicted += 1
            data[field] = appended(data.get(field, ()), now_s, keep)
            expires = max(expires, now_s + ttl_s)
        self._users[user_key] = (expires, data)
        while len(self._users) > self._capacity:
            self._users.popitem(last=False)
        return evicted

    async def aclose(self) -> None:
        return None


# At most this many fields per user, so no caller can grow a profile, and the one HGETALL per ad request,
# without bound. A new field in a full profile takes the place of the least recently recorded one
# (``stalest``): a segment's first (losing one only narrows targeting), a cap's only when no segment is left
# (losing one lets its campaign be shown again). A profile that stopped growing instead would stop capping
# every campaign the user met after it filled, and an active user's profile never expires.
MAX_FIELDS = 512


def stalest(profile: dict[str, list[float]], keep: set[str]) -> str:
    """The field a full profile gives up (see ``MAX_FIELDS``), of those not in ``keep`` (the ones this record
    writes: several new segments at once must not push each other out): the segment, else the cap, recorded
    longest ago (by its newest time; ties by name, which the Lua script compares in Redis's collation)."""
    return min((f for f in profile if f not in keep),
               key=lambda f: (not f.startswith(SEGMENT_FIELD), profile[f][-1] if profile[f] else 0.0, f))


# KEYS[1]: the user's hash. ARGV: max fields, now, SEGMENT_FIELD, then (field, keep, ttl) triples. Appends now
# to each field's msgpack list of times, keeps the newest `keep` (sorted: PoPs' clocks and workers may record
# out of order), and never shortens the hash's TTL. A new field in a full hash first removes ``stalest``'s
# choice, never a field this call writes; returns how many fields it removed. Each such field scans the hash
# (512 fields, in Redis's one thread): a full profile pays it once per new field. (Lua 5.1: no goto.)
_RECORD_LUA = """
local max_fields, now, segment = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local longest, evicted, written = 0, 0, {}
for i = 4, #ARGV, 3 do written[ARGV[i]] = true end
for i = 4, #ARGV, 3 do
  local field, keep, ttl = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local raw = redis.call('HGET', KEYS[1], field)
  if not raw and redis.call('HLEN', KEYS[1]) >= max_fields then
    local all = redis.call('HGETALL', KEYS[1])
    local victim, rank, newest = nil, nil, nil
    for j = 1, #all, 2 do
      local name = all[j]
      if not written[name] then
        local seen = cmsgpack.unpack(all[j + 1])
        local r = (string.sub(name, 1, #segment) == segment) and 0 or 1
        local t = seen[#seen] or 0
        if victim == nil or r < rank or (r == rank and (t < newest or (t == newest and name < victim))) then
          victim, rank, newest = name, r, t
        end
      end
    end
    redis.call('HDEL', KEYS[1], victim)
    evicted = evicted + 1
  end
  local times = raw and cmsgpack.unpack(raw) or {}
  table.insert(times, now)
  table.sort(times)
  while #times > keep do table.remove(times, 1) end
  redis.call('HSET', KEYS[1], field, cmsgpack.pack(times))
  if ttl > longest then longest = ttl end
end
if longest > 0 and redis.call('TTL', KEYS[1]) < longest then redis.call('EXPIRE', KEYS[1], longest) end
return evicted
"""


# Opening a connection may take longer than a command on a busy loop (a burst of first requests opens many
# at once); a command on an open one gets ``timeout_s``.
CONNECT_TIMEOUT_S = 0.25


class RedisProfileStore:
    def __init__(self, client: Redis, *, region: str, timeout_s: float = 0.05, retry_after_s: float = 1.0) -> None:
        self.client = client
        # The whole call's bound, on top of the socket timeouts: a stopped Redis accepts and never answers.
        self.timeout_s = CONNECT_TIMEOUT_S + timeout_s
        self.prefix = f"profile:{region}:"
        self._record = client.register_script(_RECORD_LUA)
        self._breaker = Breaker(retry_after_s)

    @classmethod
    def from_url(cls, url: str, *, region: str, timeout_s: float = 0.05,
                 retry_after_s: float = 1.0) -> RedisProfileStore:
        # The ad request waits on this: one short try, and the breaker decides when to try again.
        client = fast_fail_client(url, timeout_s=timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S)
        return cls(client, region=region, timeout_s=timeout_s, retry_after_s=retry_after_s)

    def _check(self, now_s: float) -> None:
        if self._breaker.is_open(now_s):
            raise ProfileStoreDown(f"not retried until the breaker closes: {self._breaker.last_error}")

    async def history(self, user_key: str, now_s: float) -> dict[str, list[float]]:
        self._check(now_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.client.hgetall(self.prefix + user_key)
            return {k.decode(): [float(t) for t in msgpack.unpackb(v)] for k, v in raw.items()}
        except Exception as exc:
            raise ProfileStoreDown(self._breaker.trip(now_s, exc)) from exc

    async def record(self, user_key: str, now_s: float, fields: Sequence[tuple[str, int, int]]) -> int:
        self._check(now_s)
        args: list[object] = [MAX_FIELDS, repr(float(now_s)), SEGMENT_FIELD]
        for field, keep, ttl_s in fields:
            args += [field, keep, ttl_s]
        try:
            async with asyncio.timeout(self.timeout_s):
                return int(await self._record(keys=[self.prefix + user_key], args=args))
        except Exception as exc:
            raise ProfileStoreDown(self._breaker.trip(now_s, exc)) from exc

    async def aclose(self) -> None:
        await self.client.aclose()


def new_profile_store(redis_url: str, region: str) -> ProfileStore:
    return RedisProfileStore.from_url(redis_url, region=region) if redis_url else MemoryProfileStore()
