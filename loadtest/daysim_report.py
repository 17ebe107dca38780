"""The day simulator's report: a JSON file, a plain-text table with the pass/fail verdict, and a chart.

One row per scenario and controller. The targets are judged on our controller only; the others are the
baselines it is measured against: at most 1% overspend on every campaign, at least 97% mean utilisation of
the campaigns whose demand exceeds their budget, and a plan-tracking RMSE at most 0.8 times LinkedIn-style
step pacing's in the same scenario.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.daysim import DAY_S, CampaignOutcome, DayResult, fmt_virtual, plan_fractions

OURS = "ours"
RMSE_BASELINE = "linkedin"
MAX_OVERSPEND_PCT = 1.0
MIN_UTILIZATION_PCT = 97.0
RMSE_FACTOR = 0.8
COLORS = {"ours": "tab:blue", "asap": "tab:orange", "naive": "tab:red", "linkedin": "tab:green"}


def verdict(result: DayResult, controller: str) -> tuple[bool | None, list[str]]:
    """(passed, the checks that failed) for ``controller`` in one scenario; (None, []) for a baseline."""
    if controller != OURS:
        return None, []
    s = result.controllers[controller]
    failed = []
    if s.max_overspend_pct > MAX_OVERSPEND_PCT:
        failed.append(f"overspend {s.max_overspend_pct:.2f}% > {MAX_OVERSPEND_PCT:g}%")
    if s.mean_utilization_pct is None or s.mean_utilization_pct < MIN_UTILIZATION_PCT:
        got = "n/a" if s.mean_utilization_pct is None else f"{s.mean_utilization_pct:.1f}%"
        failed.append(f"utilisation {got} < {MIN_UTILIZATION_PCT:g}%")
    base = result.controllers.get(RMSE_BASELINE)
    if base is not None and base.rmse_vs_plan is not None:
        limit = RMSE_FACTOR * base.rmse_vs_plan
        if s.rmse_vs_plan is None or s.rmse_vs_plan > limit:
            got = "n/a" if s.rmse_vs_plan is None else f"{s.rmse_vs_plan:.3f}"
            failed.append(f"rmse {got} > {RMSE_FACTOR:g} x {RMSE_BASELINE} ({limit:.3f})")
    return not failed, failed


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def rmse_ratio(result: DayResult, controller: str) -> float | None:
    """``controller``'s RMSE against the plan divided by the baseline's (the target: at most RMSE_FACTOR)."""
    s, base = result.controllers[controller], result.controllers.get(RMSE_BASELINE)
    if s.rmse_vs_plan is None or base is None or not base.rmse_vs_plan:
        return None
    return s.rmse_vs_plan / base.rmse_vs_plan


def rows(results: Sequence[DayResult]) -> list[dict[str, Any]]:
    out = []
    for result in results:
        for controller, s in result.controllers.items():
            passed, failed = verdict(result, controller)
            traffic = result.traffic
            out.append({
                "name": result.name,
                "controller": controller,
                "max_overspend_pct": round(s.max_overspend_pct, 3),
                "mean_utilization_pct": _round(s.mean_utilization_pct, 2),
                "rmse_vs_plan": _round(s.rmse_vs_plan, 4),
                "rmse_vs_plan_all": _round(s.rmse_vs_plan_all, 4),
                "rmse_ratio_vs_linkedin": _round(rmse_ratio(result, controller), 3),
                "max_stranded_pct": _round(s.max_stranded_pct, 3),
                "overspent_campaigns": s.overspent_campaigns,
                "campaigns": s.campaigns,
                "constrained_campaigns": s.constrained_campaigns,
                "spend_micros": s.spend_micros,
                "budget_micros": s.budget_micros,
                "pass": passed,
                "failed_checks": failed,
                "traffic": traffic.get("controllers", {}).get(controller),
                "ad_lag_ms": traffic.get("ad_lag_ms"),
                "reconciliation": traffic.get("reconciliation"),
                "day_start": fmt_virtual(result.day_start_v),
                "seed": result.config.seed,
                "faults": [{"name": f.name, "fraction": f.fraction, "at": fmt_virtual(f.started_v),
                            "error": f.error} for f in result.faults],
                "campaign_details": [o.as_dict() for o in result.campaigns if o.controller == controller],
            })
    return out


def write_report(path: str | Path, scenarios: Sequence[DayResult]) -> None:
    """``{"scenarios": [{"name", "controller", "max_overspend_pct", "mean_utilization_pct", "rmse_vs_plan",
    ...}]}``, one entry per scenario and controller."""
    Path(path).write_text(json.dumps({"scenarios": rows(scenarios)}, indent=2) + "\n")


def format_table(scenarios: Sequence[DayResult]) -> str:
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    header = ["scenario", "controller", "max over %", "over>1%", "util %", "rmse", "rmse ÷ li", "rmse all",
              "stranded %", "errors", "lag p95 ms", "verdict"]
    table = [header]
    for row in rows(scenarios):
        traffic = row["traffic"] or {}
        errors = traffic.get("failed", 0) + traffic.get("impressions_failed", 0) + traffic.get("clicks_failed", 0)
        verdict_text = {None: "-", True: "PASS"}.get(row["pass"], "FAIL: " + "; ".join(row["failed_checks"]))
        table.append([
            row["name"], row["controller"], num(row["max_overspend_pct"], ".2f"),
            f"{row['overspent_campaigns']}/{row['campaigns']}", num(row["mean_utilization_pct"], ".1f"),
            num(row["rmse_vs_plan"], ".3f"), num(row["rmse_ratio_vs_linkedin"], ".2f"),
            num(row["rmse_vs_plan_all"], ".3f"),
            num(row["max_stranded_pct"], ".2f"), str(errors), num((row["ad_lag_ms"] or {}).get("p95"), ".0f"),
            verdict_text,
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:-1], widths[2:], strict=True)]
        lines.append("  ".join([*cells, r[-1]]))
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def print_table(scenarios: Sequence[DayResult]) -> str:
    text = format_table(scenarios)
    print(text)
    return text


def _mean_curve(outcomes: Sequence[CampaignOutcome]) -> list[float]:
    curves = [[0.0, *o.cumulative_fractions()] for o in outcomes]
    return [statistics.fmean(points) for points in zip(*curves, strict=True)]


def draw_chart(png_path: str | Path, scenario_results: Sequence[DayResult]) -> None:
    """Per scenario a panel: cumulative spend / daily budget over the virtual day for each controller (mean
    over the constrained campaigns solid, the campaign tracking the plan worst dashed), the plan, the budget
    line, and the fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(scenario_results))
    cols = min(n, 2)
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.2 * rows_n), squeeze=False)
    hours = list(range(25))
    plan = [0.0, *plan_fractions()]
    for k, result in enumerate(scenario_results):
        ax = axes[k // cols][k % cols]
        for start, end, label in result.fault_windows:
            ax.axvspan(start * 24, end * 24, color="grey", alpha=0.18, label=f"fault: {label}")
        if not result.fault_windows:
            for f in result.faults:
                ax.axvline((f.started_v - result.day_start_v) / DAY_S * 24, color="grey", lw=0.8, ls=":")
        ax.plot(hours, plan, color="black", lw=1.2, ls=":", label="plan")
        ax.axhline(1.0, color="black", lw=0.6)
        for controller in result.controllers:
            group = [o for o in result.campaigns if o.controller == controller]
            picked = [o for o in group if o.constrained] or group
            if not picked:
                continue
            color = COLORS.get(controller)
            ax.plot(hours, _mean_curve(picked), color=color, lw=1.8, label=f"{controller} mean")
            worst = max(picked, key=lambda o: o.rmse_vs_plan)
            ax.plot(hours, [0.0, *worst.cumulative_fractions()], color=color, lw=1.0, ls="--",
                    label=f"{controller} worst")
        ax.set_title(result.name)
        ax.set_xlim(0, 24)
        ax.set_xticks(range(0, 25, 3))
        ax.set_xlabel("virtual hour (UTC)")
        ax.set_ylabel("cumulative spend / daily budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for k in range(len(scenario_results), rows_n * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
