"""What the learners from labelled events share (``control_plane.click_trainer``,
``control_plane.conversion_learner``): the event store, called in the storage executor (``run_storage``: its
calls block), the snapshot builder they hand what they learned to, the clock; how often they learn, how old an
event must be before its label counts (the click or conversion it waits for may come late), and how far back
they read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from control_plane.builder import SnapshotBuilder
from control_plane.storage import EventStore
from replication.clock import Clock


class StoreLearner:
    def __init__(self, reports: EventStore, builder: SnapshotBuilder, clock: Clock,
                 run_storage: Callable[..., Awaitable[Any]], *, every_s: float, label_delay_s: float,
                 history_s: float) -> None:
        self._reports = reports
        self._builder = builder
        self._clock = clock
        self._run_storage = run_storage
        self.every_s = every_s
        self.label_delay_s = label_delay_s
        self.history_s = history_s
