"""``adserver bench --only accounting``: what the edge's budget bookkeeping between requests costs per 100 ms.

Every 100 ms an edge worker runs its control tick (``Accounting.tick``: expire reservations, spend rates, day
roll, spend CRDT staging), a slice of pacing (``EdgeState.pacing_pieces``: a tick's share of the campaigns in
pieces, the event loop free between them), and its grant loop's check (``Accounting.grant_request``) and,
when that check finds something to ask, builds the request's unused report (``Accounting.unused_report``). All
of it runs on the event loop, so every request queued behind one of them waits that long. This drives the
same code at several inventory sizes, with a busy edge's traffic between periods (``RESERVATIONS`` ads
reserved on random campaigns and half as many billed), and reports the median and p99 of each step in
milliseconds (pacing: the whole share, ``accounting_pace_ms_*``, the longest wait one piece makes,
``accounting_pace_piece_p99_ms_*``, and the cost per campaign paced, ``accounting_pace_us_per_campaign_*``),
and the share of a core they take (``accounting_core_share_*``: their sum over the 100 ms period).

Side by side in the same run, ``accounting_grant_check_every_campaign_ms_*`` forces the check to size every
campaign each time, as it did before it walked only the campaigns that moved (5b67b0d): the ratio between the
two is what that change is worth at each size. Also timed: the first tick and grant check on a new snapshot
(``accounting_snapshot_swap_ms_*``: a snapshot arrives whenever an advertiser edits a campaign), and the
longest pacing piece on it (``accounting_snapshot_swap_pace_piece_ms_*``); the spend
sync loop's delta (every 500 ms) and whole state (every 5 s, every minute past 64 kB); and a ``/metrics``
scrape's allowance gauges (``BudgetLedger.totals``), which walk every campaign, but once per scrape, and the
longest piece of that walk as the edge runs it (``accounting_metrics_scrape_piece_ms_*``). With half the
inventory dropped from the snapshot: the tick at the next midnight (``accounting_day_turn_ms_*``), the one at
UTC-12's midnight that begins forgetting their books (``accounting_forget_turn_ms_*``), the longest later tick
forgetting a slice (``accounting_forget_slice_p99_ms_*``) and how many were forgotten
(``accounting_forgotten_*``, all of them). And with the campaigns spread over 24 timezones, the tick at UTC's
midnight (``accounting_zone_midnight_ms_*``), which rolls UTC's share of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from adserver.bench_auction import _percentile, size_label
from adserver.bench_handler import _campaigns, _edge
from edge.accounting import FORGET_PER_TICK, Accounting
from edge.budget import BudgetLedger
from edge.spend import SpendView
from edge.state import TOTALS_PIECE, freeze_long_lived, prepare_swap
from replication.calendar import local_day
from replication.snapshot import SnapshotCampaign, build_snapshot

SIZES = (1_000, 20_000, 100_000)
RESERVATIONS = 300  # ads a worker reserves per 100 ms at 3,000 one-slot requests a second
PERIOD_S = 0.1


def _piece_times(pieces: Iterator[object]) -> list[int]:
    """How long each piece of a generator that yields between its pieces took, in ns (the last piece is the
    one that ends it)."""
    marks = [time.perf_counter_ns()]
    for _ in pieces:
        marks.append(time.perf_counter_ns())
    marks.append(time.perf_counter_ns())
    return [b - a for a, b in itertools.pairwise(marks)]


def _ms(ns: list[int], q: float) -> float:
    return round(_percentile(sorted(ns), q) / 1e6, 3)


def _inventory(n: int, zones: tuple[str, ...] = ("UTC",)) -> list[SnapshotCampaign]:
    """``n`` of the handler bench's campaigns, each on its own keyword, spread evenly over ``zones``."""
    template = _campaigns()[0]
    return [dataclasses.replace(template, campaign_id=f"c{i:06d}", keywords=frozenset({f"kw{i}"}),
                                timezone=zones[i % len(zones)]) for i in range(n)]


