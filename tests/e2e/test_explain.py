"""Explain mode end to end: a dry run of a real edge's auction that names every candidate's fate, for an admin
(every campaign) or an advertiser (its own campaigns only, authenticated by its postback token), and that
serves, reserves and records nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e
PARAMS = {"placement": "expl", "format": "300x250", "keywords": "explshoes"}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(regions=("eu",)) as s:
        yield s


def fates(r: httpx.Response) -> dict[str, dict[str, Any]]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and "ads" not in body
    return {f["campaign_id"]: f for f in body["fates"]}


def test_explain_names_every_candidates_fate_and_scopes_advertisers_to_their_own(stack: LocalStack) -> None:
    s = stack
    _, mine = s.create_advertiser("Explained")
    _, theirs = s.create_advertiser("Other")
    winner = s.launch_campaign(theirs, "explshoes", max_bid_micros=5_000_000)
    outranked = s.launch_campaign(mine, "explshoes", max_bid_micros=2_000_000)
    wrong_size = s.launch_campaign(mine, "explshoes", creatives=[{
        "headline": "tall", "size": "160x600", "image_url": "https://img.example.com/t.png",
        "landing_url": "https://shop.example.com/"}], targeting={"keywords": ["explshoes"]})
    r = httpx.post(f"{s.cp_url}/v1/postback-tokens", headers={"Authorization": f"Bearer {mine}"}, timeout=10)
    postback = r.json()["token"]
    everything = fates(s.explain(s.admin_token, **PARAMS))
    assert everything[winner]["fate"] == "won" and everything[winner]["price_micros"] > 0
    assert everything[outranked]["fate"] == "outranked"
    assert wrong_size not in everything  # a 160x600-only campaign is not even retrieved for a 300x250 slot
    # The advertiser's own view (its postback token reaches the edge with the next snapshot).
    deadline = time.monotonic() + 15
    while (own := s.explain(postback, **PARAMS)).status_code == 401:
        assert time.monotonic() < deadline, own.text
        time.sleep(0.2)
    # Its campaign the request's targeting leaves out (no 300x250 creative) is there too, as "targeting".
    assert {cid: f["fate"] for cid, f in fates(own).items()} == {outranked: "outranked", wrong_size: "targeting"}
    assert own.json()["candidates"] == 1
    # A dry run serves nothing: the winner was not charged or reserved anything by the explains above.
    assert httpx.get(f"{s.edges[0].url}/v1/ads", params=PARAMS, timeout=5).json()["ads"][0]["campaign_id"] == winner


def test_explain_refuses_without_a_valid_token(stack: LocalStack) -> None:
    for token in (None, "not-the-admin-token", "adv123.not-a-secret"):
        r = stack.explain(token, **PARAMS)
        assert r.status_code == 401, (token, r.text)
    r = httpx.get(f"{stack.edges[0].url}/v1/ads", params={**PARAMS, "explain": "yes"}, timeout=5)
    assert r.status_code == 400 and r.json()["fields"][0]["field"] == "explain"
