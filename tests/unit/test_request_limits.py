"""The request-body limit, driven as ASGI directly: a body without Content-Length is counted as it is read,
except where HTTP/1 says there is none (neither Content-Length nor Transfer-Encoding)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from replication.limits import LimitSettings, RequestLimits

LIMIT = 1_000


def _run(http_version: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int, bool]:
    """(status, body bytes the app read, whether the app saw the server's own receive)."""
    settings = LimitSettings(rate_per_ip=0, burst_per_ip=1, max_header_count=64, max_header_bytes=32_768,
                             max_body_bytes=LIMIT)
    seen: dict[str, Any] = {"read": 0}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def app(scope: Any, app_receive: Any, send: Any) -> None:
        seen["direct"] = app_receive is receive
        more = True
        while more:
            message = await app_receive()
            seen["read"] += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "http_version": http_version, "method": "POST", "path": "/v1/track/conversion",
             "headers": headers, "client": ("10.0.0.1", 1)}
    asyncio.run(RequestLimits(app, settings=settings, body_limit=lambda _: LIMIT)(scope, receive, send))
    return statuses[0], seen["read"], seen.get("direct", False)


@pytest.mark.parametrize("version", ["1", "1.0", "1.1"])
def test_a_bodiless_http1_request_reaches_the_app_unwrapped(version):
    assert _run(version, [(b"host", b"edge")], [b""]) == (200, 0, True)


def test_a_chunked_body_is_still_counted_and_refused_past_the_limit():
    chunks = [b"x" * 400] * 4
    assert _run("1.1", [(b"transfer-encoding", b"chunked")], chunks)[0] == 413
    assert _run("1.1", [(b"transfer-encoding", b"chunked")], [b"x" * 400, b"x" * 400]) == (200, 800, False)


def test_an_http2_body_without_content_length_is_counted():
    assert _run("2", [(b"host", b"edge")], [b"x" * 600, b"x" * 600])[0] == 413
