"""Budget days: a campaign's daily budget resets at midnight in the campaign's own timezone. Pure."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(now_s: float, timezone: str) -> str:
    """The campaign-local date as ISO ``YYYY-MM-DD``: such strings order the same way the days do."""
    return datetime.fromtimestamp(now_s, _zone(timezone)).date().isoformat()
