"""``adserver simulate``: whole compressed days on the real multi-region stack, one per fault scenario.

Each scenario starts a fresh production-shaped stack (a NATS hub, one leaf node with its own JetStream domain
per region behind a cuttable TCP proxy, the control plane with its collector on chdb, one edge per region),
all on one shared campaign clock running ``speed`` times faster than real time, and then lets
``loadtest.daysim`` replay one seeded day of traffic over HTTP against every budget controller at once:
each synthetic campaign exists once per controller and every page view is sent once per controller, so the
controllers see identical traces under identical faults. Faults are injected here, at fixed times of the
virtual day: a region cut off from the hub, an edge killed with SIGKILL and restarted, the control plane
frozen with SIGSTOP.

The result is the JSON report ``{scenarios: [{name, controller, max_overspend_pct, mean_utilization_pct,
rmse_vs_plan, ...}]}``, a table with the targets checked, and a PNG of spend against plan.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from adserver.faults import pause, resume
from adserver.stack import LocalStack, hub_stream_state
from loadtest import daysim, daysim_report

DAY_S = 86_400


def lease_s(speed: float) -> float:
    """Allowance lease in campaign seconds: 15 minutes, but never under 3 real seconds (a busy 2-core machine
    can stall a process for a good part of a second, which must not lapse every lease in a region)."""
    return max(900.0, 3.0 * speed)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    # (start, duration) as fractions of the day, and what happens
    kind: str = "none"  # none | partition | edge_kill | cp_down
    at: float = 0.0
    duration_s: float = 0.0  # campaign seconds
    region: str = "eu"


SCENARIOS = (
    Scenario("no-fault", "no fault"),
    Scenario("partition-60s", "eu cut off from the hub for 60 s of campaign time", "partition", 0.35, 60),
    Scenario("partition-300s", "eu cut off from the hub for 300 s of campaign time", "partition", 0.35, 300),
    # 10:34-12:34, when the demand-heavy asap campaigns of this seed run out: the hours where a cut region
    # that cannot see the others' spend keeps spending what they already spent (the negative control).
    Scenario("partition-2h", "eu cut off for two hours around when budgets run out under asap",
             "partition", 0.44, 7_200),
    Scenario("edge-kill", "the eu edge killed (SIGKILL) and restarted 10 minutes later", "edge_kill", 0.40, 600),
    Scenario("cp-down-300s", "the control plane frozen (SIGSTOP) for 300 s of campaign time", "cp_down", 0.45, 300),
)


def clock_setting(speed: float, lead_real_s: float) -> tuple[str, tuple[float, float, float]]:
    """A clock that reaches a UTC midnight ``lead_real_s`` real seconds from now (time to start the stack and
    create campaigns first). Returns the ADSERVER_CLOCK value and (r0, v0, speed)."""
    r0 = time.time()
    v0 = (int(r0 // DAY_S) + 30) * DAY_S - lead_real_s * speed  # a month ahead, so no real data collides
    return f"{speed:g}@{r0:.6f}:{v0:.6f}", (r0, v0, speed)


def _faults(scenario: Scenario, stack: LocalStack,
            edges: dict[str, list[str]]) -> tuple[list[daysim.Fault], list[tuple[float, float, str]]]:
    if scenario.kind == "none":
        return [], []
    end = scenario.at + scenario.duration_s / DAY_S
    window = [(scenario.at, end, scenario.name)]

    if scenario.kind == "partition":
        proxy = stack.proxies[scenario.region]

        async def cut() -> None:
            proxy.cut()

        async def heal() -> None:
            proxy.heal()

        return [(scenario.at, cut), (end, heal)], window
    if scenario.kind == "edge_kill":
        victim = next(e for e in stack.edges if e.region == scenario.region)

        async def kill() -> None:
            edges[victim.region] = [u for u in edges[victim.region] if u != victim.url]
            victim.proc.kill9()
            stack.edges.remove(victim)  # the catch-up wait reads every listed edge's metrics

        async def restart() -> None:
            fresh = await asyncio.to_thread(stack.start_edge, victim.region, "pop9")
            from adserver.processes import wait_ready

            await asyncio.to_thread(wait_ready, f"{fresh.url}/readyz", fresh.proc, 60)
            edges[victim.region] = [*edges[victim.region], fresh.url]

        return [(scenario.at, kill), (end, restart)], window
    if scenario.kind == "cp_down":
        cp = stack.control_plane
        assert cp is not None

        async def stop() -> None:
            pause(cp)

        async def cont() -> None:
            resume(cp)

        return [(scenario.at, stop), (end, cont)], window
    raise ValueError(f"unknown scenario kind {scenario.kind!r}")


def reconciliation(budget: dict[str, object]) -> dict[str, float | int]:
    """The replicated spend counter against ClickHouse's deduplicated spend, read together just before
    midnight: the gap is what the counter knew and the collector had not stored yet (or the reverse)."""
    crdt = stored = 0
    worst = 0.0
    for entry in budget.values():
        if not isinstance(entry, dict) or "clickhouse_spent" not in entry:
            continue
        crdt += int(entry["spent"])
        stored += int(entry["clickhouse_spent"])
        if entry["daily_budget"]:
            worst = max(worst, abs(int(entry["gap"])) / int(entry["daily_budget"]) * 100)
    return {"crdt_spent_micros": crdt, "clickhouse_spent_micros": stored,
            "gap_pct_of_spend": round((crdt - stored) / stored * 100, 3) if stored else 0.0,
            "max_campaign_gap_pct_of_budget": round(worst, 3)}


def run_scenario(scenario: Scenario, cfg: daysim.SimConfig, workdir: Path | None,
                 lead_s: float = 45.0) -> daysim.DayResult:
    """One scenario on a fresh stack; the virtual day starts ``lead_s`` real seconds from now (the stack must
    be up and the campaigns created by then)."""
    clock, mapping = clock_setting(cfg.speed, lead_s)
    day_start_v = mapping[1] + lead_s * cfg.speed
    shape = ",".join(f"{w:g}" for w in daysim.DIURNAL)
    common = {"ADSERVER_CLOCK": clock}
    stack = LocalStack(
        regions=cfg.regions, leaf_regions=cfg.regions,
        data_dir=None if workdir is None else workdir / scenario.name,
        # Token and reservation lifetimes are campaign time: at hundreds of times real speed the defaults
        # (15 minutes, 2 minutes) would be a second or less of real time, shorter than an HTTP round trip
        # under load. A real beacon arrives within a few real seconds, which these still cover.
        edge_env={"ADSERVER_EDGE_IVT_ENABLED": "false", "ADSERVER_EDGE_IMPRESSION_TTL_S": "86400",
                  "ADSERVER_EDGE_CLICK_TTL_S": "86400", "ADSERVER_EDGE_RESERVATION_TTL_S": "3600", **common},
        cp_env={**common, "ADSERVER_CP_ALLOW_BASELINES": "true", "ADSERVER_CP_TRAFFIC_SHAPE": shape,
                "ADSERVER_CP_LEASE_S": f"{lease_s(cfg.speed):g}",
                "ADSERVER_CP_RESERVE_CPM_MICROS": str(cfg.reserve_cpm_micros)},
    )
    sys.stderr.write(f"[simulate] {scenario.name}: {scenario.description}; starting the stack\n")
    with stack:
        tokens = [stack.create_advertiser(f"sim-{scenario.name}-{i}")[1] for i in range(cfg.campaigns_per_topic)]
        edges: dict[str, list[str]] = {}
        for e in stack.edges:
            edges.setdefault(e.region, []).append(e.url)
        faults, windows = _faults(scenario, stack, edges)
        # Allowance granted but unspent is read just before midnight: after it the report is the next day's.
        budget: dict[str, object] = {}

        async def snapshot_budget() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.get(f"{stack.cp_url}/v1/admin/stats",
                                     headers={"Authorization": f"Bearer {stack.admin_token}"})
                budget.update(r.json().get("budget") or {})

        faults = [*faults, (0.998, snapshot_budget)]

        async def settle() -> None:
            await asyncio.to_thread(stack.wait_stored, 120)

        async def day() -> daysim.DayResult:
            return await daysim.run_day(cfg, name=scenario.name, edges=edges, cp_url=stack.cp_url, tokens=tokens,
                                        admin_token=stack.admin_token, clock=mapping, day_start_v=day_start_v,
                                        faults=faults, fault_windows=windows, settle=settle,
                                        budget_snapshot=budget)

        result = asyncio.run(day())
        result.traffic["reconciliation"] = reconciliation(budget)
        hub_messages = asyncio.run(hub_stream_state(stack.nats_url))
        sys.stderr.write(f"[simulate] {scenario.name}: done; hub stream holds {hub_messages}\n")
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adserver simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", default="simulate-report.json", help="JSON report path")
    p.add_argument("--chart", default=None, help="PNG path (default: the report path with .png)")
    p.add_argument("--only", help="comma-separated scenario names: " + ", ".join(s.name for s in SCENARIOS))
    p.add_argument("--speed", type=float, default=288.0, help="campaign seconds per real second (288: 5 min/day)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peak", type=float, default=None, help="page views per real second at the diurnal peak")
    p.add_argument("--workdir", type=Path, default=None, help="keep each scenario's data and logs here")
    args = p.parse_args(argv)
    chosen = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {s.name for s in SCENARIOS})
        if unknown:
            p.error(f"unknown scenarios {unknown}; choose from {[s.name for s in SCENARIOS]}")
        chosen = [s for s in SCENARIOS if s.name in names]
    # Sized for the 2-core machines CI runs on: the whole stack, the driver and chdb share them, and a driver
    # that falls behind its schedule would push the day's traffic past midnight. 8 campaigns per controller
    # on 2 topics still give each campaign a budget of hundreds of impressions (one is < 0.5% of it).
    cfg = daysim.SimConfig(seed=args.seed, speed=args.speed, campaigns=8, topics=2, peak_views_per_s=8.0)
    if args.peak:
        cfg = replace(cfg, peak_views_per_s=args.peak)
    results = []
    for scenario in chosen:
        results.append(run_scenario(scenario, cfg, args.workdir))
        daysim_report.write_report(args.report, results)  # after each scenario: a long run keeps its progress
    chart = args.chart or str(Path(args.report).with_suffix(".png"))
    daysim_report.draw_chart(chart, results)
    daysim_report.print_table(results)
    print(f"report: {args.report}  chart: {chart}")
    return 0

