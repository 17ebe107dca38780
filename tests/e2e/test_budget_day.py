"""A compressed day on the real multi-region stack: a region cut off from the hub does not make anyone overspend.

Three regions, each with its own NATS leaf node and JetStream domain behind a cuttable TCP proxy, the control
plane with its collector on chdb, one edge per region, all on a campaign clock 1440 times real speed (a day
in a minute). The seeded day simulator drives every page view against two controllers at once: ours
(leased allowances, even pacing) and the naive PN-counter baseline. The eu region is cut off for two hours
of campaign time in the morning and heals. Spend is read back from ClickHouse, deduplicated: the billing
truth. (``adserver simulate`` runs the full scenario suite with all four controllers.)
"""

from __future__ import annotations

import pytest

from adserver.simulate import Scenario, run_scenario
from loadtest import daysim

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_a_cut_off_region_keeps_every_campaign_within_one_percent_of_its_daily_budget() -> None:
    cfg = daysim.SimConfig(seed=3, speed=1440.0, controllers=("ours", "naive"), campaigns=4, topics=1,
                           peak_views_per_s=8.0)
    scenario = Scenario("partition-2h", "eu cut off for two hours", "partition", 0.25, 7_200)
    result = run_scenario(scenario, cfg, None, lead_s=30.0)

    ours = [c for c in result.campaigns if c.controller == "ours"]
    assert len(ours) == cfg.campaigns
    traffic = result.traffic
    assert traffic["ad_lag_ms"]["p95"] < 2_000, f"the driver fell behind its schedule: {traffic['ad_lag_ms']}"
    assert any(f.name for f in result.faults), "the cut and the heal ran"
    for c in ours:
        assert c.spend > 0, f"{c.campaign_id} never spent: the day did not run"
        assert c.overspend_pct <= 1.0, f"{c.campaign_id} overspent by {c.overspend_pct:.2f}%"
    constrained = [c for c in ours if c.constrained]
    assert constrained, "the seeded day has campaigns whose demand exceeds their budget"
    # The throttle spreads them over the day: a budget-bound campaign spends most of its budget and does not
    # run out before the evening (asap would, by mid-morning at these demand ratios).
    for c in constrained:
        assert c.utilisation_pct >= 80, f"{c.campaign_id} used only {c.utilisation_pct:.1f}% of its budget"
        assert sum(c.hourly_spend[18:]) > 0, f"{c.campaign_id} was spent out before 18:00"
