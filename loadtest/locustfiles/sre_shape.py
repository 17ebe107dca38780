"""An SRE's load profile as a stage list: warm-up, spike, soak, ramp-down, then stop.

Combine it with a scenario file; the shape decides how many users run, the scenario what they do:

    locust -f loadtest/locustfiles/publisher.py,loadtest/locustfiles/sre_shape.py --headless \
        --host http://127.0.0.1:8080 --csv out/shape

The run is bounded by the shape itself (locust stops when ``tick`` returns None), so ``-u``, ``-r`` and ``-t``
are not needed (locust ignores them with a shape). Stages are given as shares of the total time and of the
peak user count, so one profile scales from a 15-second smoke run to an hour's soak:

- ADSERVER_LOCUST_SHAPE_SECONDS: total time, seconds or a locust timespan such as 10m (default 10m)
- ADSERVER_LOCUST_SHAPE_PEAK: users at the top of the spike (default 100)

What each stage is for: warm-up lets connection pools, snapshot caches and budget grants settle before
anything is measured; the spike checks the edge absorbs a sudden 3x without errors or a latency cliff; the
soak, back at half the peak, shows whether it recovers and then holds steady (no leak, no creeping p99);
ramp-down lets in-flight beacons drain so the stored events can be checked against what was sent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from locust import LoadTestShape
from locust.util.timespan import parse_timespan

log = logging.getLogger("sre_shape")


@dataclass(frozen=True)
class Stage:
    name: str
    share: float  # of the total run time
    users: float  # of the peak user count, held until the stage ends
    ramp: float  # share of the stage spent getting there: 0.8 is a gentle ramp, 0.1 a step


# Gentle ramps still finish inside their stage (0.8), so every level is reached and held for a while.
STAGES: tuple[Stage, ...] = (
    Stage("warm-up", share=0.15, users=0.3, ramp=0.8),
    Stage("spike", share=0.15, users=1.0, ramp=0.1),
    Stage("soak", share=0.55, users=0.5, ramp=0.1),
    Stage("ramp-down", share=0.15, users=0.1, ramp=0.8),
)
if abs(sum(s.share for s in STAGES) - 1.0) > 1e-9:
    raise ValueError("stage shares must add up to the whole run")


def _settings() -> tuple[float, int]:
    raw_seconds = os.environ.get("ADSERVER_LOCUST_SHAPE_SECONDS", "10m").strip()
    raw_peak = os.environ.get("ADSERVER_LOCUST_SHAPE_PEAK", "100").strip()
    errors = []
    try:
        seconds = float(parse_timespan(raw_seconds))
    except ValueError:
        seconds = 0.0
    if seconds < 4:
        errors.append(f"ADSERVER_LOCUST_SHAPE_SECONDS={raw_seconds!r}: a timespan of at least 4s (e.g. 15s, 10m)")
    if not raw_peak.isascii() or not raw_peak.isdigit() or int(raw_peak) < 1:
        errors.append(f"ADSERVER_LOCUST_SHAPE_PEAK={raw_peak!r}: a positive integer")
    if errors:
        raise ValueError("; ".join(errors))
    return seconds, int(raw_peak)


def plan(total_s: float, peak: int, run_time_s: float) -> tuple[str, int, float] | None:
    """(stage name, users, spawn rate) at ``run_time_s`` into the run, or None once the run is over. Pure."""
    start = 0.0
    previous = 0
    for stage in STAGES:
        duration = stage.share * total_s
        users = max(1, round(stage.users * peak))
        if run_time_s < start + duration:
            # Fast enough to reach the stage's level within its ramp share; at least 1 user per second, and at
            # most 100 (locust warns that faster spawning misbehaves; a compressed smoke run would ask for it).
            rate = min(100.0, max(1.0, abs(users - previous) / max(stage.ramp * duration, 0.05)))
            return stage.name, users, round(rate, 2)
        start += duration
        previous = users
    return None


class SreShape(LoadTestShape):
    """Warm-up, spike, soak, ramp-down; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.total_s, self.peak = _settings()
        self.stage = ""

    def tick(self) -> tuple[int, float] | None:
        now = plan(self.total_s, self.peak, self.get_run_time())
        if now is None:
            return None
        name, users, rate = now
        if name != self.stage:
            self.stage = name
            log.info("stage %s: %d users (spawn rate %.2f/s)", name, users, rate)
        return users, rate