# Zones with different midnights, for ``zone_midnight_ms``.
ZONES = ("UTC", "Europe/Paris", "Europe/Athens", "Europe/Moscow", "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata",
         "Asia/Bangkok", "Asia/Shanghai", "Asia/Tokyo", "Australia/Brisbane", "Pacific/Auckland", "America/Sao_Paulo",
         "America/Halifax", "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
         "America/Anchorage", "Pacific/Honolulu", "Atlantic/Azores", "Africa/Lagos", "Asia/Kathmandu",
         "Pacific/Kiritimati")


def zone_midnight_ms(n: int) -> float:
    """The tick at UTC's midnight with ``n`` campaigns spread over ``ZONES``: the day roll asks about UTC's
    share of them (``Accounting.roll_days``). Median of three, each on fresh books."""
    snapshot = build_snapshot(_inventory(n, ZONES), version=1, created_ms=0, reserve_cpm_micros=100_000)
    Accounting.warm(snapshot)  # what the edge's loader thread does
    midnight = 1_800_057_600.0  # 2027-01-16 00:00 UTC: UTC-12's noon, so no list of dropped campaigns
    times = []
    for _ in range(3):
        accounting = Accounting(BudgetLedger(worker_id="w"), SpendView("w"))
        for c in snapshot.campaigns:
            accounting.ledger.grant(c.campaign_id, 10**9, exhausted=False, day="2027-01-15")
        accounting.tick(snapshot, midnight - 60, pace=False)  # the first roll walks every zone's
        accounting.tick(snapshot, midnight - 30, pace=False)
        t0 = time.perf_counter_ns()
        accounting.tick(snapshot, midnight + 1, pace=False)
        times.append(time.perf_counter_ns() - t0)
    return round(statistics.median(times) / 1e6, 3)


