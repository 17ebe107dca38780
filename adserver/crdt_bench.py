"""``python -m adserver.crdt_bench``: what the spend PN-counter (replication/budget_crdt.py) costs on the wire
and in memory, per region and per day, at 10,000 active campaigns.

A day of 1 s ticks is 86,400 flushes per writer, too many to simulate, so each tick length runs a sample of
ticks and the day is extrapolated from what the sample measured:

- every writer (edge worker) first writes every campaign's P and N once (a key's first write carries the key
  string; this happens once per period), then runs the sample ticks with compaction off, then compacts once;
- per tick each campaign changes with the probability that a Poisson process moving ``active_fraction`` of
  the campaigns in one second moves it within the tick: 1 - (1 - f) ** tick_s. Campaigns are picked
  uniformly; real traffic is skewed and touches fewer distinct campaigns, so this is an upper bound. A
  changed campaign writes P (reservation or charge) and, with probability ``n_share``, N (release) too;
- deltas/day = key writes + ticks/day x the sample's mean encoded sync message (envelope and digest
  included, NATS protocol overhead not) [+ compactions/day x the measured compaction message];
- a document grows by a tombstone per overwrite (measured over the sample). Without compaction its size at
  the end of a period is its size after the key writes + tombstones x the period's overwrites. With
  compaction at ratio R (``SpendCounter(compact_ratio=R)``) a writer rewrites its L live totals every R x L
  overwrites, so its own state peaks at its size right after a compaction + R x L tombstones;
- a writer's own state, sent every ``own_state_every_s`` for repair, counts at its mean size.

A receiver (the control plane, or a peer PoP) applies every writer's deltas and the compactions as they come
and must end with exactly the writers' totals; its apply time per tick is reported too.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from replication.budget_crdt import MAX_MESSAGE_BYTES, SpendCounter, counter_key, encode_sync

DAY_S = 86_400
HOUR_S = 3_600
PERIOD = "2026-11-24"
MB = 1e-6


@dataclass(frozen=True, slots=True)
class Measured:
    """One tick length, as measured (per writer unless it says region)."""

    tick_s: int
    sample_ticks: int
    changed_per_tick: float  # campaigns changed per writer per tick
    writes_per_tick: float  # totals written per tick (P and N sides)
    message_bytes_per_tick: float  # mean encoded delta message per tick
    bytes_per_write: float
    tombstone_bytes: float  # own state growth per overwrite
    flush_ms_per_tick: float
    apply_ms_per_tick: float  # receiver: all the region's deltas of one tick
    key_write_bytes: int  # the first write of every key, once per period
    live_totals: int  # non-zero P and N totals
    own_state_after_keys: int
    own_state_after_compaction: int
    compaction_bytes: int  # the compaction's sync message
    region_doc_after_compaction: int  # the receiver's document after every writer compacted


@dataclass(frozen=True, slots=True)
class DayCost:
    """One strategy at one tick length, per region per day."""

    tick_s: int
    strategy: str
    deltas_mb: float
    doc_peak_mb: float  # the receiver's (region) document at its largest
    own_state_peak_mb: float  # one writer's own state at its largest
    repair_mb: float  # every writer's own state every own_state_every_s
    compactions_per_writer: float


def _changed_fraction(active_fraction: float, tick_s: int) -> float:
    return 1 - (1 - active_fraction) ** tick_s


def simulate(
    tick_s: int,
    *,
    campaigns: int,
    writers: int,
    active_fraction: float,
    n_share: float,
    sample_ticks: int,
    small_client_ids: bool,
    seed: int,
    progress: Callable[[str], None],
) -> Measured:
    rng = random.Random(seed * 1_000 + tick_s)
    keys = [counter_key(f"cmp-{i:05d}", PERIOD) for i in range(campaigns)]
    # Random 53-bit client ids are pycrdt's default; ids handed out by the control plane can be small.
    ids = [1 + w if small_client_ids else rng.getrandbits(52) | 1 << 52 for w in range(writers)]
    pool = [
        SpendCounter(f"pop-x/worker-{w}/boot-{seed}", PERIOD, client_id=ids[w], compact_ratio=None)
        for w in range(writers)
    ]
    receiver = SpendCounter("control-plane", PERIOD, client_id=1_000 if small_client_ids else rng.getrandbits(53))

    def message(writer: SpendCounter, update: bytes) -> int:
        return len(encode_sync(writer.writer_id, PERIOD, update, False))

    key_write_bytes = 0
    for writer in pool:
        for key in keys:
            writer.add(key, rng.randint(1_000, 5_000_000), rng.randint(1, 1_000))
        update = writer.flush()
        assert update is not None
        key_write_bytes = message(writer, update)
        receiver.apply(update)
    own_after_keys = len(pool[0].own_state())

    changed = campaigns * _changed_fraction(active_fraction, tick_s)
    message_bytes = writes = 0
    flush_s = apply_s = 0.0
    started = last = time.perf_counter()
    for tick in range(sample_ticks):
        deltas = []
        for writer in pool:
            count = min(campaigns, max(0, round(rng.gauss(changed, math.sqrt(changed)))))
            for i in rng.sample(range(campaigns), count):
                charge = rng.randint(100_000, 50_000_000 * tick_s)
                release = rng.randint(1_000, charge) if rng.random() < n_share else 0
                writer.add(keys[i], charge, release)
                writes += 1 + (release > 0)
            t0 = time.perf_counter()
            update = writer.flush()
            flush_s += time.perf_counter() - t0
            if update is not None:
                message_bytes += message(writer, update)
                deltas.append(update)
        t0 = time.perf_counter()
        for update in deltas:
            receiver.apply(update)
        apply_s += time.perf_counter() - t0
        if time.perf_counter() - last > 5:
            last = time.perf_counter()
            progress(f"  {tick_s} s ticks: {tick + 1}/{sample_ticks} sample ticks, {last - started:.0f} s")

    own_before = len(pool[0].own_state())
    compaction_bytes = 0
    for writer in pool:
        update = writer.compact()
        assert update is not None
        compaction_bytes = message(writer, update)
        receiver.apply(update)
    expected: dict[str, int] = {}
    for writer in pool:
        for key, value in writer.totals().items():
            expected[key] = expected.get(key, 0) + value
    if receiver.totals() != expected:
        raise AssertionError("the receiver's totals differ from the sum of the writers' totals")

    per_writer_writes = writes / writers
    return Measured(
        tick_s=tick_s,
        sample_ticks=sample_ticks,
        changed_per_tick=changed,
        writes_per_tick=per_writer_writes / sample_ticks,
        message_bytes_per_tick=message_bytes / (sample_ticks * writers),
        bytes_per_write=message_bytes / writes,
        tombstone_bytes=(own_before - own_after_keys) / per_writer_writes,
        flush_ms_per_tick=1e3 * flush_s / (sample_ticks * writers),
        apply_ms_per_tick=1e3 * apply_s / sample_ticks,
        key_write_bytes=key_write_bytes,
        live_totals=sum((p > 0) + (n > 0) for p, n in pool[0].by_writer()[pool[0].writer_id].values()),
        own_state_after_keys=own_after_keys,
        own_state_after_compaction=len(pool[0].own_state()),
        compaction_bytes=compaction_bytes,
        region_doc_after_compaction=len(receiver.state()),
    )


def day_costs(
    m: Measured, *, writers: int, compact_ratios: tuple[float, ...], own_state_every_s: int
) -> list[DayCost]:
    """Extrapolate one tick length's measurements to a day: one document per day or per hour without
    compaction, and one per day compacted at each of ``compact_ratios``."""
    ticks_day = DAY_S // m.tick_s
    overwrites_day = m.writes_per_tick * ticks_day
    sends = DAY_S // own_state_every_s
    steady = ticks_day * m.message_bytes_per_tick

    def own_after(seconds: int) -> float:
        return m.own_state_after_keys + m.tombstone_bytes * m.writes_per_tick * (seconds // m.tick_s)

    def no_compaction(strategy: str, period_s: int) -> DayCost:
        peak = own_after(period_s)
        return DayCost(
            tick_s=m.tick_s,
            strategy=strategy,
            deltas_mb=writers * (DAY_S // period_s * m.key_write_bytes + steady) * MB,
            doc_peak_mb=writers * peak * MB,
            own_state_peak_mb=peak * MB,
            repair_mb=writers * sends * (m.own_state_after_keys + peak) / 2 * MB,
            compactions_per_writer=0.0,
        )

    def compacted(ratio: float) -> DayCost:
        low = m.own_state_after_compaction
        peak = low + ratio * m.live_totals * m.tombstone_bytes
        compactions = overwrites_day / (ratio * m.live_totals)
        return DayCost(
            tick_s=m.tick_s,
            strategy=f"day, compact R={ratio:g}",
            deltas_mb=writers * (m.key_write_bytes + steady + compactions * m.compaction_bytes) * MB,
            # writers compact at different times: the region's document holds one peak, the rest on average
            doc_peak_mb=(peak + (writers - 1) * (low + peak) / 2) * MB,
            own_state_peak_mb=peak * MB,
            repair_mb=writers * sends * (low + peak) / 2 * MB,
            compactions_per_writer=compactions,
        )

    return [no_compaction("day", DAY_S), no_compaction("hour", HOUR_S), *map(compacted, compact_ratios)]


def _sample_ticks(campaigns: int, active_fraction: float, n_share: float, tick_s: int, writes: int) -> int:
    per_tick = campaigns * _changed_fraction(active_fraction, tick_s) * (1 + n_share)
    return max(6, round(writes / max(per_tick, 1)))


def run(
    campaigns: int = 10_000,
    writers_per_region: int = 4,
    ticks: int | None = None,
    active_fraction: float = 0.03,
    *,
    tick_lengths: tuple[int, ...] = (1, 5, 30),
    sample_writes: int = 40_000,
    n_share: float = 0.8,
    compact_ratios: tuple[float, ...] = (4.0, 8.0, 16.0),
    own_state_every_s: int = 60,
    small_client_ids: bool = False,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Simulate each tick length and extrapolate to a day. ``ticks`` fixes the sample ticks per tick length;
    by default each writer writes about ``sample_writes`` totals per tick length (at least 6 ticks)."""
    if not 0 < active_fraction <= 1 or campaigns < 1 or writers_per_region < 1:
        raise ValueError("need campaigns >= 1, writers_per_region >= 1 and 0 < active_fraction <= 1")
    say = progress or (lambda _: None)
    measured, costs = [], []
    started = time.perf_counter()
    for tick_s in tick_lengths:
        sample = ticks or _sample_ticks(campaigns, active_fraction, n_share, tick_s, sample_writes)
        elapsed = time.perf_counter() - started
        say(f"{tick_s} s ticks: {sample} sample ticks x {writers_per_region} writers (at {elapsed:.0f} s)")
        m = simulate(
            tick_s,
            campaigns=campaigns,
            writers=writers_per_region,
            active_fraction=active_fraction,
            n_share=n_share,
            sample_ticks=sample,
            small_client_ids=small_client_ids,
            seed=seed,
            progress=say,
        )
        measured.append(m)
        costs += day_costs(
            m, writers=writers_per_region, compact_ratios=compact_ratios, own_state_every_s=own_state_every_s
        )
    return {
        "campaigns": campaigns,
        "writers_per_region": writers_per_region,
        "active_fraction": active_fraction,
        "n_share": n_share,
        "compact_ratios": compact_ratios,
        "own_state_every_s": own_state_every_s,
        "small_client_ids": small_client_ids,
        "elapsed_s": time.perf_counter() - started,
        "measured": [asdict(m) for m in measured],
        "per_region_day": [asdict(c) for c in costs],
    }


