"""The I/O half of invalid-traffic filtering: flood counters and seen impressions on the region's Redis, and the
IVT list files on disk. ``edge.ivt`` (pure) decides; this module only counts, remembers and reads.

Flood counters. Every browser beacon counts once per IP (IPv6 per /64, see ``ivt.flood_ip_key``) and once per
user-agent hash, in fixed windows of ``window_s`` keyed by window number; the count reported is the sliding-
window estimate ``current + previous * (1 - elapsed fraction of the current window)``, which smooths the
burst a fixed window allows at its boundary. Keys expire after two windows, so Redis holds only live data.

Seen impressions. A click is only valid if its impression was recorded. Recorded impression ids go into one
Redis SET per time bucket of ``impression_ttl_s`` (the click token's lifetime: no valid click can come later),
each SET expiring after two buckets; a click looks in the current and the previous bucket. One SET per bucket
instead of one key per impression keeps the per-id memory at a set member's.

One round trip per loop iteration. ``observe`` does all of a beacon's work (count IP and UA, mark or check the
impression) in a Lua script (EVALSHA); the beacons that call it in the same event-loop iteration are sent as one
script call, so under load the client pays one command's encoding and parsing for tens of beacons. The edge
calls only ``observe``.

Fail open. Billing must not stop because Redis did: when a call fails (refused, timed out, any Redis error)
the store answers "no activity, impression unknown", so the flood and click-without-impression rules are
skipped for that beacon, and counts the failure. For ``retry_after_s`` afterwards it does not even try (so a
hung Redis costs one timeout, not one per beacon) and counts those beacons as ``skipped``. With
``fail_open=False`` it raises ``IvtStoreUnavailable`` instead, for a caller that prefers to refuse (503).

In-memory twin. ``MemoryFloodCounter`` implements the same arithmetic in a dict, for unit tests and for a
single-process edge without Redis (``ADSERVER_EDGE_REDIS_URL`` empty). Its counts are per process: with N
granian workers each sees about 1/N of an IP's beacons, and an impression recorded by one worker is unknown
to the others, so with more than one worker build it with ``track_impressions=False`` (the rule is skipped
rather than firing on every click that lands on another worker).

Refreshing the lists. ``ListsReloader`` reads ``bots.txt``, ``browsers.txt`` and ``datacenters.txt`` from a
directory (the shipped ``edge/ivt_data`` unless configured) and, at most every ``check_every_s``, looks at their
modification times; when one changed it parses all three again and swaps the new ``IvtLists`` in whole. An
operator refreshes by writing new files into the directory, each by write-to-temp-then-rename so no worker reads
half a file (a Kubernetes ConfigMap mounted there is updated exactly that way): every worker of every PoP picks
them up within ``check_every_s``, no restart. A file that does not parse is refused with its line numbers in
the log and ``reload_errors``, and the previous lists stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack
from redis.asyncio import Redis

from edge.ivt import Activity, IvtListError, IvtLists, flood_ip_key
from edge.redis_fast import Breaker, fast_fail_client

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).with_name("ivt_data")
LIST_FILES = ("bots.txt", "browsers.txt", "datacenters.txt")
UNKNOWN = Activity()  # what a failed or skipped store call reports: nothing counted, impression unknown


class IvtStoreUnavailable(RuntimeError):
    """The store could not be reached and the policy is fail-closed."""


@dataclass
class StoreStats:
    calls: int = 0  # observe calls that reached the store and were answered
    failures: int = 0  # calls that failed (Redis down, timed out, erred)
    skipped: int = 0  # calls not tried because a recent failure opened the breaker
    last_error: str = ""


class FloodCounter(Protocol):
    stats: StoreStats

    async def hit(self, ip: str, ua_hash: str, now_s: float) -> tuple[int, int]:
        """Count one beacon from ``ip`` with user agent ``ua_hash``; the IP's and the UA's counts in the
        sliding window, this beacon included."""
        ...

    async def seen_impression(self, impression_id: str, now_s: float) -> bool | None:
        """Whether the impression was recorded; None when the store cannot say."""
        ...

    async def mark_impression(self, impression_id: str, now_s: float) -> None:
        ...

    async def observe(self, ip: str, ua_hash: str, now_s: float, *, mark_impression: str = "",
                      check_impression: str = "") -> Activity:
        """``hit`` plus, in the same round trip, marking an impression (impression beacons) or checking one
        (clicks). Never raises when fail-open."""
        ...

    async def aclose(self) -> None:
        ...


def _window(now_s: float, window_s: int) -> tuple[int, float]:
    """The window number and how much of it has passed (0..1)."""
    number = math.floor(now_s / window_s)
    return number, now_s / window_s - number


def _estimate(current: int, previous: int, elapsed: float) -> int:
    return current + math.floor(previous * (1.0 - elapsed))


class _Base:
    """What both stores share: the window arithmetic, the breaker and the single-purpose calls on top of
    ``observe``. ``_observe`` does the work and may raise; ``observe`` applies the failure policy."""

    def __init__(self, *, window_s: int, impression_ttl_s: int, fail_open: bool, retry_after_s: float) -> None:
        if window_s < 1 or impression_ttl_s < 1:
            raise ValueError("window_s and impression_ttl_s must be at least 1 second")
        self.window_s = window_s
        self.impression_ttl_s = impression_ttl_s
        self.fail_open = fail_open
        self.stats = StoreStats()
        self._breaker = Breaker(retry_after_s)

    async def _observe(self, ip_key: str, ua_hash: str, now_s: float, mark: str, check: str,
                       count: bool) -> Activity:
        raise NotImplementedError

    async def _guarded(self, ip: str, ua_hash: str, now_s: float, mark: str, check: str, count: bool) -> Activity:
        if self._breaker.is_open(now_s):
            self.stats.skipped += 1
            if not self.fail_open:
                raise IvtStoreUnavailable(self.stats.last_error)
            return UNKNOWN
        try:
            activity = await self._observe(flood_ip_key(ip), ua_hash, now_s, mark, check, count)
        except Exception as exc:  # any failure of the store: the policy decides, the beacon path never sees it
            self.stats.failures += 1
            self.stats.last_error = self._breaker.trip(now_s, exc)
            if self.stats.failures in (1, 10, 100) or self.stats.failures % 1000 == 0:
                log.warning("IVT store failed (%d times, fail_open=%s): %s", self.stats.failures, self.fail_open,
                            self.stats.last_error)
            if not self.fail_open:
                raise IvtStoreUnavailable(self.stats.last_error) from exc
            return UNKNOWN
        self.stats.calls += 1
        self._breaker.close()
        return activity

    async def observe(self, ip: str, ua_hash: str, now_s: float, *, mark_impression: str = "",
                      check_impression: str = "") -> Activity:
        return await self._guarded(ip, ua_hash, now_s, mark_impression, check_impression, True)

    async def hit(self, ip: str, ua_hash: str, now_s: float) -> tuple[int, int]:
        a = await self._guarded(ip, ua_hash, now_s, "", "", True)
        return a.ip_count, a.ua_count

    async def seen_impression(self, impression_id: str, now_s: float) -> bool | None:
        return (await self._guarded("", "", now_s, "", impression_id, False)).impression_seen

    async def mark_impression(self, impression_id: str, now_s: float) -> None:
        await self._guarded("", "", now_s, impression_id, "", False)

    async def aclose(self) -> None:
        return None


class MemoryFloodCounter(_Base):
    """The in-process twin of ``RedisFloodCounter``: same windows, same estimate, same buckets."""

    def __init__(self, *, window_s: int = 60, impression_ttl_s: int = 3600, track_impressions: bool = True,
                 fail_open: bool = True, retry_after_s: float = 1.0) -> None:
        super().__init__(window_s=window_s, impression_ttl_s=impression_ttl_s, fail_open=fail_open,
                         retry_after_s=retry_after_s)
        self.track_impressions = track_impressions
        self._counts: dict[tuple[str, int, str], int] = {}
        self._impressions: dict[int, set[str]] = {}
        self._pruned_at = -1
        self.fail_next: Exception | None = None  # tests: make the next call fail like a dead Redis

    def _prune(self, window: int, bucket: int) -> None:
        # Drop what Redis would have expired; once per window, so the cost is amortised to nothing.
        if window == self._pruned_at:
            return
        self._pruned_at = window
        self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}
        self._impressions = {b: ids for b, ids in self._impressions.items() if b >= bucket - 1}

    async def _observe(self, ip_key: str, ua_hash: str, now_s: float, mark: str, check: str,
                       count: bool) -> Activity:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        window, elapsed = _window(now_s, self.window_s)
        bucket = math.floor(now_s / self.impression_ttl_s)
        self._prune(window, bucket)
        ip_count = ua_count = 0
        if count:
            counts = []
            for kind, key in (("ip", ip_key), ("ua", ua_hash)):
                current = self._counts.get((kind, window, key), 0) + 1
                self._counts[(kind, window, key)] = current
                counts.append(_estimate(current, self._counts.get((kind, window - 1, key), 0), elapsed))
            ip_count, ua_count = counts
        seen: bool | None = None
        if mark and self.track_impressions:
            self._impressions.setdefault(bucket, set()).add(mark)
        if check and self.track_impressions:
            seen = any(check in self._impressions.get(b, ()) for b in (bucket, bucket - 1))
        return Activity(ip_count=ip_count, ua_count=ua_count, impression_seen=seen)


# The store work of a batch of beacons as one server-side script: one command per event-loop iteration instead
# of one per beacon (redis-py's per-command encoding and parsing was the largest cost of a beacon in a profile
# under load), and each beacon's part runs atomically. The batch travels as one msgpack argument and comes
# back as one msgpack string (Redis' Lua has cmsgpack): redis-py then encodes one argument and parses one bulk
# reply per batch, instead of six keys and five arguments in, five integers out, per beacon.
# ARGV[1]: the key prefix; ARGV[2]: msgpack of
# [counter TTL, impression set TTL, [[count 0/1, IP counter key now, IP before, UA now, UA before,
# impression set now, impression set before, impression id to mark or "", impression id to check or ""], ...]].
# Reply: msgpack of [[IP count now, IP before, UA now, UA before, seen 1/0/-1 (-1: not asked)], ...].
# The keys are built from the prefix inside the script, so they are not declared in KEYS: fine on the
# standalone Redis each region runs; a Redis Cluster would need the region prefix as a hash tag and
# `#!lua flags=allow-cross-slot-keys`.
_OBSERVE_LUA = """
local p = ARGV[1]
local batch = cmsgpack.unpack(ARGV[2])
local counter_ttl, set_ttl, items = batch[1], batch[2], batch[3]
local out = {}
for i, b in ipairs(items) do
  local r = {0, 0, 0, 0, -1}
  if b[1] == 1 then
    r[1] = redis.call('INCR', p .. b[2])
    redis.call('EXPIRE', p .. b[2], counter_ttl)
    r[2] = tonumber(redis.call('GET', p .. b[3]) or '0')
    r[3] = redis.call('INCR', p .. b[4])
    redis.call('EXPIRE', p .. b[4], counter_ttl)
    r[4] = tonumber(redis.call('GET', p .. b[5]) or '0')
  end
  if b[8] ~= '' then
    redis.call('SADD', p .. b[6], b[8])
    redis.call('EXPIRE', p .. b[6], set_ttl)
  end
  if b[9] ~= '' then
    r[5] = math.max(redis.call('SISMEMBER', p .. b[6], b[9]), redis.call('SISMEMBER', p .. b[7], b[9]))
  end
  out[i] = r
