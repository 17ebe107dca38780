"""The click model end to end: impressions and clicks through a real edge land in ClickHouse, the control plane
learns from them, the next snapshot carries the model, and the edge's auction then ranks by what users
actually clicked rather than by the advertisers' prior CTRs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e
CREATIVE = {"size": "300x250", "image_url": "https://img.example.com/a.png", "landing_url": "https://shop.example.com/"}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # The model ships after 200 impressions here (1,000 by default): each test learns from 400.
    cp_env = {"ADSERVER_CP_CTR_TRAIN_EVERY_S": "1", "ADSERVER_CP_CTR_LABEL_DELAY_S": "2",
              "ADSERVER_CP_CTR_MIN_IMPRESSIONS": "200"}
    with LocalStack(regions=("eu",), edge_env={"ADSERVER_EDGE_IVT_ENABLED": "false"}, cp_env=cp_env) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One client for a test's many requests: ``httpx.get`` builds a client and a connection per call."""
    with httpx.Client(timeout=5) as client:
        yield client


def ads(http: httpx.Client, s: LocalStack, slots: int) -> list[dict]:
    r = http.get(f"{s.edges[0].url}/v1/ads", params={"placement": "ctr", "format": "300x250",
                                                     "keywords": "ctrshoes", "slots": str(slots)})
    assert r.status_code == 200, r.text
    return r.json()["ads"]


def test_the_auction_learns_from_clicks_which_ad_users_prefer(stack: LocalStack, http: httpx.Client) -> None:
    s = stack
    # The advertiser says "a" clicks five times better; users will click only "b".
    a = s.launch_campaign(s.create_advertiser("Confident")[1], "ctrshoes", bid_type="cpc", max_bid_micros=500_000,
                          creatives=[{**CREATIVE, "headline": "a", "prior_ctr": 0.05}])
    b = s.launch_campaign(s.create_advertiser("Modest")[1], "ctrshoes", bid_type="cpc", max_bid_micros=500_000,
                          creatives=[{**CREATIVE, "headline": "b", "prior_ctr": 0.01}])
    assert [ad["campaign_id"] for ad in ads(http, s, 1)] == [a]  # before any data, the priors rank
    for _ in range(200):
        for ad in ads(http, s, 2):
            assert http.get(ad["impression_url"]).status_code == 204
            if ad["campaign_id"] == b:
                assert http.get(ad["click_url"]).status_code == 302
    deadline = time.monotonic() + 60
    while True:
        stats = httpx.get(f"{s.cp_url}/v1/admin/stats", headers={"Authorization": f"Bearer {s.admin_token}"},
                          timeout=10).json()["click_model"]
        ready = httpx.get(f"{s.edges[0].url}/readyz", timeout=5).json()
        if stats["impressions"] >= 400 and ready["click_model_version"] == stats["version"]:
            break
        assert time.monotonic() < deadline, f"the model never reached the edge: {stats}, {ready}"
        time.sleep(0.5)
    assert stats["clicks"] >= 200 and stats["creatives"] == 2 and stats["nonzero_weights"] > 0
    assert [ad["campaign_id"] for ad in ads(http, s, 1)] == [b]


def test_each_device_learns_its_own_best_headline(stack: LocalStack, http: httpx.Client) -> None:
    """Creative optimization end to end: a creative with two headlines; phone users click only "Tap",
    desktop users only "Click". The variant rides in the tokens into ClickHouse, the control plane tallies
    it per device, and the edge's Thompson sampling then shows each device its own winner."""
    s = stack
    s.launch_campaign(s.create_advertiser("Variants")[1], "varshoes", bid_type="cpc", max_bid_micros=500_000,
                      creatives=[{**CREATIVE, "headline": "Click", "prior_ctr": 0.02,
                                  "alternatives": {"headline": ["Tap"]}}])
    wanted = {"mobile": "Tap", "desktop": "Click"}

    def serve(device: str) -> dict:
        r = http.get(f"{s.edges[0].url}/v1/ads", params={"placement": "var", "format": "300x250",
                                                         "keywords": "varshoes", "device": device})
        assert r.status_code == 200, r.text
        return r.json()["ads"][0]

    shown: dict[str, set[str]] = {"mobile": set(), "desktop": set()}
    learned_before = s.admin_stats()["click_model"]["impressions"]
    for _ in range(200):
        for device, headline in wanted.items():
            ad = serve(device)
            shown[device].add(ad["creative"]["headline"])
            assert ad["creative"]["variant"] in ("0.0.0", "1.0.0")
            assert http.get(ad["impression_url"]).status_code == 204
            if ad["creative"]["headline"] == headline:
                assert http.get(ad["click_url"]).status_code == 302
    assert shown == {"mobile": {"Click", "Tap"}, "desktop": {"Click", "Tap"}}  # both explored before any data
    deadline = time.monotonic() + 60
    while True:
        stats = s.admin_stats()["click_model"]
        ready = httpx.get(f"{s.edges[0].url}/readyz", timeout=5).json()
        if stats["creatives_with_variants"] >= 1 and stats["impressions"] >= learned_before + 400 \
                and ready["click_model_version"] == stats["version"]:
            break
        assert time.monotonic() < deadline, f"the variants' tally never reached the edge: {stats}, {ready}"
        time.sleep(0.5)
    for device, headline in wanted.items():
        served = [serve(device)["creative"]["headline"] for _ in range(100)]
        assert served.count(headline) >= 85, (device, served.count(headline))
