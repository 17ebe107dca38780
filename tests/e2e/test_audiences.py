"""Real-time audiences end to end, on a stack whose region has a real Redis: a retargeting pixel puts a
consenting user in the advertiser's list and that advertiser's campaign reaches them on the next request, and
only theirs (another advertiser naming the same list gets its own, empty one); a page's keywords put its
reader in a keyword segment a campaign targets; without consent nothing is recorded or read. The click model
learns the page's site and the user's segments of each impression."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis_stack import stack_with_redis  # tests/e2e/redis_stack.py (this directory is on sys.path)

from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # The click trainer runs every second on what is a second old, so a test can see what it learned.
    cp_env = {"ADSERVER_CP_CTR_TRAIN_EVERY_S": "1", "ADSERVER_CP_CTR_LABEL_DELAY_S": "1"}
    with stack_with_redis(tmp_path_factory.mktemp("redis"), cp_env) as (s, _):
        yield s


def served(s: LocalStack, keywords: str, user: str | None = None, **extra: str) -> str | None:
    params: dict[str, Any] = {"placement": "aud", "format": "300x250", "keywords": keywords, **extra}
    if user:
        params["user"] = user
    r = httpx.get(f"{s.edges[0].url}/v1/ads", params=params, timeout=5)
    assert r.status_code in (200, 204), r.text
    return r.json()["ads"][0]["campaign_id"] if r.status_code == 200 else None


def pixel(s: LocalStack, **params: str) -> httpx.Response:
    return httpx.get(f"{s.edges[0].url}/v1/pixel", params=params, timeout=5)


def test_a_retargeting_pixel_lets_only_that_advertisers_campaign_reach_the_user(stack: LocalStack) -> None:
    s = stack
    shop_id, shop = s.create_advertiser("Shop")
    _, rival = s.create_advertiser("Rival")
    retarget = s.launch_campaign(shop, "unused-kw", max_bid_micros=5_000_000, targeting={"interests": ["rt-cart"]})
    # The rival names "its" cart list too, and bids more: it gets its own list, which nobody joined.
    s.launch_campaign(rival, "unused-kw2", max_bid_micros=9_000_000, targeting={"interests": ["rt-cart"]})
    fallback = s.launch_campaign(shop, "audpage", max_bid_micros=1_000_000)
    assert served(s, "audpage", "ann") == fallback
    r = pixel(s, adv=shop_id, seg="cart", user="ann")
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert served(s, "audpage", "ann") == retarget  # the record is awaited: the very next request
    assert served(s, "audpage", "bob") == fallback
    assert served(s, "audpage", "ann", gpc="1") == fallback  # no consent: the profile is not read
    # A list no live campaign targets is not kept (anyone can fire a pixel).
    assert pixel(s, adv=shop_id, seg="wishlist", user="ann").status_code == 200
    metrics = httpx.get(f"{s.edges[0].url}/metrics", timeout=5).text
    assert 'adserver_profile_store_total{op="pixel",result="unused_list"} 1.0' in metrics
    # A pixel without consent records nothing.
    assert pixel(s, adv=shop_id, seg="cart", user="cyd", gdpr="1").status_code == 200
    assert served(s, "audpage", "cyd") == fallback


def test_a_pages_keywords_put_its_reader_in_a_targeted_keyword_segment(stack: LocalStack) -> None:
    s = stack
    _, runner = s.create_advertiser("Runner")
    _, filler = s.create_advertiser("Filler")
    segment = s.launch_campaign(runner, "unused-kw3", max_bid_micros=5_000_000,
                                targeting={"interests": ["kw-marathon"]})
    other = s.launch_campaign(filler, "newspage", max_bid_micros=1_000_000)
    assert served(s, "newspage", "dan") == other
    assert served(s, "marathon", "dan") is None  # nothing targets the keyword itself; the visit is recorded
    deadline = time.monotonic() + 5
    while served(s, "newspage", "dan") != segment:  # recorded in the background: a moment later
        assert time.monotonic() < deadline, "the keyword segment never reached the user's profile"
        time.sleep(0.05)
    assert served(s, "newspage", "eve") == other
    # A dry run on dan's id: the admin's sees his segment; the advertiser's runs on the page alone, or any
    # advertiser could ask which pages any user id has read.
    assert explained(s, s.admin_token, "newspage", "dan")[segment] in ("won", "outranked")
    token = httpx.post(f"{s.cp_url}/v1/postback-tokens", headers={"Authorization": f"Bearer {runner}"},
                       timeout=10).json()["token"]
    deadline = time.monotonic() + 15
    while (own := explained(s, token, "newspage", "dan")) is None:  # the token reaches the edge with a snapshot
        assert time.monotonic() < deadline, "the postback token never reached the edge"
        time.sleep(0.2)
    assert own == {segment: "targeting"}


def test_the_click_model_learns_each_impressions_site_and_segments(stack: LocalStack) -> None:
    """Neither is in the signed impression token: they ride the decision event, and the trainer joins it to
    the impression in ClickHouse."""
    s = stack
    _, shop = s.create_advertiser("Learner")
    s.launch_campaign(shop, "sitepage", max_bid_micros=2_000_000, targeting={"interests": ["kw-gardening"]})
    assert served(s, "gardening", "fay") is None  # nothing targets the keyword itself; the visit is recorded
    deadline = time.monotonic() + 5
    while served(s, "sitepage", "fay") is None:  # recorded in the background: a moment later
        assert time.monotonic() < deadline, "the keyword segment never reached the user's profile"
        time.sleep(0.05)
    before = s.admin_stats()["click_model"]
    for _ in range(20):
        r = httpx.get(f"{s.edges[0].url}/v1/ads", params={
            "placement": "aud", "format": "300x250", "keywords": "sitepage", "user": "fay",
            "url": "https://www.Blog.example/post"}, timeout=5)
        assert r.status_code == 200, r.text
        assert httpx.get(r.json()["ads"][0]["impression_url"], timeout=5).status_code == 204
    deadline = time.monotonic() + 60
    while True:
        stats = s.admin_stats()["click_model"]
        if stats["with_site"] - before["with_site"] >= 20:
            break
        assert time.monotonic() < deadline, f"the impressions were never learned with their site: {stats}"
        time.sleep(0.5)
    assert stats["with_segments"] - before["with_segments"] >= 20


def explained(s: LocalStack, token: str, keywords: str, user: str) -> dict[str, str] | None:
    """Campaign -> fate of a dry run for ``user`` with ``token``'s scope; None while the edge refuses it."""
    r = s.explain(token, placement="aud", format="300x250", keywords=keywords, user=user)
    if r.status_code == 401:
        return None
    assert r.status_code == 200, r.text
    return {f["campaign_id"]: f["fate"] for f in r.json()["fates"]}


@pytest.mark.parametrize(("params", "field"), [
    ({"seg": "cart", "user": "u"}, "adv"),
    ({"adv": "a1", "user": "u"}, "seg"),
    ({"adv": "a1", "seg": "cart"}, "user"),
    ({"adv": "a1", "seg": "c++", "user": "u"}, "seg"),
    ({"adv": "a1", "seg": "cart", "user": "u", "gpc": "yes"}, "gpc"),
    ({"adv": "a1", "seg": "cart", "user": "u", "ref": "x"}, "ref"),
])
def test_a_bad_pixel_is_refused_naming_the_parameter(stack: LocalStack, params: dict[str, str], field: str) -> None:
    r = pixel(stack, **params)
    assert r.status_code == 400
    assert field in {f["field"] for f in r.json()["fields"]}
