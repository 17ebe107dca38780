"""Run one step of background work forever, every so many seconds, surviving its failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def every(every_s: float, step: Callable[[], Awaitable[Any]], failed: str) -> None:
    """``step()``, then sleep ``every_s``, forever. A failed step (the store down, say) is logged with
    ``failed`` and the next one tried on time: what the last good step produced stays in force."""
    while True:
        try:
            await step()
        except Exception as exc:
            log.warning("%s (%r)", failed, exc)
        await asyncio.sleep(every_s)
