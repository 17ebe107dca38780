"""The day simulator's pure parts (trace, campaigns, metrics, report) and its driver against in-memory fake
servers (httpx.MockTransport): no real servers, a virtual day in about two real seconds."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from edge.tokens import SigningKeys, sign
from loadtest import daysim
from loadtest.daysim import (
    CONTROLLERS,
    DAY_S,
    DIURNAL,
    CampaignOutcome,
    CampaignSpec,
    SimConfig,
    ad_params,
    generate_campaigns,
    generate_trace,
    overspend_pct,
    plan_fractions,
    rmse_vs_plan,
    stranded_pct,
    summarise,
    utilisation_pct,
)
from loadtest.daysim_report import draw_chart, format_table, verdict, write_report


def test_trace_is_deterministic_for_a_seed() -> None:
    cfg = SimConfig(seed=7)
    a, b = generate_trace(cfg), generate_trace(cfg)
    assert a == b and len(a) > 1000
    assert generate_trace(replace(cfg, seed=8)) != a
    assert generate_campaigns(cfg, a) == generate_campaigns(cfg, b)
    assert all(0 <= x.t_s < DAY_S for x in a)
    assert [x.t_s for x in a] == sorted(x.t_s for x in a)


def test_every_controller_gets_the_same_page_view_but_its_own_keyword() -> None:
    cfg = SimConfig(seed=3)
    for arrival in generate_trace(cfg)[:200]:
        by_controller = {c: ad_params(arrival, c, cfg) for c in CONTROLLERS}
        keywords = {c: p.pop("keywords") for c, p in by_controller.items()}
        assert len({json.dumps(p, sort_keys=True) for p in by_controller.values()}) == 1
        assert keywords == {c: f"t{arrival.topic}-{c}" for c in CONTROLLERS}


def test_arrivals_per_hour_follow_the_diurnal_shape() -> None:
    cfg = SimConfig(seed=11, peak_views_per_s=100.0)
    trace = generate_trace(cfg)
    per_hour = Counter(int(a.t_s // 3600) for a in trace)
    counts = [per_hour[h] for h in range(24)]
    assert statistics.correlation(counts, list(DIURNAL)) > 0.97
    expected = cfg.peak_views_per_s / cfg.speed * 3600 * sum(DIURNAL)
    assert abs(len(trace) - expected) < 4 * math.sqrt(expected)
    # the quietest hour is at night, the busiest in the evening
    assert counts.index(min(counts)) in (2, 3, 4, 5) and counts.index(max(counts)) in (19, 20, 21)


def test_zipf_placements_and_users_are_skewed() -> None:
    trace = generate_trace(SimConfig(seed=5))
    placements = Counter(a.placement for a in trace).most_common()
    users = Counter(a.user for a in trace)
    assert placements[0][1] > 10 * placements[-1][1]
    assert users.most_common(1)[0][1] > 20
    assert {a.region for a in trace} == {"eu", "us", "ap"}


def test_budgets_span_the_demand_ratios() -> None:
    for seed in (1, 2, 3):
        cfg = SimConfig(seed=seed, campaigns=16, topics=4)
        specs = generate_campaigns(cfg, generate_trace(cfg))
        ratios = sorted(s.demand_ratio for s in specs)
        assert ratios[0] < 0.75 and ratios[-1] > 3.0
        assert all(0.45 < r < 4.1 for r in ratios)
        constrained = [r for r in ratios if r >= daysim.CONSTRAINED_RATIO]
        assert len(constrained) >= 0.7 * len(ratios)
        assert not [r for r in ratios if 1.1 < r < 1.3]  # nobody sits on the fence
        # campaigns sharing a topic belong to different advertisers and all fit on one page
        for topic in range(cfg.topics):
            members = [s for s in specs if s.topic == topic]
            assert len({s.advertiser for s in members}) == len(members) == daysim.slots_for_topic(cfg, topic)


def test_demand_is_second_price_times_rendered_views() -> None:
    cfg = SimConfig(seed=4)
    trace = generate_trace(cfg)
    specs = generate_campaigns(cfg, trace)
    rendered = Counter(a.topic for a in trace if a.rendered)
    for topic in range(cfg.topics):
        members = sorted((s for s in specs if s.topic == topic), key=lambda s: -s.cpm_micros)
        assert members[-1].price_micros == math.ceil(cfg.reserve_cpm_micros / 1000)
        for hi, lo in itertools.pairwise(members):
            assert hi.price_micros == math.ceil(lo.cpm_micros / 1000)
        for s in members:
            assert s.demand_micros == rendered[topic] * s.price_micros


def test_metric_functions() -> None:
    assert overspend_pct(1_010_000, 1_000_000) == pytest.approx(1.0)
    assert overspend_pct(900_000, 1_000_000) == 0
    assert utilisation_pct(970_000, 1_000_000, 3_000_000) == pytest.approx(97.0)
    assert utilisation_pct(400_000, 1_000_000, 500_000) == pytest.approx(80.0)  # demand-bound
    assert stranded_pct(1_200_000, 1_000_000, 1_000_000) == pytest.approx(20.0)
    assert stranded_pct(None, 5, 10) is None
    plan = plan_fractions()
    assert len(plan) == 24 and plan[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(plan))
    budget = 1_000_000
    on_plan = _hourly_along(plan, budget)
    assert rmse_vs_plan(on_plan, budget) < 1e-3
    # asap: the whole budget in the first hour -> large error
    asap = (budget,) + (0,) * 23
    expected = math.sqrt(statistics.fmean((1 - p) ** 2 for p in plan))
    assert rmse_vs_plan(asap, budget) == pytest.approx(expected)
    assert rmse_vs_plan(asap, budget) > 0.4
    # flat spend when the plan is traffic-shaped
    flat = (budget // 24,) * 24
    assert 0.05 < rmse_vs_plan(flat, budget) < 0.2
    with pytest.raises(ValueError):
        rmse_vs_plan((1, 2, 3), budget)


def _hourly_along(fractions: tuple[float, ...], budget: int) -> tuple[int, ...]:
    cum = [round(f * budget) for f in fractions]
    return tuple(b - a for a, b in zip([0, *cum[:-1]], cum, strict=True))


def _spec(index: int, budget: int, demand: int) -> CampaignSpec:
    return CampaignSpec(index=index, topic=0, advertiser=index, cpm_micros=2_000_000, price_micros=2_000,
                        demand_micros=demand, daily_budget_micros=budget)


def _outcomes() -> list[CampaignOutcome]:
    plan = plan_fractions()
    budget = 1_000_000
    ours = [
        CampaignOutcome("ours", "c1", _spec(1, budget, 3 * budget), _hourly_along(plan, 1_005_000), 1_100_000,
                        1_005_000),
        CampaignOutcome("ours", "c2", _spec(2, budget, 2 * budget), _hourly_along(plan, 980_000)),
        # demand below budget: utilisation and plan tracking not judged on it
        CampaignOutcome("ours", "c3", _spec(3, budget, budget // 2), _hourly_along(plan, 500_000)),
    ]
    linkedin = [
        CampaignOutcome("linkedin", "l1", _spec(1, budget, 3 * budget),
                        tuple([budget // 12] * 12 + [0] * 12)),
        CampaignOutcome("linkedin", "l2", _spec(2, budget, 2 * budget), (budget // 24,) * 24),
    ]
    asap = [CampaignOutcome("asap", "a1", _spec(1, budget, 3 * budget), (1_030_000,) + (0,) * 23)]
    return ours + linkedin + asap


def test_summary_per_controller() -> None:
    s = summarise(_outcomes())
    ours = s["ours"]
    assert ours.campaigns == 3 and ours.constrained_campaigns == 2
    assert ours.max_overspend_pct == pytest.approx(0.5)
    assert ours.overspent_campaigns == 0
    assert ours.mean_utilization_pct == pytest.approx((100.5 + 98.0) / 2)
    assert ours.rmse_vs_plan < 0.02
    assert ours.rmse_vs_plan_all > ours.rmse_vs_plan  # the demand-bound campaign ends at half its budget
    assert ours.max_stranded_pct == pytest.approx(9.5)
    assert s["linkedin"].max_stranded_pct is None
    assert s["asap"].max_overspend_pct == pytest.approx(3.0)
    assert s["asap"].overspent_campaigns == 1
    assert s["asap"].rmse_vs_plan > s["linkedin"].rmse_vs_plan > ours.rmse_vs_plan


def _result(name: str = "baseline") -> daysim.DayResult:
    outcomes = _outcomes()
    fault = daysim.FaultEvent("cut_eu", 0.25, 1000.0 + DAY_S / 4, 1000.0 + DAY_S / 4, 1000.0 + DAY_S / 4)
    return daysim.DayResult(name=name, config=SimConfig(), day_start_v=1000.0, campaigns=outcomes,
                            controllers=summarise(outcomes),
                            traffic={"ad_lag_ms": {"p95": 3.0}, "controllers": {}}, faults=[fault],
                            fault_windows=((0.25, 0.5, "eu cut off"),))


def test_report_json_shape_and_verdicts(tmp_path) -> None:
    results = [_result("baseline"), _result("partition")]
    path = tmp_path / "daysim.json"
    write_report(path, results)
    data = json.loads(path.read_text())
    assert list(data) == ["scenarios"]
    rows = data["scenarios"]
    assert len(rows) == 2 * 3
    for row in rows:
        assert {"name", "controller", "max_overspend_pct", "mean_utilization_pct", "rmse_vs_plan"} <= set(row)
        assert isinstance(row["max_overspend_pct"], float)
    ours = next(r for r in rows if r["controller"] == "ours")
    assert ours["pass"] is True and ours["failed_checks"] == []
    assert next(r for r in rows if r["controller"] == "asap")["pass"] is None
    # too much overspend fails, and says why
    bad = _result()
    bad.controllers["ours"] = replace(bad.controllers["ours"], max_overspend_pct=2.5, mean_utilization_pct=90.0)
    passed, failed = verdict(bad, "ours")
    assert passed is False and len(failed) == 2 and "overspend" in failed[0]
    table = format_table([bad])
    lines = table.splitlines()
    assert "FAIL" in table and len(lines) == 2 + 3
    assert len({line.index("ours") for line in lines if " ours " in line}) == 1


def test_chart_writes_a_png(tmp_path) -> None:
    path = tmp_path / "daysim.png"
    draw_chart(path, [_result("baseline"), _result("partition"), _result("edge killed")])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


# --- the driver, against fake servers -------------------------------------------------------------------


class FakeStack:
    """A control plane and edges in memory: the edges serve every campaign matching the page's keyword (no
    budget at all, so the spend is the demand), bill CPM at the second price on the impression beacon, and
    one edge of region eu dies when the day's traffic starts."""

    def __init__(self, clock: daysim.VirtualClock) -> None:
        self.clock = clock
        self.campaigns: dict[str, dict] = {}
        self.spend: dict[str, Counter[int]] = defaultdict(Counter)  # cid -> hour bucket ms -> micros
        self.seen_imps: set[str] = set()
        self.ads_requests: Counter[str] = Counter()
        self.dead: set[str] = set()
        self.doomed = {"edge-eu-dead"}
        self.clicks = 0
        self.n = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if path == "/v1/ads":
            self.dead |= self.doomed
        if host in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        if host == "cp":
            return self._cp(request, path)
        if path == "/readyz":
            return httpx.Response(200, json={"ready": True, "revisions": dict.fromkeys(self.campaigns, 1)})
        if path == "/v1/ads":
            q = dict(request.url.params)
            self.ads_requests[host] += 1
            matching = sorted((c for c in self.campaigns.values()
                               if q["keywords"] in c["targeting"]["keywords"]), key=lambda c: -c["max_bid_micros"])
            if not matching:
                return httpx.Response(204)
            ads = []
            for rank, c in enumerate(matching[: int(q["slots"])]):
                runner = matching[rank + 1]["max_bid_micros"] if rank + 1 < len(matching) else 100_000
                price = math.ceil(runner / 1000)
                self.n += 1
                base = f"http://{host}"
                ads.append({"campaign_id": c["id"], "ad_id": f"a{self.n}",
                            "impression_url": f"{base}/v1/track/impression?t={c['id']}.{self.n}.{price}",
                            "click_url": f"{base}/v1/track/click?t={c['id']}.{self.n}"})
            return httpx.Response(200, json={"auction_id": "x", "ads": ads})
        if path == "/v1/track/impression":
            token = request.url.params["t"]
            cid, _, price = token.split(".")
            if token not in self.seen_imps:
                self.seen_imps.add(token)
                hour_ms = int(self.clock.now() // 3600 * 3600 * 1000)
                self.spend[cid][hour_ms] += int(price)
            return httpx.Response(204)
        if path == "/v1/track/click":
            self.clicks += 1
            return httpx.Response(302, headers={"location": "https://shop.example.com/"})
        return httpx.Response(404)

    def _cp(self, request: httpx.Request, path: str) -> httpx.Response:
        parts = path.strip("/").split("/")
        if path == "/v1/campaigns" and request.method == "POST":
            body = json.loads(request.content)
            assert body["timezone"] == "UTC" and body["total_budget_micros"] > body["daily_budget_micros"]
            cid = f"cmp{len(self.campaigns)}"
            self.campaigns[cid] = {**body, "id": cid, "status": "draft"}
            return httpx.Response(201, json=self.campaigns[cid])
        if len(parts) == 4 and parts[3] == "submit":
            self.campaigns[parts[2]]["status"] = "active"
            return httpx.Response(200, json=self.campaigns[parts[2]])
        if len(parts) == 4 and parts[3] == "metrics":
            q = parse_qs(urlsplit(str(request.url)).query)
            lo, hi = int(q["from"][0]), int(q["to"][0])
            series = [{"bucket_start_ms": b, "spend_micros": v} for b, v in sorted(self.spend[parts[2]].items())
                      if lo <= b < hi]
            return httpx.Response(200, json={"totals": {}, "series": series, "budget": {}})
        if path == "/v1/admin/stats":
            return httpx.Response(200, json={"store": {}})  # no "budget": stranded is unknown
        return httpx.Response(404)


def test_run_day_against_fake_servers() -> None:
    speed = DAY_S / 2.0  # a virtual day in two real seconds
    # Demand up to 12 times a budget: half the traffic finds no edge (ap has none, us none after mid-day) and
    # a loaded machine serves fewer of the compressed day's views, yet the top campaign must still end well
    # over its budget (with the default 4x it ended barely over, and on a busy machine sometimes not at all).
    cfg = SimConfig(seed=9, speed=speed, peak_views_per_s=150.0, controllers=("ours", "asap"), campaigns=4,
                    topics=2, beacon_retry_wait_s=0.01, drain_timeout_s=5.0, ratio_hi=12.0)
    day_start_v = 1_900_000_000 // DAY_S * DAY_S + DAY_S
    clock = daysim.VirtualClock(r0=time.time(), v0=day_start_v - 0.4 * speed, speed=speed)
    fake = FakeStack(clock)
    edges = {"eu": ["http://edge-eu-dead", "http://edge-eu-1"], "us": ["http://edge-us-1"], "ap": []}
    fired: list[float] = []

    async def kill_us() -> None:
        fired.append(clock.now())
        edges["us"] = []

    settled = []

    async def settle() -> None:
        settled.append(True)

    result = asyncio.run(daysim.run_day(
        cfg, name="fake", edges=edges, cp_url="http://cp", tokens=["t1", "t2"], admin_token="adm",
        clock=clock, day_start_v=day_start_v, faults=[(0.5, kill_us)], fault_windows=[(0.5, 1.0, "us gone")],
        settle=settle, progress=False, transport=httpx.MockTransport(fake)))

    trace = generate_trace(cfg)
    assert settled == [True]
    assert len(fake.campaigns) == 4 * 2
    assert {c["pacing"] for c in fake.campaigns.values()} == {"even", "asap"}
    # the fault ran at mid-day, virtual time
    assert len(result.faults) == 1 and result.faults[0].name == "kill_us"
    assert abs(fired[0] - (day_start_v + DAY_S / 2)) < 0.1 * DAY_S
    t = result.traffic
    ours = t["controllers"]["ours"]
    assert ours["page_views"] == len(trace)
    # eu's dead edge: retried on the live one; ap has none, us none after mid-day
    assert fake.ads_requests["edge-eu-1"] == 2 * sum(1 for a in trace if a.region == "eu")
    no_edge = sum(1 for a in trace if a.region == "ap" or (a.region == "us" and a.t_s >= DAY_S / 2))
    assert abs(t["no_edge"] - 2 * no_edge) <= 2 * 60  # around mid-day the fault's exact moment varies a little
    assert ours["retries"] > 0 and ours["conn_errors"] > 0
    assert ours["impressions"] > 0 and ours["impressions_failed"] <= 5
    assert fake.clicks > 0
    assert t["ad_lag_ms"]["p95"] < 500
    # the fake edges never stop a campaign, so each spends its demand over the served regions' traffic
    assert {o.controller for o in result.campaigns} == {"ours", "asap"}
    for o in result.campaigns:
        assert o.stranded_pct is None
        assert o.spend > 0
    s = result.controllers["ours"]
    assert s.max_overspend_pct > 0 and s.max_stranded_pct is None
    assert json.dumps(result.as_dict())


def test_realized_demand_prices_each_campaign_against_the_lower_bidders_that_really_served() -> None:
    """Three campaigns on one topic bid 5, 3 and 1 (CPM units). When all serve, the top pays 3 and the middle
    1 per thousand; when the middle one is paced out, the top's price falls to the lowest bid, and with no
    one else serving, to the reserve. The generator's nominal demand would have kept the top at 3."""
    cfg = SimConfig(reserve_cpm_micros=100_000)
    specs = [CampaignSpec(index=i, topic=0, advertiser=i, cpm_micros=bid, price_micros=0, demand_micros=0,
                          daily_budget_micros=1) for i, bid in enumerate((5_000_000, 3_000_000, 1_000_000))]
    live = [daysim.LiveCampaign(spec, "ours", f"c{spec.index}", "t") for spec in specs]
    driver = daysim.DayDriver(cfg, [], client=None, edges={}, clock=daysim.VirtualClock(0, 0, cfg.speed),  # type: ignore[arg-type]
                              day_start_v=0, live=live)
    view = daysim.Arrival(0, "eu", 0, "p", "u", "desktop", 0, True, (False,) * 3, (1.0,) * 3, (1.0,) * 3)
    driver._realized_demand(view, "ours", [{"campaign_id": "c0"}, {"campaign_id": "c1"}, {"campaign_id": "c2"}])
    assert [driver.stats.realized_demand[("ours", i)] for i in range(3)] == [3_000, 1_000, 100]
    driver._realized_demand(view, "ours", [{"campaign_id": "c0"}, {"campaign_id": "c2"}])  # the middle paced
    assert driver.stats.realized_demand[("ours", 0)] == 3_000 + 1_000
    driver._realized_demand(view, "ours", [])  # nobody served (no fill): each alone would pay the reserve
    assert [driver.stats.realized_demand[("ours", i)] for i in range(3)] == [4_100, 2_100, 300]
    unrendered = replace(view, rendered=False)
    driver._realized_demand(unrendered, "ours", [])
    assert driver.stats.realized_demand[("ours", 0)] == 4_100
    # A campaign that served counts what it really paid, read from its beacon's token (here 2,500: a
    # runner-up that ranked but could not afford a slot set it, which the response does not show).
    keys = SigningKeys("k1", {"k1": b"x" * 32})
    url = f"https://edge/v1/track/impression?t={sign({'px': 2_500, 'k': 'i', 'exp': 9}, keys)}"
    driver._realized_demand(view, "ours", [{"campaign_id": "c0", "impression_url": url}])
    assert driver.stats.realized_demand[("ours", 0)] == 4_100 + 2_500
    assert daysim.token_price("https://edge/v1/track/impression?t=garbage") is None
