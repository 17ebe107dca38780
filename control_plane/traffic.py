"""The pacing plan's traffic shape, learned from past days' ad decisions. Pure.

Edges spread each campaign's daily budget along a 24-hour shape of the campaign-local day (``edge.pacing``),
shipped in the snapshot. The shape is learned here from what the system served: ad decisions per campaign and
UTC hour over the last complete UTC days (``EventStore.hourly_decisions``), each campaign's counts moved into
its local hours (a campaign at UTC+2 sees UTC hour 10 as its 12:00; a half-hour zone splits an hour's count
between the two local hours it overlaps), summed over campaigns, and blended (``replication.hourly``) with a
prior (the configured ``ADSERVER_CP_TRAFFIC_SHAPE``, else flat) worth ``prior_weight`` decisions, so a new
install or a quiet week plans on the prior and a busy one on its own traffic. Only complete days count: a
half-seen day would make the hours still to come look empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from replication.hourly import HOURS

DAY_S = 86_400


def learning_window(now_s: float, days: int) -> tuple[int, int]:
    """[start_ms, end_ms): the ``days`` complete UTC days before the current one."""
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    end_s = int(now_s // DAY_S) * DAY_S
    return (end_s - days * DAY_S) * 1000, end_s * 1000


def local_hour_counts(rows: Iterable[tuple[str, int, int]],
                      utc_offset_h: Callable[[str], float | None]) -> list[float]:
    """Per-(campaign, UTC hour, count) rows summed into 24 campaign-local hours. ``utc_offset_h`` gives a
    campaign's offset from UTC in hours (None for one no longer known: its traffic counts in UTC hours)."""
    counts = [0.0] * HOURS
    for campaign_id, hour, count in rows:
        if not 0 <= hour < HOURS or count < 0:
            raise ValueError(f"bad hourly row {(campaign_id, hour, count)!r}")
        local = (hour + (utc_offset_h(campaign_id) or 0.0)) % HOURS
        base = int(local)
        part = local - base  # the share of this UTC hour that falls into the next local hour
        counts[base] += count * (1.0 - part)
        counts[(base + 1) % HOURS] += count * part
    return counts
