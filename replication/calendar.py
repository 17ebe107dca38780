"""Campaign-local time: budget days reset at local midnight, hour targeting uses the local hour. Pure."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_hour(now_s: float, timezone: str) -> int:
    """The hour of day (0-23) in the campaign's timezone, for hour-of-day targeting."""
    return datetime.fromtimestamp(now_s, _zone(timezone)).hour


def local_day(now_s: float, timezone: str) -> str:
    """The campaign-local date as ISO ``YYYY-MM-DD``: such strings order the same way the days do."""
    return datetime.fromtimestamp(now_s, _zone(timezone)).date().isoformat()
