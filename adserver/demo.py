"""``adserver demo``: the whole path on one machine, with numbers.

Starts a real nats-server, the control plane with its collector on an embedded chdb, and an edge PoP per
region; creates advertisers and campaigns through the public API (one with a budget small enough to run
out); measures how long a campaign change takes to reach every PoP; drives publisher traffic over HTTP;
waits until the collector has stored every published event; then prints (and optionally writes) a summary
with spend read back from ClickHouse. Every process it started is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from adserver.stack import LocalStack
from loadtest.traffic import drive

CREATIVE = {
    "image_url": "https://cdn.example.com/ads/{slug}.png",
    "landing_url": "https://{slug}.example.com/landing?utm_source=edge-adserver",
}


def _creative(slug: str, headline: str, size: str = "300x250", ctr: float = 0.02) -> dict[str, Any]:
    return {"headline": headline, "size": size, "cta": "Shop now", "prior_ctr": ctr,
            "image_url": CREATIVE["image_url"].format(slug=slug),
            "landing_url": CREATIVE["landing_url"].format(slug=slug)}


def demo_campaigns() -> list[tuple[int, dict[str, Any]]]:
    """(advertiser index, campaign body). Budgets in micros; the last one is meant to run out."""
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    # asap: the demo drives under a minute of traffic, and shows delivery and a budget running out; pacing a
    # budget over a day is what `adserver simulate` shows, on a compressed clock.
    base = {"start": start, "timezone": "UTC", "objective": "traffic", "pacing": "asap"}
    return [
        (0, {**base, "name": "Acme running shoes", "bid_type": "cpm", "max_bid_micros": 4_000_000,
             "daily_budget_micros": 40_000_000, "total_budget_micros": 400_000_000,
             "targeting": {"keywords": ["shoes", "running", "football"]},
             "creatives": [_creative("acme", "Run faster in Acme"), _creative("acme-lb", "Acme", "728x90")]}),
        (0, {**base, "name": "Acme US clicks", "bid_type": "cpc", "max_bid_micros": 500_000,
             "daily_budget_micros": 20_000_000, "total_budget_micros": 100_000_000,
             "targeting": {"countries": ["US"]},
             "creatives": [_creative("acme-us", "Acme ships free in the US", ctr=0.01)]}),
        (1, {**base, "name": "Globetrotter Europe", "bid_type": "cpm", "max_bid_micros": 3_000_000,
             "daily_budget_micros": 30_000_000, "total_budget_micros": 300_000_000,
             "targeting": {"geos": ["DE-BE", "FR-IDF", "GB-LND"]},
             "creatives": [_creative("globe", "Weekend in Lisbon from 99"),
                           _creative("globe-lb", "Fly further", "728x90")]}),
        (1, {**base, "name": "Globetrotter bookings", "bid_type": "cpa", "max_bid_micros": 15_000_000,
             "prior_cvr": 0.05, "objective": "conversions",
             "daily_budget_micros": 25_000_000, "total_budget_micros": 100_000_000,
             "creatives": [_creative("globe-book", "Book now, pay later", ctr=0.012)]}),
        (1, {**base, "name": "Globetrotter mobile flash sale (small budget)", "bid_type": "cpm",
             "max_bid_micros": 6_000_000, "daily_budget_micros": 300_000, "total_budget_micros": 300_000,
             "targeting": {"devices": ["mobile"]},
             "creatives": [_creative("flash", "48-hour flash sale")]}),
    ]


async def _seed(stack: LocalStack, tokens: list[str]) -> list[dict[str, Any]]:
    created = []
    async with httpx.AsyncClient(base_url=stack.cp_url, timeout=10) as client:
        for advertiser, body in demo_campaigns():
            headers = {"Authorization": f"Bearer {tokens[advertiser]}"}
            r = await client.post("/v1/campaigns", json=body, headers=headers)
            r.raise_for_status()
            campaign = r.json()
            r = await client.post(f"/v1/campaigns/{campaign['id']}/submit", headers=headers)
            r.raise_for_status()
            approved = r.json()
            if approved["status"] != "active":
                raise RuntimeError(f"demo campaign not approved: {approved['review']}")
            created.append({**approved, "_token": tokens[advertiser]})
    return created


async def _wait_revision(edges: list[str], campaign_id: str, revision: int, limit_s: float) -> float:
    """Seconds until every edge serves the campaign at >= revision (polls /readyz every 5 ms)."""
    started = time.perf_counter()
    pending = set(edges)
    async with httpx.AsyncClient(timeout=2) as client:
        while pending:
            if time.perf_counter() - started > limit_s:
                raise TimeoutError(f"{sorted(pending)} did not get revision {revision} of {campaign_id}")
            for url in list(pending):
                r = await client.get(f"{url}/readyz")
                if r.status_code == 200 and r.json()["revisions"].get(campaign_id, -1) >= revision:
                    pending.discard(url)
            if pending:
                await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def measure_propagation(stack: LocalStack, campaign: dict[str, Any], rounds: int = 5) -> list[float]:
    """Time from a PATCH request being sent to every PoP serving the new revision, in ms."""
    edges = [e.url for e in stack.edges]
    headers = {"Authorization": f"Bearer {campaign['_token']}"}
    results = []
    async with httpx.AsyncClient(base_url=stack.cp_url, timeout=10) as client:
        for i in range(rounds):
            t0 = time.perf_counter()
            r = await client.patch(f"/v1/campaigns/{campaign['id']}", headers=headers,
                                   json={"max_bid_micros": campaign["max_bid_micros"] + i + 1})
            r.raise_for_status()
            waited = await _wait_revision(edges, campaign["id"], r.json()["revision"], limit_s=10)
            results.append((time.perf_counter() - t0) * 1000 if waited >= 0 else 0.0)
            await asyncio.sleep(0.2)
    return results


async def measure_freshness(stack: LocalStack, campaign: dict[str, Any], probes: int = 15) -> list[float]:
    """Edge beacon -> reporting API: fire one impression, poll the campaign's metrics until it shows, in ms."""
    headers = {"Authorization": f"Bearer {campaign['_token']}"}
    metrics_url = f"{stack.cp_url}/v1/campaigns/{campaign['id']}/metrics?granularity=minute"
    out = []
    async with httpx.AsyncClient(timeout=10) as client:

        async def stored() -> int:
            return int((await client.get(metrics_url, headers=headers)).json()["totals"].get("impressions", 0))

        for i in range(probes):
            edge = stack.edges[i % len(stack.edges)].url
            r = await client.get(f"{edge}/v1/ads", params={"placement": "freshness", "format": "300x250",
                                                          "keywords": "shoes", "geo": "DE-BE"})
            ours = [a for a in r.json()["ads"] if a["campaign_id"] == campaign["id"]] if r.status_code == 200 else []
            if not ours:
                continue
            before = await stored()
            t0 = time.perf_counter()
            await client.get(ours[0]["impression_url"])
            while await stored() <= before:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError("an impression did not reach the reports within 30 s")
                await asyncio.sleep(0.02)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def run_demo(*, duration_s: float, concurrency: int, report: str | None, data_dir: str | None,
             seed: int, serve: bool = False) -> int:
    t_start = time.monotonic()
    print("starting nats-server, control plane (collector on chdb) and edge PoPs for regions eu, us ...",
          file=sys.stderr)
    with LocalStack(data_dir=Path(data_dir) if data_dir else None) as stack:
        tokens = [stack.create_advertiser("Acme Sports")[1], stack.create_advertiser("Globetrotter Travel")[1]]
        campaigns = asyncio.run(_seed(stack, tokens))
        print(f"created {len(campaigns)} campaigns through the API; measuring propagation ...", file=sys.stderr)
        first = asyncio.run(_wait_revision([e.url for e in stack.edges], campaigns[-1]["id"],
                                           campaigns[-1]["revision"], limit_s=10))
        propagation = asyncio.run(measure_propagation(stack, campaigns[0]))
        traffic = asyncio.run(drive([e.url for e in stack.edges], duration_s=duration_s,
                                    concurrency=concurrency, seed=seed))
        print("waiting for the collector to store every published event ...", file=sys.stderr)
        _, in_stream, stats = stack.wait_stored(timeout=60, every=0.5)
        published, _ = stack.edge_events()
        freshness = sorted(asyncio.run(measure_freshness(stack, campaigns[0])))
        spend = stats["spend_micros"]
        by_type = stats["store"]["by_type"]
        rows = []
        for c in campaigns:
            budget = min(c["daily_budget_micros"], c["total_budget_micros"])
            spent = int(spend.get(c["id"], 0))
            rows.append({"campaign_id": c["id"], "name": c["name"], "bid_type": c["bid_type"],
                         "budget_micros": budget, "spend_micros": spent,
                         "spend_pct_of_budget": round(100 * spent / budget, 2),
                         "ads_served": traffic.campaigns_served.get(c["id"], 0)})
        summary: dict[str, Any] = {
            "requests": traffic.requests,
            "fills": traffic.fills,
            "fill_rate": round(traffic.fills / traffic.requests, 4) if traffic.requests else 0,
            "ads": traffic.ads,
            "errors": traffic.errors,
            "p50_ms": round(traffic.percentile(0.50), 2),
            "p99_ms": round(traffic.percentile(0.99), 2),
            "requests_per_s": round(traffic.requests / duration_s, 1),
            "impressions": int(by_type.get("impression", 0)),
            "clicks": int(by_type.get("click", 0)),
            "conversions": int(by_type.get("conversion", 0)),
            "sent": {"impressions": traffic.impressions, "replayed_impressions": traffic.replays,
                     "clicks": traffic.clicks, "conversions": traffic.conversions},
            "events_published": published,
            "events_in_jetstream": in_stream,
            "events_stored": stats["store"]["unique_events"],
            "rows_stored": stats["store"]["rows"],
            "duplicates_stored": stats["store"]["duplicates"],
            "propagation_ms": round(max(propagation), 1),
            "propagation_ms_rounds": [round(p, 1) for p in propagation],
            "propagation_ms_median": round(statistics.median(propagation), 1),
            "first_activation_ms": round(first * 1000, 1),
            "freshness_ms_p50": round(freshness[len(freshness) // 2], 1) if freshness else None,
            "freshness_ms_max": round(freshness[-1], 1) if freshness else None,
            "snapshot": stats["snapshot"],
            "campaigns": rows,
        }
        code = _finish(summary, rows, replays=traffic.replays, in_stream=in_stream, probes=len(freshness),
                       report=report, t_start=t_start)
        if serve:
            _serve(stack, tokens)
    return code


def _serve(stack: LocalStack, tokens: list[str]) -> None:
    """Keep the stack up for a person (or a locust run) until Ctrl-C."""
    print("\nthe stack stays up until Ctrl-C:")
    for edge in stack.edges:
        print(f"  edge {edge.region}: {edge.url}  (publisher page: {edge.url}/demo/publisher)")
    print(f"  control plane and dashboard: {stack.cp_url}/")
    for i, token in enumerate(tokens):
        print(f"  advertiser {i + 1} token: {token}")
    print(f"  NATS: {stack.nats_url}")
    sys.stdout.flush()
    try:
        while all(p.alive() for p in stack.group.procs if p.name.startswith(("edge", "control", "nats"))):
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _finish(summary: dict[str, Any], rows: list[dict[str, Any]], *, replays: int, in_stream: int, probes: int,
            report: str | None, t_start: float) -> int:
    checks = {
        # Every event the hub's JetStream holds (one per event id) is stored; the edges' own count can be
        # higher when a beacon was replayed at another region's PoP (both regional streams take it, the
        # hub keeps one).
        "events_stored == events_in_jetstream": summary["events_stored"] == summary["events_in_jetstream"],
        "duplicates_stored == 0": summary["duplicates_stored"] == 0,
        "every campaign spend <= 105% of budget": all(r["spend_pct_of_budget"] <= 105 for r in rows),
    }
    summary["checks"] = checks
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    print("\nedge-adserver demo summary")
    print(_table([
        ("ad requests", f"{summary['requests']} ({summary['requests_per_s']}/s, fill rate "
                        f"{summary['fill_rate'] * 100:.1f}%)"),
        ("latency p50 / p99", f"{summary['p50_ms']} ms / {summary['p99_ms']} ms (client side, over HTTP)"),
        ("impressions / clicks / conversions stored",
         f"{summary['impressions']} / {summary['clicks']} / {summary['conversions']}"),
        ("events in JetStream / stored", f"{in_stream} / {summary['events_stored']} "
                                         f"(edges had {summary['events_published']} acknowledged)"),
        ("duplicates stored", f"{summary['duplicates_stored']} "
                              f"({replays} impression beacons replayed on purpose)"),
        ("propagation API write -> all PoPs", f"max {summary['propagation_ms']} ms, "
                                              f"median {summary['propagation_ms_median']} ms"),
        ("freshness beacon -> report", f"median {summary['freshness_ms_p50']} ms, "
                                       f"max {summary['freshness_ms_max']} ms ({probes} probes)"),
    ]))
    print("\n  campaign                                           bid   budget $   spent $   spent %")
    for r in rows:
        print(f"  {r['name'][:48]:<48}  {r['bid_type']:>5}  {r['budget_micros'] / 1e6:8.2f}  "
              f"{r['spend_micros'] / 1e6:8.2f}  {r['spend_pct_of_budget']:7.1f}")
    print()
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"\n  finished in {summary['wall_s']} s")
    if report:
        Path(report).write_text(json.dumps(summary, indent=2))
        print(f"  report written to {report}")
    return 0 if all(checks.values()) else 1
