"""Redis on the request path: a client that fails fast, and a breaker that stops asking for a while.

The edge reads and writes its region's Redis while an ad request or a beacon waits (frequency caps and
segments, the IVT flood counters, attribution touches). redis-py's defaults retry three times with backoff:
seconds per request while Redis is down. Here a call gets one short try, and after a failure the caller's
breaker answers "down" at once for ``retry_after_s`` before Redis is tried again; what "down" means (fail
open or closed, a skipped cap) is each caller's policy.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def fast_fail_client(url: str, *, timeout_s: float, connect_timeout_s: float | None = None) -> Redis:
    """Short socket timeouts, no retries, no health-check round trips."""
    return Redis.from_url(url, socket_timeout=timeout_s,
                          socket_connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0)


class Breaker:
    """Open for ``retry_after_s`` after a failure (campaign clock, passed in): meanwhile calls are not tried."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.last_error = ""
        self._open_until = -math.inf

    def is_open(self, now_s: float) -> bool:
        return now_s < self._open_until

    def trip(self, now_s: float, exc: BaseException) -> str:
        """A call failed: open until ``now_s + retry_after_s``. Returns the error, named, for the caller."""
        self._open_until = now_s + self.retry_after_s
        self.last_error = f"{type(exc).__name__}: {exc}"
        return self.last_error

    def close(self) -> None:
        """A call succeeded."""
        self._open_until = -math.inf
