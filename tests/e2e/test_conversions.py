"""Conversions and attribution end to end: real nats-server, control plane + collector on chdb, one edge PoP
whose touch store is a real redis-server.

A consenting user's impressions and clicks are remembered per advertiser; the advertiser's pixel converts a
click once; an authenticated server-to-server postback is deduplicated by the advertiser's conversion id and
credited to the named click, or to the user's last click within the campaign's click window, else to the last
view within its view window; CPA campaigns are billed per credited conversion; postback tokens rotate; and the
time-decay report shares each conversion among the user's touches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from redis_stack import stack_with_redis  # tests/e2e/redis_stack.py (this directory is on sys.path)

from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e
PRICE = 4_000_000  # the CPA bid: the most one credited conversion bills


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with stack_with_redis(tmp_path_factory.mktemp("redis")) as (s, _):
        yield s


def launch(stack: LocalStack, token: str, keyword: str, **extra: Any) -> str:
    h = {"Authorization": f"Bearer {token}"}
    body = {
        "name": keyword, "bid_type": "cpa", "max_bid_micros": PRICE, "pacing": "asap",
        "daily_budget_micros": 500_000_000,
        "total_budget_micros": 500_000_000, "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "timezone": "UTC", "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": keyword, "image_url": "https://i.example.com/x.png",
                       "landing_url": "https://shop.example.com/", "size": "300x250"}],
        **extra,
    }
    r = httpx.post(f"{stack.cp_url}/v1/campaigns", json=body, headers=h, timeout=10)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert httpx.post(f"{stack.cp_url}/v1/campaigns/{cid}/submit", headers=h).json()["status"] == "active"
    return cid


def serve(stack: LocalStack, keyword: str, user: str | None) -> dict[str, Any]:
    params = {"placement": "conv", "format": "300x250", "keywords": keyword}
    if user:
        params["user"] = user
    deadline = time.monotonic() + 15
    while True:
        r = httpx.get(f"{stack.edges[0].url}/v1/ads", params=params, timeout=5)
        if r.status_code == 200:
            return r.json()["ads"][0]
        assert time.monotonic() < deadline, f"no ad for {keyword}: {r.status_code}"
        time.sleep(0.1)


def render(ad: dict[str, Any]) -> None:
    assert httpx.get(ad["impression_url"], timeout=5).status_code == 204


def click(ad: dict[str, Any]) -> str:
    r = httpx.get(ad["click_url"], timeout=5)
    assert r.status_code == 302
    return parse_qs(urlsplit(r.headers["location"]).query)["adclid"][0]


def postback(stack: LocalStack, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{stack.edges[0].url}/v1/track/conversion", json=body, headers=headers, timeout=10)


def mint(stack: LocalStack, token: str) -> str:
    r = httpx.post(f"{stack.cp_url}/v1/postback-tokens", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def until_status(stack: LocalStack, body: dict[str, Any], token: str, status: int) -> httpx.Response:
    """Postback token hashes reach the edge with the next snapshot: retry until the edge answers ``status``."""
    deadline = time.monotonic() + 10
    while True:
        r = postback(stack, body, token)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_conversions_are_credited_deduplicated_billed_and_reported(stack: LocalStack) -> None:
    api_token = stack.create_advertiser("Converter")[1]
    other_token = stack.create_advertiser("Someone else")[1]
    cid = launch(stack, api_token, "convshoes")
    no_view = launch(stack, api_token, "convhats", attribution={"click_window_hours": 1, "view_window_hours": 0})
    pb = mint(stack, api_token)
    other_pb = mint(stack, other_token)

    # alice sees and clicks; bob only sees; dave sees an ad of the campaign without view-through.
    alice_ad = serve(stack, "convshoes", "alice")
    render(alice_ad)
    adclid = click(alice_ad)
    render(serve(stack, "convshoes", "bob"))
    render(serve(stack, "convhats", "dave"))
    anonymous = serve(stack, "convshoes", None)  # no user: nothing to remember
    render(anonymous)
    anon_adclid = click(anonymous)

    # Authenticated postback naming the click: credited, and the same conversion id again is one conversion.
    first = until_status(stack, {"conversion_id": "order-1", "adclid": adclid, "value_micros": 30_000_000}, pb, 200)
    assert first.status_code == 200, first.text
    assert first.json() | {"event_id": ""} == {"attributed": True, "model": "last_click", "campaign_id": cid,
                                               "event_id": "", "invalid_reason": None}
    again = postback(stack, {"conversion_id": "order-1", "adclid": adclid, "value_micros": 30_000_000}, pb)
    assert again.json() == first.json()
    # A second order by alice, reported by user id: her last click.
    by_user = postback(stack, {"conversion_id": "order-2", "user_id": "alice", "value_micros": 10_000_000}, pb)
    assert by_user.json()["model"] == "last_click" and by_user.json()["campaign_id"] == cid
    # bob never clicked: his last view, inside the default 24 h view window.
    bob = postback(stack, {"conversion_id": "order-3", "user_id": "bob", "value_micros": 5_000_000}, pb)
    assert bob.json()["model"] == "last_view" and bob.json()["campaign_id"] == cid
    # dave's only touch is on a campaign with view-through off; carol was never shown anything.
    assert postback(stack, {"conversion_id": "order-4", "user_id": "dave"}, pb).json() == {
        "attributed": False, "reason": "last_click_and_view_outside_their_windows"}
    assert postback(stack, {"conversion_id": "order-5", "user_id": "carol"}, pb).json() == {
        "attributed": False, "reason": "no_click_or_view_for_this_user"}

    # The pixel: no credentials, adclid only, and a click converts at most once whatever the conversion id.
    assert postback(stack, {"conversion_id": "px-1", "adclid": anon_adclid}).status_code == 204
    assert postback(stack, {"conversion_id": "px-2", "adclid": anon_adclid}).status_code == 204

    # Refusals, each naming what is wrong.
    r = postback(stack, {"conversion_id": "x", "user_id": "alice"})  # a user id only from an authenticated server
    assert r.status_code == 401 and "user_id" in r.json()["error"]
    r = postback(stack, {"conversion_id": "x", "adclid": adclid, "user_id": "alice"}, pb)
    assert r.status_code == 400 and "exactly one" in r.json()["error"]
    assert postback(stack, {"conversion_id": "x", "adclid": adclid}, api_token).status_code == 401  # API token
    assert postback(stack, {"conversion_id": "x", "adclid": adclid}, pb + "x").status_code == 401
    other = until_status(stack, {"conversion_id": "x", "adclid": adclid}, other_pb, 403)
    assert other.status_code == 403 and "another advertiser" in other.json()["error"]
    # Another advertiser cannot read this advertiser's users either: its postback finds no touches.
    assert postback(stack, {"conversion_id": "y", "user_id": "alice"}, other_pb).json()["attributed"] is False

    # Rotation: a new token works at once, the previous one still works, the one before that is revoked.
    pb2 = mint(stack, api_token)
    assert until_status(stack, {"conversion_id": "order-1", "adclid": adclid}, pb2, 200).status_code == 200
    assert postback(stack, {"conversion_id": "order-1", "adclid": adclid}, pb).status_code == 200
    mint(stack, api_token)
    assert until_status(stack, {"conversion_id": "order-1", "adclid": adclid}, pb, 401).status_code == 401

    # Stored: orders 1, 2, 3 once each (order-1 was posted four times) and one pixel conversion.
    caught_up, _, _ = stack.wait_stored()
    assert caught_up
    h = {"Authorization": f"Bearer {api_token}"}
    totals = httpx.get(f"{stack.cp_url}/v1/campaigns/{cid}/metrics", headers=h, timeout=10).json()["totals"]
    assert totals["conversions"] == 4
    # CPA: billed per credited conversion, never per repeat; each at the same second price, at most the bid.
    assert 0 < totals["spend_micros"] <= 4 * PRICE and totals["spend_micros"] % 4 == 0
    hats = httpx.get(f"{stack.cp_url}/v1/campaigns/{no_view}/metrics", headers=h, timeout=10).json()["totals"]
    assert hats["conversions"] == 0 and hats["spend_micros"] == 0

    # Time decay: the three user-keyed conversions are shared among alice's and bob's touches, all on cid.
    report = httpx.get(f"{stack.cp_url}/v1/attribution", params={"half_life_hours": 1}, headers=h, timeout=10)
    assert report.status_code == 200, report.text
    campaigns = {c["campaign_id"]: c for c in report.json()["campaigns"]}
    assert set(campaigns) == {cid}
    assert campaigns[cid]["conversions"] == pytest.approx(3.0)
    assert campaigns[cid]["value_micros"] == 45_000_000
    assert httpx.get(f"{stack.cp_url}/v1/attribution", params={"model": "linear"}, headers=h).status_code == 400
