"""Frequency caps end to end: the campaign API takes caps, the snapshot carries them, the edge counts a
consenting user's rendered impressions in the region's real Redis and stops serving a capped campaign (or a
capped creative) to that user, on every PoP of the region. Users without consent are never capped. With
Redis down, a fail-open PoP serves as if nothing were capped and a fail-closed one leaves capped campaigns
out; both count the failures."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from redis_stack import stack_with_redis  # tests/e2e/redis_stack.py (this directory is on sys.path)

from adserver.processes import Proc, wait_ready
from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Proc]]:
    with stack_with_redis(tmp_path_factory.mktemp("redis")) as (s, redis):
        try:
            s.edge_env = {**s.edge_env, "ADSERVER_EDGE_FREQUENCY_FAIL_OPEN": "false"}
            closed = s.start_edge("eu", "pop2")
            wait_ready(f"{closed.url}/readyz", closed.proc, timeout=60)
            yield s, redis
        finally:
            if redis.alive():
                os.kill(redis.popen.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM


def ads(edge_url: str, keyword: str, user: str | None = None, **extra: str) -> list[dict[str, Any]]:
    params = {"placement": "fc", "format": "300x250", "keywords": keyword, **extra}
    if user:
        params["user"] = user
    r = httpx.get(f"{edge_url}/v1/ads", params=params, timeout=5)
    assert r.status_code in (200, 204), r.text
    return r.json()["ads"] if r.status_code == 200 else []


def shown(edge_url: str, keyword: str, user: str | None = None, **extra: str) -> tuple[str, str]:
    """Ask for one ad, render it, and say which campaign and creative it was."""
    ad = ads(edge_url, keyword, user, **extra)[0]
    assert httpx.get(ad["impression_url"], timeout=5).status_code == 204
    return ad["campaign_id"], ad["creative"]["id"]


def until_capped(edge_url: str, keyword: str, user: str, campaign_id: str, timeout_s: float = 5) -> str:
    """The impression is counted in the background: ask until the capped campaign stops coming."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = ads(edge_url, keyword, user)
        if got and got[0]["campaign_id"] != campaign_id:
            return got[0]["campaign_id"]
        assert time.monotonic() < deadline, f"{campaign_id} still served to {user} after its cap"
        time.sleep(0.05)


def metric(edge_url: str, op: str, result: str) -> float:
    text = httpx.get(f"{edge_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'adserver_profile_store_total{{op="{op}",result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def capped_and_fallback(s: LocalStack, keyword: str, *, max_impressions: int) -> tuple[str, str]:
    """Two advertisers' campaigns on one keyword: the higher bidder capped per hour, the other not."""
    capped = s.launch_campaign(s.create_advertiser(f"Capped {keyword}")[1], keyword, max_bid_micros=5_000_000,
                               frequency_caps=[{"max_impressions": max_impressions, "window_minutes": 60}])
    fallback = s.launch_campaign(s.create_advertiser(f"Fallback {keyword}")[1], keyword, max_bid_micros=1_000_000)
    return capped, fallback


def test_a_campaign_cap_stops_serving_that_user_on_every_pop(stack: tuple[LocalStack, Proc]) -> None:
    s, _ = stack
    capped, fallback = capped_and_fallback(s, "fcshoes", max_impressions=2)
    pop1, pop2 = s.edges[0].url, s.edges[1].url
    assert shown(pop1, "fcshoes", "alice")[0] == capped
    assert shown(pop2, "fcshoes", "alice")[0] == capped  # the region's Redis counts both PoPs' impressions
    assert until_capped(pop1, "fcshoes", "alice", capped) == fallback
    assert ads(pop2, "fcshoes", "alice")[0]["campaign_id"] == fallback
    # Another user, and a user without consent (no user id, or GPC), still get the capped campaign.
    assert ads(pop1, "fcshoes", "bob")[0]["campaign_id"] == capped
    for _ in range(3):
        assert shown(pop1, "fcshoes")[0] == capped
    assert ads(pop1, "fcshoes", "alice", gpc="1")[0]["campaign_id"] == capped
    assert metric(pop1, "read", "ok") > 0 and metric(pop1, "record", "ok") > 0


def test_a_creative_cap_rotates_to_the_campaigns_other_creative(stack: tuple[LocalStack, Proc]) -> None:
    s, _ = stack
    token = s.create_advertiser("Rotating")[1]
    creative = {"size": "300x250", "image_url": "https://img.example.com/a.png",
                "landing_url": "https://shop.example.com/"}
    cid = s.launch_campaign(token, "fchats", max_bid_micros=3_000_000,
                            creatives=[{**creative, "headline": "first", "prior_ctr": 0.05},
                                       {**creative, "headline": "second", "prior_ctr": 0.01}],
                            frequency_caps=[{"scope": "creative", "max_impressions": 1, "window_minutes": 60}])
    pop1 = s.edges[0].url
    first = shown(pop1, "fchats", "carol")
    assert first[0] == cid
    deadline = time.monotonic() + 5
    while (second := ads(pop1, "fchats", "carol")[0])["creative"]["id"] == first[1]:
        assert time.monotonic() < deadline, "the capped creative kept being served"
        time.sleep(0.05)
    assert second["campaign_id"] == cid and second["creative"]["headline"] == "second"
    assert httpx.get(second["impression_url"], timeout=5).status_code == 204
    deadline = time.monotonic() + 5
    while ads(pop1, "fchats", "carol"):  # both creatives capped: nothing else targets this keyword
        assert time.monotonic() < deadline, "a campaign with every creative capped was still served"
        time.sleep(0.05)


def test_bad_caps_are_refused_naming_the_field(stack: tuple[LocalStack, Proc]) -> None:
    s, _ = stack
    token = s.create_advertiser("Sloppy")[1]
    r = httpx.post(f"{s.cp_url}/v1/campaigns", headers={"Authorization": f"Bearer {token}"}, timeout=10, json={
        "name": "x", "bid_type": "cpm", "max_bid_micros": 1_000_000, "daily_budget_micros": 10**9,
        "total_budget_micros": 10**9, "timezone": "UTC", "start": datetime.now(UTC).isoformat(),
        "frequency_caps": [{"max_impressions": 0, "window_minutes": 60}]})
    assert r.status_code == 422
    assert "frequency_caps[0].max_impressions" in r.text


def test_with_redis_down_fail_open_serves_and_fail_closed_leaves_capped_campaigns_out(
        stack: tuple[LocalStack, Proc]) -> None:
    """Last in the module: it freezes the shared Redis."""
    s, redis = stack
    capped, fallback = capped_and_fallback(s, "fcsocks", max_impressions=5)
    pop_open, pop_closed = s.edges[0].url, s.edges[1].url
    failed_open, failed_closed = metric(pop_open, "read", "failed"), metric(pop_closed, "read", "failed")
    os.kill(redis.popen.pid, signal.SIGSTOP)
    try:
        assert ads(pop_open, "fcsocks", "dave")[0]["campaign_id"] == capped
        assert ads(pop_closed, "fcsocks", "dave")[0]["campaign_id"] == fallback
        # Without a user id nothing is looked up, so nothing fails: the capped campaign serves everywhere.
        assert ads(pop_closed, "fcsocks")[0]["campaign_id"] == capped
    finally:
        os.kill(redis.popen.pid, signal.SIGCONT)
    assert metric(pop_open, "read", "failed") > failed_open
    assert metric(pop_closed, "read", "failed") > failed_closed
