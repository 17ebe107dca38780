"""Campaign-local time: budget days reset at local midnight, hour targeting uses the local hour. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta
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


def local_day_and_second(now_s: float, timezone: str) -> tuple[str, float]:
    """The campaign-local date and the seconds elapsed since its local midnight (pacing's clock)."""
    t = datetime.fromtimestamp(now_s, _zone(timezone))
    return t.date().isoformat(), t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def utc_day(now_s: float) -> str:
    """The UTC date: the period the spend CRDT rotates its documents by."""
    return datetime.fromtimestamp(now_s, _zone("UTC")).date().isoformat()


# The zone furthest behind UTC (UTC-12, with no daylight saving time): its date is the earliest any place has.
_LAST_ZONE = "Etc/GMT+12"


def earliest_local_day(now_s: float) -> str:
    """The earliest campaign-local date anywhere at ``now_s``: a day before it is over in every timezone."""
    return local_day(now_s, _LAST_ZONE)


def utc_offset_h(now_s: float, timezone: str) -> float:
    """The zone's offset from UTC at ``now_s``, in hours (5.5 for India, -4 for New York in summer)."""
    offset = datetime.fromtimestamp(now_s, _zone(timezone)).utcoffset()
    return offset.total_seconds() / 3600 if offset is not None else 0.0


def local_day_window(now_s: float, timezone: str) -> tuple[int, int]:
    """Unix seconds [start, end) of the campaign-local day containing ``now_s`` (23 or 25 hours on DST days)."""
    local = datetime.fromtimestamp(now_s, _zone(timezone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=1, hours=2)).replace(hour=0)  # the next local midnight, past any DST shift
    return int(start.timestamp()), int(end.timestamp())
