"""Request limits shared by the edge and the control plane: one ASGI middleware, in front of every route.

A refused request costs no store lookup, no JSON parsing and no body read, and is always a 4xx:

- 431 when a request has more headers, or more header bytes, than allowed (granian itself answers 431 with
  an empty body past 100 headers or about 400 KiB of headers; these limits are tighter and answer JSON);
- 429 with ``Retry-After`` when the client IP's or the bearer token's token bucket is empty (health checks
  and /metrics are exempt: a probe or a scrape is never throttled);
- 413 when the declared ``Content-Length`` is over the body limit, before a byte of the body is read, or as
  soon as a chunked body without ``Content-Length`` goes over it.

Buckets live in process memory (per granian worker). Token-bucket keys hash the whole Authorization header,
so a forged token for a real advertiser id gets its own bucket and cannot drain the real one; the per-IP
bucket bounds how many forged buckets one client makes. Per-IP limits use the TCP peer address: behind a
load balancer set the per-IP rate to 0 until trusted-proxy support exists.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Self

from replication import settings as s

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "ADSERVER_"


def parse_rate(raw: str) -> float:
    """Requests per second: finite and >= 0 (0 switches the limit off). NaN or infinity would make every
    bucket either always full or never refill."""
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0")
    return value


EXEMPT_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class TokenBuckets:
    """Token buckets by key: a bucket holds ``burst`` tokens and refills at ``rate`` tokens per second.

    Pure: the caller passes ``now``. Memory is bounded: past ``max_keys`` buckets, full ones (which carry no
    information: a new bucket starts full) are dropped first, then the oldest.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, last refill time]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> float:
        """Take one token: 0.0 when the request is admitted, else the seconds until a token is available."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = max(bucket[1], now)
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens  # a refused request takes nothing, so a client that backs off recovers on time
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [k for k, (tokens, stamp) in self._buckets.items()
                if tokens + max(0.0, now - stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(itertools.islice(self._buckets, len(self._buckets) // 2 + 1)):
                del self._buckets[key]


@dataclass(frozen=True)
class LimitSettings:
    rate_per_ip: float
    burst_per_ip: int
    max_header_count: int
    max_header_bytes: int
    max_body_bytes: int = 65_536
    # 0 switches the per-token limit off (the edge: publishers send no bearer tokens).
    rate_per_token: float = 0.0
    burst_per_token: int = 1

    @classmethod
    def load(cls, specs: list[s.Spec], component: str, env: Mapping[str, str] | None = None) -> Self:
        """Read ``ADSERVER_<COMPONENT>_*`` limit settings, reporting every bad value at once."""
        values = s.load(PREFIX, specs, os.environ if env is None else env)
        return cls(**{k.removeprefix(component): v for k, v in values.items()})


class BodyTooLarge(Exception):
    """Raised from the wrapped ``receive`` when a body without Content-Length goes over the limit."""


def _json_error(status: int, message: str, limit: str, extra: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[Message, Message]:
    body = json.dumps({"error": message, "limit": limit, **(extra or {})}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw_headers},
            {"type": "http.response.body", "body": body, "more_body": False})


# The ASGI spec writes HTTP/1.0 as "1.0"; granian 2.8 reports it as "1" (HTTP/2 is "2" everywhere).
_HTTP1 = frozenset({"1", "1.0", "1.1"})


class RequestLimits:
    """ASGI middleware enforcing header, rate and body limits, in that order (cheapest refusal first)."""

    def __init__(self, app: ASGIApp, *, settings: LimitSettings, exempt_paths: frozenset[str] = EXEMPT_PATHS,
                 body_limit: Callable[[Scope], int] | None = None, error_headers: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.settings = settings
        self.exempt_paths = exempt_paths
        self.body_limit = body_limit or (lambda scope: settings.max_body_bytes)
        self.error_headers = dict(error_headers or {})
        self.clock = clock
        self.per_token = (TokenBuckets(settings.rate_per_token, settings.burst_per_token)
                          if settings.rate_per_token > 0 else None)
        self.per_ip = TokenBuckets(settings.rate_per_ip, settings.burst_per_ip) if settings.rate_per_ip > 0 else None

    async def _refuse(self, send: Send, status: int, message: str, limit: str,
                      extra: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> None:
        start, body = _json_error(status, message, limit, extra, {**self.error_headers, **(headers or {})})
        await send(start)
        await send(body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        cfg = self.settings
        if len(headers) > cfg.max_header_count:
            await self._refuse(send, 431, f"too many request headers (at most {cfg.max_header_count})",
                               "header_count", headers={"Connection": "close"})
            return
        if sum(len(k) + len(v) for k, v in headers) > cfg.max_header_bytes:
            await self._refuse(send, 431, f"request headers larger than {cfg.max_header_bytes} bytes",
                               "header_bytes", headers={"Connection": "close"})
            return
        if scope.get("path") not in self.exempt_paths and not await self._admit(scope, headers, send):
            return
        await self._limit_body(scope, receive, send, headers)

    async def _admit(self, scope: Scope, headers: list[tuple[bytes, bytes]], send: Send) -> bool:
        now = self.clock()
        checks: list[tuple[str, TokenBuckets, Hashable]] = []
        if self.per_ip is not None:
            client = scope.get("client")
            checks.append(("per_ip", self.per_ip, client[0] if client else ""))
        if self.per_token is not None:
            auth = next((v for k, v in headers if k == b"authorization"), None)
            if auth:
                checks.append(("per_token", self.per_token, hashlib.blake2b(auth, digest_size=16).digest()))
        for name, buckets, key in checks:
            wait = buckets.take(key, now)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                what = "client IP" if name == "per_ip" else "bearer token"
                await self._refuse(
                    send, 429,
                    f"rate limit exceeded: {buckets.rate:g} requests/s per {what} (burst {buckets.burst}); "
                    f"retry after {retry_after}s", name, {"retry_after_s": retry_after},
                    {"Retry-After": str(retry_after)})
                return False
        return True

    async def _limit_body(self, scope: Scope, receive: Receive, send: Send,
                          headers: list[tuple[bytes, bytes]]) -> None:
        limit = self.body_limit(scope)
        declared = next((v for k, v in headers if k == b"content-length"), None)
        message = f"request body larger than {limit} bytes"
        if declared is not None:
            # The HTTP server has already refused a malformed Content-Length; this one is digits.
            if not declared.isdigit() or int(declared) > limit:
                # Connection: close, because the unread body would otherwise be taken for the next request.
                await self._refuse(send, 413, message, "body_bytes", headers={"Connection": "close"})
                return
            await self.app(scope, receive, send)
            return
        if scope.get("http_version") in _HTTP1 and not any(k == b"transfer-encoding" for k, _ in headers):
            # HTTP/1 with neither header has no body at all (RFC 9112, 6.3): nothing to count, so the
            # request skips the two wrappers below (most ad requests and beacons are such GETs).
            await self.app(scope, receive, send)
            return
        # No Content-Length: a chunked body (or, over HTTP/2, one of unknown length). Count it as the app
        # reads it.
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return msg

        async def watched_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, 413, message, "body_bytes", headers={"Connection": "close"})
