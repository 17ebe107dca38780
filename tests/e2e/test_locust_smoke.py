"""The locust scenarios, run the way an SRE runs them: headless, bounded, against real processes.

A LocalStack (nats-server, control plane with its collector on chdb, one edge PoP) gets advertisers and
active campaigns through the API; then two locust processes run side by side for a short, bounded time: the
publisher scenario under the SRE load shape (warm-up, spike, soak, ramp-down) against the edge, and the
advertiser scenario against the control plane. The run passes when locust saw no failure, every endpoint
carried real traffic, the shape's user counts were followed, and ClickHouse ends up holding exactly the
beacons locust sent — each once, no duplicates.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adserver.stack import LocalStack
from loadtest.results import (
    endpoint,
    format_history,
    format_table,
    read_csv_stats,
    read_failures,
    read_final_stats,
    read_history,
    total,
)
from loadtest.run_locust import advertiser_run, publisher_run, run_all

pytestmark = pytest.mark.e2e

SHAPE_SECONDS = 15  # the whole publisher profile; the advertiser run lasts as long
PEAK_USERS = 12
ADVERTISER_USERS = 3
# A smoke run is short: raise the click and conversion rates so every endpoint sees traffic.
PUBLISHER_ENV = {"ADSERVER_LOCUST_CLICK_RATE": "0.06", "ADSERVER_LOCUST_CONVERSION_RATE": "0.5",
                 "ADSERVER_LOCUST_SEED": "7", "ADSERVER_LOCUST_WAIT": "0.02,0.2"}
ADVERTISER_ENV = {"ADSERVER_LOCUST_ADVERTISER_WAIT": "0.2,0.8", "ADSERVER_LOCUST_SEED": "7"}
BEACONS = {"/v1/track/impression": "impression", "/v1/track/viewable": "viewable", "/v1/track/click": "click",
           "/v1/track/conversion": "conversion"}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(regions=("eu",)) as s:
        yield s


def api(stack: LocalStack, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, stack.cp_url + path, json=body, headers={"Authorization": f"Bearer {token}"},
                         timeout=10)


def campaign(name: str, targeting: dict[str, Any] | None, bid_type: str = "cpm",
             max_bid_micros: int = 3_000_000) -> dict[str, Any]:
    slug = name.replace(" ", "-")
    # Budgets far above what a 15-second run spends, and asap pacing: fill must not depend on pacing here.
    return {
        "name": name, "bid_type": bid_type, "max_bid_micros": max_bid_micros, "pacing": "asap",
        "daily_budget_micros": 500_000_000, "total_budget_micros": 5_000_000_000,
        "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "timezone": "UTC",
        "targeting": targeting,
        "creatives": [
            {"headline": f"{name} deals", "cta": "Shop now", "size": size,
             "image_url": f"https://cdn.example.com/{slug}-{size}.png",
             "landing_url": f"https://{slug}.example.com/landing?ref=ad"}
            for size in ("300x250", "728x90")
        ],
    }


def launch(stack: LocalStack, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api(stack, "POST", "/v1/campaigns", token, body)
    assert r.status_code == 201, r.text
    r = api(stack, "POST", f"/v1/campaigns/{r.json()['id']}/submit", token)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    return r.json()


def wait_filling(edge_url: str, campaign_ids: set[str], timeout: float = 15) -> None:
    """Until every campaign is in the edge's snapshot and it has served an ad (its first budget grant)."""
    deadline = time.monotonic() + timeout
    while True:
        revisions = httpx.get(f"{edge_url}/readyz", timeout=5).json()["revisions"]
        if campaign_ids <= set(revisions):
            r = httpx.get(f"{edge_url}/v1/ads", timeout=5,
                          params={"placement": "warmup", "format": "300x250", "slots": "3", "keywords": "shoes"})
            if r.status_code == 200:
                return
        assert time.monotonic() < deadline, f"edge never filled; snapshot holds {sorted(revisions)}"
        time.sleep(0.05)


def wait_stored(stack: LocalStack, timeout: float = 60) -> dict[str, Any]:
    """Poll until the collector has stored every event the edges published; the admin stats then."""
    caught_up, published, stats = stack.wait_stored(timeout, every=0.25)
    store = stats["store"]
    assert caught_up, f"stored {store} != published {published}"
    return store