def measure(n: int, periods: int, *, seed: int = 1) -> dict[str, dict[str, float]]:
    """``periods`` periods of an edge holding ``n`` campaigns: per step, the median and p99 in ms; and how
    many campaigns an unused report named, the first (whole) one and the median of the rest."""
    _, state = _edge()
    campaigns = _inventory(n)
    now = state.settings.clock.now()
    state.snapshot = snapshot = build_snapshot(campaigns, version=2, created_ms=int(now * 1000),
                                               reserve_cpm_micros=100_000)
    ledger, accounting = state.ledger, state.accounting
    day = local_day(now, "UTC")
    for c in campaigns:
        ledger.grant(c.campaign_id, 10**9, exhausted=False, day=day)
    ids = [c.campaign_id for c in campaigns]
    rng = random.Random(seed)
    steps: dict[str, list[int]] = {"tick": [], "pace": [], "pace_piece": [], "grant_check": [], "unused_report": [],
                                   "spend_flush": [], "grant_check_every_campaign": [], "spend_flush_whole": [],
                                   "snapshot_swap": [], "snapshot_swap_pace_piece": [], "metrics_scrape_piece": [],
                                   "day_turn": [], "forget_turn": [], "forget_slice": []}
    clock = time.perf_counter_ns
    holds: list[tuple[str, Any]] = []
    reported: list[int] = []  # campaigns each unused report named (the first: all of them)
    t = now
    for period in range(periods + 2):  # the first two size every campaign (a new snapshot): not timed
        t += PERIOD_S
        # Half on a few hot campaigns, half anywhere in the inventory: about 160 campaigns move a period.
        wanted = [(ids[min(n - 1, int(rng.paretovariate(1.2)) - 1) if k % 2 else rng.randrange(n)], 1_000)
                  for k in range(RESERVATIONS)]
        holds += [(cid, h) for (cid, _), h in zip(wanted, ledger.reserve_many(wanted, now_s=t), strict=True) if h]
        for cid, hold in holds[: RESERVATIONS // 2]:
            ledger.settle(cid, 900, hold)
        del holds[: RESERVATIONS // 2]
        t0 = clock()
        state.control_tick(t, pace=False)  # as the edge's control loop: pacing is its own task
        t1 = clock()
        pieces = _piece_times(state.pacing_pieces(t))
        t2 = clock()
        accounting.grant_request(snapshot, t, retry_s=0.25)
        t3 = clock()
        reported.append(len(accounting.unused_report()))
        t4 = clock()
        if period >= 2:
            steps["tick"].append(t1 - t0)
            steps["pace"].append(sum(pieces))
            steps["pace_piece"] += pieces
            steps["grant_check"].append(t3 - t2)
            steps["unused_report"].append(t4 - t3)
        if period % 5 == 4:  # the spend sync loop's delta, every 500 ms
            t0 = clock()
            state.spend.flush(full=False)
            steps["spend_flush"].append(clock() - t0)
    for _ in range(max(3, periods // 10)):  # the same check forced over every campaign, side by side
        t += PERIOD_S
        t0 = clock()
        accounting.grant_request(snapshot, t, retry_s=0.25, every_campaign=True)
        steps["grant_check_every_campaign"].append(clock() - t0)
    # A new snapshot with one campaign edited: the swap, the first tick and grant check on it, which see a
    # snapshot they have not walked, and then its first pacing piece.
    for version in (3, 4, 5):
        t += PERIOD_S
        edited = [dataclasses.replace(c, revision=c.revision + 1) if k == version else c
                  for k, c in enumerate(campaigns)]
        snapshot = build_snapshot(edited, version=version, created_ms=int(now * 1000), reserve_cpm_micros=100_000)
        loaded = prepare_swap(snapshot, state.snapshot)  # in the edge's loader thread: not timed
        t0 = clock()
        state.swap_in(loaded)
        freeze_long_lived()  # what ``EdgeState.on_snapshot`` does on the loop after the swap
        state.control_tick(t, pace=False)  # as the edge does it: the tick, then pacing in pieces
        accounting.grant_request(snapshot, t, retry_s=0.25)
        steps["snapshot_swap"].append(clock() - t0)
        # The first piece on a new snapshot also meets its new campaigns.
        steps["snapshot_swap_pace_piece"].append(max(_piece_times(state.pacing_pieces(t))))
    # Half the inventory dropped from the snapshot (ended, paused, deleted): the tick at the next UTC midnight
    # (the day roll over every campaign, as they share one zone; run before 12:00 UTC, the earliest day turns in
    # between too, and this tick also lists the dropped campaigns, none forgettable yet), the tick at UTC-12's
    # midnight that lists them and forgets a first slice, and each later tick's slice
    # (``Accounting.forget_dropped``).
    t += PERIOD_S
    half = build_snapshot(campaigns[: n // 2], version=6, created_ms=int(now * 1000), reserve_cpm_micros=100_000)
    state.swap_in(prepare_swap(half, state.snapshot))
    freeze_long_lived()
    state.control_tick(t, pace=False)
    midnight = (int(t) // 86_400 + 1) * 86_400
    for name, at in (("day_turn", midnight + 1.0), ("forget_turn", midnight + 12 * 3600 + 1.0)):
        accounting.unused_report()  # the grant loop's: the figures moved since the last one go out first
        t0 = clock()
        state.control_tick(at, pace=False)
        steps[name].append(clock() - t0)
        # The next tick, not timed: the spend rates of every campaign the roll moved (85-90 ms at 100,000
        # here, one-off, a cost of the roll) are updated then.
        state.control_tick(at + PERIOD_S, pace=False)
    t = midnight + 12 * 3600 + 1.0 + PERIOD_S
    for _ in range(-(-(n - n // 2) // FORGET_PER_TICK)):
        t += PERIOD_S
        t0 = clock()
        state.control_tick(t, pace=False)
        steps["forget_slice"].append(clock() - t0)
    forgotten = n - sum(1 for c in campaigns if c.campaign_id in ledger.campaigns)
    totals = []
    for _ in range(3):
        t0 = clock()
        ledger.totals()
        totals.append(clock() - t0)
        # As the edge's /metrics does it.
        steps["metrics_scrape_piece"].append(max(_piece_times(ledger.totals_in_pieces(TOTALS_PIECE))))
        t0 = clock()
        state.spend.flush(full=True)  # the whole own state, every 5 s (every minute past 64 kB)
        steps["spend_flush_whole"].append(clock() - t0)
    out = {name: {"p50_ms": _ms(ns, 0.5), "p99_ms": _ms(ns, 0.99)} for name, ns in steps.items()}
    out["metrics_totals"] = {"p50_ms": _ms(totals, 0.5), "p99_ms": _ms(totals, 0.99)}
    out["reported"] = {"first": reported[0], "median": statistics.median(reported[1:])}
    out["paced"] = {"per_tick": Accounting.pace_share(snapshot)}
    out["forgotten"] = {"campaigns": forgotten, "dropped": n - n // 2}
    return out


def bench_accounting(*, duration_s: float, rounds: int, say: Callable[[str], None], sizes: tuple[int, ...] = SIZES,
                     **_: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": {}}
    periods = max(20, int(duration_s * rounds / PERIOD_S / 10))
    for n in sizes:
        say(f"accounting: {n:,} campaigns, {periods} periods of {RESERVATIONS} reservations")
        run = measure(n, periods)
        key = size_label(n)
        p50 = {step: r["p50_ms"] for step, r in run.items() if step not in ("reported", "paced", "forgotten")}
        share = (p50["tick"] + p50["pace"] + p50["grant_check"] + p50["unused_report"]) / (PERIOD_S * 1000)
        say(f"{n:,} campaigns: tick {p50['tick']} ms, pacing {p50['pace']} ms for {run['paced']['per_tick']} "
            f"campaigns (longest piece p99 {run['pace_piece']['p99_ms']} ms), grant check {p50['grant_check']} ms "
            f"(over every campaign "
            f"{p50['grant_check_every_campaign']} ms), unused report {p50['unused_report']} ms, spend sync "
            f"{p50['spend_flush']} ms (whole {p50['spend_flush_whole']} ms); half the inventory dropped: the "
            f"midnight tick {p50['day_turn']} ms, the tick that begins forgetting them {p50['forget_turn']} ms, each "
            f"later slice {p50['forget_slice']} ms (longest {run['forget_slice']['p99_ms']} ms), "
            f"{run['forgotten']['campaigns']:,} of {run['forgotten']['dropped']:,} forgotten")
        out[f"accounting_tick_ms_{key}"] = p50["tick"]
        out[f"accounting_tick_p99_ms_{key}"] = run["tick"]["p99_ms"]
        out[f"accounting_pace_ms_{key}"] = p50["pace"]
        out[f"accounting_pace_piece_p99_ms_{key}"] = run["pace_piece"]["p99_ms"]
        out[f"accounting_pace_us_per_campaign_{key}"] = round(p50["pace"] * 1000 / run["paced"]["per_tick"], 2)
        out[f"accounting_grant_check_ms_{key}"] = p50["grant_check"]
        out[f"accounting_grant_check_every_campaign_ms_{key}"] = p50["grant_check_every_campaign"]
        out[f"accounting_unused_report_ms_{key}"] = p50["unused_report"]
        out[f"accounting_core_share_{key}"] = round(share, 4)
        out[f"accounting_snapshot_swap_ms_{key}"] = p50["snapshot_swap"]
        out[f"accounting_snapshot_swap_pace_piece_ms_{key}"] = p50["snapshot_swap_pace_piece"]
        out[f"accounting_spend_sync_ms_{key}"] = p50["spend_flush"]
        out[f"accounting_spend_sync_whole_ms_{key}"] = p50["spend_flush_whole"]
        out[f"accounting_metrics_scrape_ms_{key}"] = p50["metrics_totals"]
        out[f"accounting_metrics_scrape_piece_ms_{key}"] = p50["metrics_scrape_piece"]
        out[f"accounting_campaigns_reported_{key}"] = run["reported"]["median"]
        out[f"accounting_day_turn_ms_{key}"] = p50["day_turn"]
        out[f"accounting_forget_turn_ms_{key}"] = p50["forget_turn"]
        out[f"accounting_forget_slice_p99_ms_{key}"] = run["forget_slice"]["p99_ms"]
        out[f"accounting_forgotten_{key}"] = run["forgotten"]["campaigns"]
        out[f"accounting_zone_midnight_ms_{key}"] = zone_midnight_ms(n)
        say(f"{n:,} campaigns over {len(ZONES)} zones: the tick at UTC's midnight "
            f"{out[f'accounting_zone_midnight_ms_{key}']} ms")
        out["runs"][key] = run
    return out