end
return cmsgpack.pack(out)
"""


class RedisFloodCounter(_Base):
    """Counters and impression sets on the region's Redis (``redis.asyncio``): the beacons of one event-loop
    iteration share one script call."""

    def __init__(self, client: Redis, *, region: str, window_s: int = 60, impression_ttl_s: int = 3600,
                 fail_open: bool = True, retry_after_s: float = 1.0, timeout_s: float = 0.25,
                 max_batch: int = 256) -> None:
        super().__init__(window_s=window_s, impression_ttl_s=impression_ttl_s, fail_open=fail_open,
                         retry_after_s=retry_after_s)
        self.client = client
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        # Region in every key: a Redis shared by several regions (a test, a small deployment) keeps them apart.
        self.prefix = f"ivt:{region}:"
        # EVALSHA, loaded on first use and again after a Redis restart (redis-py handles NOSCRIPT).
        self._script = client.register_script(_OBSERVE_LUA)
        self._batch: list[tuple[list[object], asyncio.Future[list[int]]]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    @classmethod
    def from_url(cls, url: str, *, region: str, timeout_s: float = 0.25, **kw: Any) -> RedisFloodCounter:
        """A client for the beacon path (edge.redis_fast): one short try; the breaker decides when to retry."""
        return cls(fast_fail_client(url, timeout_s=timeout_s), region=region, timeout_s=timeout_s, **kw)

    async def _observe(self, ip_key: str, ua_hash: str, now_s: float, mark: str, check: str,
                       count: bool) -> Activity:
        window, elapsed = _window(now_s, self.window_s)
        bucket = math.floor(now_s / self.impression_ttl_s)
        item = [1 if count else 0, f"ip:{window}:{ip_key}", f"ip:{window - 1}:{ip_key}", f"ua:{window}:{ua_hash}",
                f"ua:{window - 1}:{ua_hash}", f"imp:{bucket}", f"imp:{bucket - 1}", mark, check]
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[int]] = loop.create_future()
        self._batch.append((item, answer))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)  # after every beacon handled in this loop iteration has queued
        elif len(self._batch) >= self.max_batch:
            self._flush()
        ip_cur, ip_prev, ua_cur, ua_prev, seen = await answer
        return Activity(
            ip_count=_estimate(ip_cur, ip_prev, elapsed) if count else 0,
            ua_count=_estimate(ua_cur, ua_prev, elapsed) if count else 0,
            impression_seen=None if seen < 0 else bool(seen),
        )

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sends.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[tuple[list[object], asyncio.Future[list[int]]]]) -> None:
        try:
            packed = msgpack.packb([2 * self.window_s + 1, 2 * self.impression_ttl_s + 60, [i for i, _ in batch]])
            # asyncio.timeout on top of the socket timeouts: a stopped (SIGSTOP) Redis accepts the connection
            # and then never answers, and the call must still give up within the budget.
            async with asyncio.timeout(self.timeout_s * 2):
                reply = await self._script(args=[self.prefix, packed])
            results = msgpack.unpackb(reply)
            if not isinstance(results, list) or len(results) != len(batch):
                raise ValueError(f"IVT script answered {len(results) if isinstance(results, list) else results!r} "
                                 f"results for {len(batch)} beacons")
        except BaseException as exc:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
                    answer.exception()  # retrieved: a beacon whose client went away must not log a warning
            if not isinstance(exc, Exception):
                raise
            return
        self.round_trips += 1
        for (_, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)

    async def aclose(self) -> None:
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self.client.aclose()


def load_lists(directory: Path | str = DATA_DIR) -> IvtLists:
    """Read and parse the three list files of ``directory``. Raises ``IvtListError`` (every bad line named) or
    ``OSError``."""
    directory = Path(directory)
    texts = [(directory / name).read_text(encoding="utf-8") for name in LIST_FILES]
    stamp = max((directory / name).stat().st_mtime for name in LIST_FILES)
    return IvtLists.parse(*texts, version=f"{directory}@{stamp:.0f}")


@dataclass
class ListsReloader:
    """Holds the current ``IvtLists`` and re-reads the files when they change (see the module docstring)."""

    directory: Path = DATA_DIR
    check_every_s: float = 30.0
    lists: IvtLists = field(init=False)
    reloads: int = 0
    reload_errors: int = 0
    last_error: str = ""
    _stamps: tuple[int, ...] = field(default=(), init=False, repr=False)
    _checked_at: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        # At start-up a bad file is fatal, like a bad setting: better than serving with no lists at all.
        self._stamps = self._read_stamps()
        self.lists = load_lists(self.directory)

    def _read_stamps(self) -> tuple[int, ...]:
        # Modification time, inode and size: a file renamed into place (or copied with its old mtime kept, as
        # cp -p does) still counts as changed.
        stamps: list[int] = []
        for name in LIST_FILES:
            st = os.stat(self.directory / name)
            stamps += (st.st_mtime_ns, st.st_ino, st.st_size)
        return tuple(stamps)

    def current(self, now_s: float) -> IvtLists:
        """The lists to use now; every ``check_every_s`` three ``stat`` calls find out whether to reload."""
        if now_s - self._checked_at >= self.check_every_s:
            self._checked_at = now_s
            self.reload()
        return self.lists

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the files if they changed (or ``force``). True when new lists were swapped in."""
        try:
            stamps = self._read_stamps()
            if stamps == self._stamps and not force:
                return False
            lists = load_lists(self.directory)
        except (OSError, UnicodeDecodeError, IvtListError) as exc:
            self.reload_errors += 1
            self.last_error = str(exc)
            log.error("IVT lists in %s not reloaded, keeping version %s: %s", self.directory, self.lists.version,
                      exc)
            return False
        self._stamps = stamps
        self.lists = lists  # one assignment: a beacon sees the old lists or the new, never a mix
        self.reloads += 1
        log.info("IVT lists reloaded from %s (version %s)", self.directory, lists.version)
        return True