def test_locust_scenarios_run_clean_and_every_beacon_they_send_is_stored_once(
        stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    owners = [stack.create_advertiser(f"Serving advertiser {i}")[1] for i in range(3)]
    served = [
        launch(stack, owners[0], campaign("acme shoes", {"keywords": ["shoes", "running", "football"]})),
        launch(stack, owners[1], campaign("globetrotter", {"keywords": ["travel", "finance", "news"]},
                                          max_bid_micros=2_500_000)),
        launch(stack, owners[1], campaign("globetrotter clicks", None, bid_type="cpc", max_bid_micros=400_000)),
        launch(stack, owners[2], campaign("run of network", None, max_bid_micros=1_500_000)),
    ]
    edge = stack.edges[0].url
    wait_filling(edge, {c["id"] for c in served})
    before = wait_stored(stack)
    # The advertiser scenario gets advertisers of its own: its pauses must not starve the publisher run.
    locust_tokens = [stack.create_advertiser(f"Locust advertiser {i}")[1] for i in range(2)]

    out = tmp_path / "locust"
    runs = [
        publisher_run(edge, out, users=PEAK_USERS, run_time=f"{SHAPE_SECONDS}s", shape=True, env=PUBLISHER_ENV),
        advertiser_run(stack.cp_url, out, locust_tokens, users=ADVERTISER_USERS, run_time=f"{SHAPE_SECONDS}s",
                       env=ADVERTISER_ENV),
    ]
    finished = run_all(runs, grace_s=45)
    for done in finished:  # a locust that crashed or hung has no final stats: say why, with its log
        assert Path(f"{done.run.csv_prefix}.json").exists(), (done.run.name, done.returncode, done.log_tail())
    # The final stats locust writes at exit (--json-file): its CSV can miss the last second (see results.py).
    publisher, advertiser = (read_final_stats(run.csv_prefix) or [] for run in runs)
    history = read_history(runs[0].csv_prefix)
    csv_requests = total(read_csv_stats(runs[0].csv_prefix)).requests
    with capsys.disabled():  # shown even under -q, so a run's numbers can be quoted
        print(f"\n\n{format_table(publisher, 'locust publisher scenario + SRE shape, one edge PoP')}")
        print(f"shape: {format_history(history)}")
        print(f"(locust's once-a-second CSV holds {csv_requests} of these {total(publisher).requests} requests)")
        print(f"\n{format_table(advertiser, f'locust advertiser scenario, {ADVERTISER_USERS} users')}")

    for done in finished:
        failures = read_failures(done.run.csv_prefix)
        assert not done.timed_out and done.returncode == 0, (done.run.name, done.returncode, failures,
                                                              done.log_tail())
        assert failures == [], failures
    assert total(publisher).failures == 0 and total(advertiser).failures == 0

    # Every publisher endpoint carried real traffic.
    assert endpoint(publisher, "/v1/ads").requests >= 300
    assert endpoint(publisher, "/v1/track/impression").requests >= 200
    assert endpoint(publisher, "/v1/track/viewable").requests >= 100
    assert endpoint(publisher, "/v1/track/click").requests >= 5
    assert endpoint(publisher, "/v1/track/conversion").requests >= 1
    assert endpoint(publisher, "/tag.js").requests >= 1
    # Every advertiser call was made (3 users on 2 tokens: two of them edit the same campaigns, and a 409 on
    # a stale revision counts as the success it is).
    for method, name in [("GET", "/v1/campaigns"), ("POST", "/v1/campaigns"), ("POST", "/v1/campaigns/{id}/submit"),
                         ("GET", "/v1/campaigns/{id}"), ("PATCH", "/v1/campaigns/{id}"),
                         ("GET", "/v1/campaigns/{id}/metrics")]:
        assert endpoint(advertiser, name, method).requests >= 1, (method, name)
    assert sum(s.requests for s in advertiser if s.name.endswith(("/pause", "/resume"))) >= 1

    # The shape was followed, stage by stage (its log; the once-a-second history can step over a short
    # stage), locust reached each level before the next stage began (the last, a gentle ramp-down, may be cut
    # short by the end of the run), and the shape ended the run by itself within its time (plus the stop
    # timeout that lets requests in flight finish).
    log = runs[0].log_path.read_text()
    stages = re.findall(r"stage (\S+): (\d+) users", log)
    assert stages == [("warm-up", "4"), ("spike", str(PEAK_USERS)), ("soak", "6"), ("ramp-down", "1")], stages
    reached = [int(n) for n in re.findall(r"All users spawned: .* \((\d+) total users\)", log)]
    assert reached[:3] == [4, PEAK_USERS, 6], reached
    assert "Shape test stopping" in log
    assert SHAPE_SECONDS - 2 <= history[-1].timestamp - history[0].timestamp <= SHAPE_SECONDS + 12, history

    # What the system stored is exactly what locust sent: one event per beacon, no duplicate anywhere.
    after = wait_stored(stack)
    assert after["duplicates"] == 0
    for name, kind in BEACONS.items():
        sent = endpoint(publisher, name).requests
        stored = after["by_type"][kind] - before["by_type"][kind]
        assert stored == sent, f"{kind}: locust sent {sent}, ClickHouse holds {stored}"
    decisions = after["by_type"]["decision"] - before["by_type"]["decision"]
    assert decisions >= endpoint(publisher, "/v1/track/impression").requests
    grown = {kind: after["by_type"][kind] - before["by_type"][kind] for kind in after["by_type"]}
    with capsys.disabled():
        print(f"\nstored: {after['unique_events'] - before['unique_events']} new unique events {grown}, "
              f"duplicates {after['duplicates']}; test took {time.monotonic() - started:.1f}s")
