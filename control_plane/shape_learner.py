"""Keeps the snapshot's pacing shape learned from traffic: the adapter around ``control_plane.traffic``.

Every ``every_s`` it reads the past complete days' hourly decisions from the event store (in the storage
executor: the store calls block), learns the shape and hands it to the snapshot builder, which publishes it
with the next snapshot when it changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from control_plane.builder import SnapshotBuilder
from control_plane.periodic import every
from control_plane.storage import EventStore
from control_plane.traffic import learning_window, local_hour_counts
from replication.calendar import utc_offset_h
from replication.clock import Clock
from replication.hourly import blend_hourly


class ShapeLearner:
    def __init__(self, reports: EventStore, builder: SnapshotBuilder, clock: Clock,
                 run_storage: Callable[..., Awaitable[Any]], *, prior: tuple[float, ...], days: int,
                 prior_weight: float, every_s: float) -> None:
        self._reports = reports
        self._builder = builder
        self._clock = clock
        self._run_storage = run_storage
        self.prior = prior
        self.days = days
        self.prior_weight = prior_weight
        self.every_s = every_s
        self.decisions_seen = 0  # decisions behind the current shape (GET /v1/admin/stats shows it)

    def _offset(self, now_s: float) -> Callable[[str], float | None]:
        def offset(campaign_id: str) -> float | None:
            zone = self._builder.timezone_of(campaign_id)
            return utc_offset_h(now_s, zone) if zone else None
        return offset

    async def refresh(self) -> tuple[float, ...]:
        now = self._clock.now()
        start_ms, end_ms = learning_window(now, self.days)
        rows = await self._run_storage(self._reports.hourly_decisions, start_ms, end_ms)
        counts = local_hour_counts(rows, self._offset(now))
        shape = blend_hourly(counts, self.prior, prior_weight=self.prior_weight)
        self.decisions_seen = int(sum(counts))
        self._builder.set_traffic_shape(shape)
        return shape

    async def run(self) -> None:
        await every(self.every_s, self.refresh, "learning the traffic shape failed; keeping the current one")
