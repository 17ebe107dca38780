"""The wall clock every process reads budget days, leases and event times from: real, or scaled for simulation.

Budget pacing plays out over a campaign's day, so testing it honestly needs whole days. ``ADSERVER_CLOCK``
lets every process of a stack share one compressed day: ``SPEED@REAL:VIRTUAL`` means that at real Unix time
REAL the clock read VIRTUAL and it runs SPEED times faster since (``288@1764000000:1764028800`` plays a day in
five minutes). Empty (the default) is the real clock. Everything that reasons in campaign time (event
timestamps, budget days, leases, reservation expiry, token lifetimes) reads this clock; network timeouts and
retry back-offs stay in real seconds because they are about the machine, not the campaign.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds of campaign time."""
        ...

    @property
    def speed(self) -> float:
        """Campaign seconds per real second."""
        ...


@dataclass(frozen=True, slots=True)
class RealClock:
    speed: float = 1.0

    def now(self) -> float:
        return time.time()

    def __str__(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class ScaledClock:
    speed: float
    real_origin: float
    virtual_origin: float

    def now(self) -> float:
        return self.virtual_origin + (time.time() - self.real_origin) * self.speed

    def __str__(self) -> str:
        return f"{self.speed:g}@{self.real_origin:.6f}:{self.virtual_origin:.6f}"


REAL_CLOCK = RealClock()


def parse_clock(raw: str) -> Clock:
    """``""`` -> the real clock; ``SPEED@REAL:VIRTUAL`` -> a scaled one (a settings parser: raises ValueError)."""
    raw = raw.strip()
    if not raw:
        return REAL_CLOCK
    try:
        speed_s, origins = raw.split("@", 1)
        real_s, virtual_s = origins.split(":", 1)
        speed, real, virtual = float(speed_s), float(real_s), float(virtual_s)
    except ValueError:
        raise ValueError("must be SPEED@REAL_UNIX_S:VIRTUAL_UNIX_S, e.g. 288@1764000000:1764028800") from None
    if not 0 < speed <= 100_000:
        raise ValueError("speed must be in (0, 100000]")
    if not (0 <= real < 1e11 and 0 <= virtual < 1e11):
        raise ValueError("origins must be Unix seconds")
    return ScaledClock(speed, real, virtual)
