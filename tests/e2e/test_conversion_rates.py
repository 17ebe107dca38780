"""Learned conversion rates end to end: clicks and conversions through a real edge land in ClickHouse, the
control plane counts each CPA campaign's clicks and billed conversions, shrinks them towards what it declared
(``control_plane.cvr``), and the next snapshot prices the campaign's bid with the learned rate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from adserver.stack import LocalStack
from control_plane.cvr import PRIOR_CLICKS

pytestmark = pytest.mark.e2e
BID = 1_000_000  # per conversion
CREATIVE = {"size": "300x250", "image_url": "https://img.example.com/a.png", "landing_url": "https://shop.example.com/",
            "headline": "cpa", "prior_ctr": 0.02}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # Rates every second from clicks a second old; no click model (the CTR stays the declared 2%), so the
    # eCPM moves with the conversion rate alone.
    cp_env = {"ADSERVER_CP_CVR_EVERY_S": "1", "ADSERVER_CP_CVR_LABEL_DELAY_S": "1",
              "ADSERVER_CP_CTR_MIN_IMPRESSIONS": str(10**9)}
    with LocalStack(regions=("eu",), edge_env={"ADSERVER_EDGE_IVT_ENABLED": "false"}, cp_env=cp_env) as s:
        yield s


def won_ecpm(s: LocalStack) -> int:
    r = s.explain(s.admin_token, placement="cvr", format="300x250", keywords="cvrshoes")
    assert r.status_code == 200, r.text
    won = [f for f in r.json()["fates"] if f["fate"] == "won"]
    assert len(won) == 1, r.json()
    return won[0]["ecpm_micros"]


def test_a_cpa_bid_is_priced_with_the_conversion_rate_its_clicks_show(stack: LocalStack) -> None:
    s = stack
    token = s.create_advertiser("Optimist")[1]
    s.launch_campaign(token, "cvrshoes", bid_type="cpa", max_bid_micros=BID, prior_cvr=0.2, creatives=[CREATIVE])
    assert won_ecpm(s) == pytest.approx(BID * 0.02 * 0.2 * 1000, rel=1e-3)  # the declared 20% converts
    converted = 0
    for i in range(40):
        r = s.http.get(f"{s.edges[0].url}/v1/ads", params={"placement": "cvr", "format": "300x250",
                                                             "keywords": "cvrshoes"}, timeout=5)
        assert r.status_code == 200, r.text
        ad = r.json()["ads"][0]
        assert s.http.get(ad["impression_url"], timeout=5).status_code == 204
        click = s.http.get(ad["click_url"], timeout=5)
        assert click.status_code == 302
        if i % 20 == 0:  # 2 of 40 clicks convert: 5%, where the advertiser declared 20%
            adclid = parse_qs(urlsplit(click.headers["location"]).query)["adclid"][0]
            pixel = s.http.post(f"{s.edges[0].url}/v1/track/conversion",
                                json={"adclid": adclid, "conversion_id": f"o-{i}"}, timeout=5)
            assert pixel.status_code == 204, pixel.text
            converted += 1
    level = (converted + PRIOR_CLICKS * 0.2) / (40 + PRIOR_CLICKS)  # the advertiser's, towards its 20%
    learned = (converted + PRIOR_CLICKS * level) / (40 + PRIOR_CLICKS)  # the campaign's, towards that
    deadline = time.monotonic() + 60
    while (ecpm := won_ecpm(s)) != pytest.approx(BID * 0.02 * learned * 1000, rel=1e-3):
        assert time.monotonic() < deadline, f"the learned rate never reached the edge: {ecpm}, {s.admin_stats()}"
        time.sleep(0.5)
    assert s.admin_stats()["conversion_rates"] == {"clicks": 40, "conversions": 2, "campaigns": 1}
