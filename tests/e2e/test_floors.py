"""Reserves per placement and the quality floor end to end: the control plane's settings reach the edges in
the snapshot, and an edge's auction applies them (explain names the fates)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    env = {"ADSERVER_CP_PLACEMENT_RESERVES": "premium=3000000", "ADSERVER_CP_MIN_CTR": "0.001"}
    with LocalStack(regions=("eu",), cp_env=env) as s:
        yield s


def fates(s: LocalStack, placement: str) -> dict[str, str]:
    r = s.explain(s.admin_token, placement=placement, format="300x250", keywords="floorkw")
    assert r.status_code == 200, r.text
    return {f["campaign_id"]: f["fate"] for f in r.json()["fates"]}


def test_a_placements_own_reserve_and_the_quality_floor_reach_the_auction(stack: LocalStack) -> None:
    s = stack
    _, token = s.create_advertiser("Floors")
    _, other = s.create_advertiser("Rarely clicked")
    good = s.launch_campaign(token, "floorkw", max_bid_micros=2_000_000)  # CTR 1%: 2,000,000 per mille
    rare = s.launch_campaign(other, "floorkw", max_bid_micros=9_000_000, creatives=[{  # CPM: clears both reserves
        "headline": "rare", "size": "300x250", "image_url": "https://img.example.com/r.png",
        "landing_url": "https://shop.example.com/", "prior_ctr": 0.0005}])
    # Under the floor of 0.1% the rare ad never shows, whatever it bids; on a placement whose own reserve is
    # 3,000,000 per mille the good one is below it, elsewhere the snapshot's 100,000 lets it win.
    assert fates(s, "standard") == {good: "won", rare: "below_quality"}
    assert fates(s, "premium") == {good: "below_reserve", rare: "below_quality"}
    r = httpx.get(f"{s.edges[0].url}/v1/ads", params={"placement": "premium", "format": "300x250",
                                                      "keywords": "floorkw"}, timeout=5)
    assert r.status_code == 204


def test_a_declared_prior_ctr_counts_for_no_more_than_the_ceiling(stack: LocalStack) -> None:
    s = stack
    _, token = s.create_advertiser("Optimist")
    claimed = s.launch_campaign(token, "priorkw", bid_type="cpc", max_bid_micros=100_000, creatives=[{
        "headline": "sure click", "size": "300x250", "image_url": "https://img.example.com/s.png",
        "landing_url": "https://shop.example.com/", "prior_ctr": 0.9}])
    r = s.explain(s.admin_token, placement="standard", format="300x250", keywords="priorkw")
    [won] = [f for f in r.json()["fates"] if f["campaign_id"] == claimed]
    # Ranked at the default ceiling of 5%, not the 90% it declared: 100,000 a click at 5% is 5,000,000 per mille.
    assert won["fate"] == "won" and won["ctr"] == 0.05 and won["ecpm_micros"] == 5_000_000