def format_table(report: dict[str, Any]) -> str:
    ids = "client ids < 2^21" if report["small_client_ids"] else "random 53-bit client ids"
    lines = [
        f"Spend PN-counter: {report['campaigns']:,} active campaigns, {report['writers_per_region']} writers per "
        f"region, {ids}. Per writer, {report['active_fraction']:.0%} of the campaigns change per second "
        f"(uniformly: an upper bound); {report['n_share']:.0%} of changes move N too.",
        "",
        "Measured, per writer per tick (sample ticks after every key's first write; compaction off):",
        f"{'tick':>5} {'sample':>6} {'changed':>8} {'writes':>7} {'msg B':>7} {'B/write':>7} {'tomb B':>6} "
        f"{'flush ms':>8} {'apply ms':>8}",
    ]
    for m in report["measured"]:
        lines.append(
            f"{m['tick_s']:>4}s {m['sample_ticks']:>6} {m['changed_per_tick']:>8.0f} {m['writes_per_tick']:>7.0f} "
            f"{m['message_bytes_per_tick']:>7.0f} {m['bytes_per_write']:>7.1f} {m['tombstone_bytes']:>6.1f} "
            f"{m['flush_ms_per_tick']:>8.1f} {m['apply_ms_per_tick']:>8.1f}"
        )
    m0 = report["measured"][0]
    lines += [
        "(apply ms: the receiver, all writers' deltas of one tick. tomb B: own state growth per overwrite.)",
        f"Per writer and period: first write of every key {m0['key_write_bytes'] / 1e3:.0f} kB; "
        f"{m0['live_totals']:,} live totals; own state {m0['own_state_after_compaction'] / 1e3:.0f} kB right "
        f"after a compaction, whose message is {m0['compaction_bytes'] / 1e3:.0f} kB.",
        "",
        f"Extrapolated, per region per day (repair: each writer's own state every {report['own_state_every_s']} s):",
        f"{'tick':>5} {'documents':<20} {'deltas MB':>10} {'doc peak MB':>11} {'own peak MB':>11} "
        f"{'repair MB':>10} {'compactions':>11}",
    ]
    too_big = []
    for c in report["per_region_day"]:
        if c["own_state_peak_mb"] / MB > MAX_MESSAGE_BYTES:
            too_big.append(f"{c['tick_s']} s/{c['strategy']}")
        lines.append(
            f"{c['tick_s']:>4}s {c['strategy']:<20} {c['deltas_mb']:>10,.0f} {c['doc_peak_mb']:>11,.1f} "
            f"{c['own_state_peak_mb']:>11,.1f} {c['repair_mb']:>10,.0f} {c['compactions_per_writer']:>11,.0f}"
        )
    day_writes = m0["writes_per_tick"] * DAY_S / m0["tick_s"]
    lines += [
        "",
        "day/hour: one document per UTC day/hour, never compacted. compactions: per writer per day.",
        f"Not in the numbers: sample clocks stay below 2^21; over a day a writer's clock reaches "
        f"{day_writes:,.0f} at {m0['tick_s']} s ticks, so late deltas take up to ~1 byte more per write.",
    ]
    if too_big:
        lines.append(
            f"Own state over one sync message ({MAX_MESSAGE_BYTES / 1e6:.1f} MB): {', '.join(too_big)}; "
            "a replica that missed a delta cannot be repaired there in one message."
        )
    lines.append(f"({report['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bytes per region per day of the spend PN-counter.")
    parser.add_argument("--campaigns", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--active-fraction", type=float, default=0.03)
    parser.add_argument("--ticks", type=int, default=None, help="sample ticks per tick length")
    parser.add_argument("--compact-ratios", default="4,8,16", help="comma-separated R values to extrapolate")
    parser.add_argument("--small-client-ids", action="store_true", help="client ids < 2^21 instead of random")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run(
        args.campaigns,
        args.writers,
        args.ticks,
        args.active_fraction,
        compact_ratios=tuple(float(r) for r in args.compact_ratios.split(",")),
        small_client_ids=args.small_client_ids,
        progress=progress,
    )
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
