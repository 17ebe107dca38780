"""End to end over HTTP against the real processes: nats-server, control plane + collector on chdb, and one
edge PoP per region. What an advertiser and a publisher see, and what ClickHouse ends up billing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from adserver.stack import LocalStack
from edge.tokens import SigningKeys, sign

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(regions=("eu", "us")) as s:
        yield s


@pytest.fixture(scope="module")
def tokens(stack: LocalStack) -> tuple[str, str]:
    return stack.create_advertiser("Advertiser A")[1], stack.create_advertiser("Advertiser B")[1]


def api(stack: LocalStack, method: str, path: str, token: str | None, body: Any = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {token}"} if token else {}
    return stack.http.request(method, stack.cp_url + path, json=body, headers={**h, **(headers or {})}, timeout=10)


def campaign_body(keyword: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": f"campaign {keyword}", "bid_type": "cpm", "max_bid_micros": 5_000_000,
        "daily_budget_micros": 50_000_000, "total_budget_micros": 500_000_000, "pacing": "asap",
        "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "timezone": "Europe/Berlin",
        "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": f"Buy {keyword}", "image_url": "https://img.example.com/a.png",
                       "landing_url": f"https://shop.example.com/{keyword}?ref=ad", "size": "300x250"}],
    }
    body.update(overrides)
    return body


def launch(stack: LocalStack, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api(stack, "POST", "/v1/campaigns", token, body)
    assert r.status_code == 201, r.text
    r = api(stack, "POST", f"/v1/campaigns/{r.json()['id']}/submit", token)
    assert r.status_code == 200, r.text
    campaign = r.json()
    assert campaign["status"] == "active", campaign["review"]
    wait_served(stack, campaign["id"], campaign["revision"])
    return campaign


def wait_served(stack: LocalStack, campaign_id: str, revision: int, timeout: float = 10) -> float:
    started = time.monotonic()
    pending = {e.url for e in stack.edges}
    while pending:
        assert time.monotonic() - started < timeout, f"{pending} never served {campaign_id}@{revision}"
        for url in list(pending):
            if httpx.get(f"{url}/readyz").json()["revisions"].get(campaign_id, -1) >= revision:
                pending.discard(url)
        time.sleep(0.01)
    return time.monotonic() - started


def ask(edge_url: str, keyword: str, **params: str) -> httpx.Response:
    query = {"placement": "e2e-page", "format": "300x250", "slots": "3", "geo": "DE-BE", "device": "desktop",
             "keywords": keyword, **params}
    return httpx.get(f"{edge_url}/v1/ads", params=query, timeout=10)


def ads_for(edge_url: str, keyword: str, campaign_id: str) -> list[dict[str, Any]]:
    r = ask(edge_url, keyword)
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    return [ad for ad in r.json()["ads"] if ad["campaign_id"] == campaign_id]


def wait_serving(edge_url: str, keyword: str, campaign_id: str, timeout: float = 3) -> bool:
    """A campaign in the snapshot serves once the PoP holds its first budget grant: a few ms later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ads_for(edge_url, keyword, campaign_id):
            return True
        time.sleep(0.01)
    return False


def wait_stored(stack: LocalStack, timeout: float = 30) -> dict[str, Any]:
    """Wait until ClickHouse holds every event the edges had acknowledged by JetStream."""
    caught_up, published, stats = stack.wait_stored(timeout)
    assert caught_up, f"stored {stats['store']} != published {published}"
    return {**stats, "published": published}


def metrics(stack: LocalStack, token: str, campaign_id: str) -> dict[str, Any]:
    r = api(stack, "GET", f"/v1/campaigns/{campaign_id}/metrics?granularity=minute", token)
    assert r.status_code == 200, r.text
    return r.json()["totals"]


# --- advertiser API ----------------------------------------------------------------------------------------

def test_malformed_campaign_is_rejected_naming_every_bad_field_and_nothing_is_stored(
        stack: LocalStack, tokens: tuple[str, str]) -> None:
    before = len(api(stack, "GET", "/v1/campaigns", tokens[0]).json()["campaigns"])
    bad = campaign_body("bad", name="", bid_type="cpx", max_bid_micros=-5, timezone="Mars/Olympus")
    bad["creatives"][0]["landing_url"] = "javascript:alert(1)"
    r = api(stack, "POST", "/v1/campaigns", tokens[0], bad)
    assert r.status_code == 422
    named = {f["field"] for f in r.json()["fields"]}
    assert {"name", "bid_type", "max_bid_micros", "timezone"} <= named
    assert len(api(stack, "GET", "/v1/campaigns", tokens[0]).json()["campaigns"]) == before


def test_bad_bodies_and_tokens_get_clear_4xx(stack: LocalStack, tokens: tuple[str, str]) -> None:
    r = httpx.post(f"{stack.cp_url}/v1/campaigns", content=b"{not json", timeout=5,
                   headers={"Authorization": f"Bearer {tokens[0]}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(f"{stack.cp_url}/v1/campaigns", content=b"x" * 200_000, timeout=5,
                   headers={"Authorization": f"Bearer {tokens[0]}"})
    assert r.status_code == 413
    assert api(stack, "GET", "/v1/campaigns", None).status_code == 401
    forged = tokens[0].split(".")[0] + ".forgedsecret"
    assert api(stack, "GET", "/v1/campaigns", forged).status_code == 401


def test_another_advertisers_campaign_is_404_everywhere(stack: LocalStack, tokens: tuple[str, str]) -> None:
    a, b = tokens
    r = api(stack, "POST", "/v1/campaigns", a, campaign_body("tenant"))
    cid = r.json()["id"]
    creative = campaign_body("x")["creatives"][0]
    for method, path, body in [
        ("GET", f"/v1/campaigns/{cid}", None),
        ("PATCH", f"/v1/campaigns/{cid}", {"name": "hijacked"}),
        ("POST", f"/v1/campaigns/{cid}/creatives", creative),
        ("POST", f"/v1/campaigns/{cid}/submit", None),
        ("POST", f"/v1/campaigns/{cid}/pause", None),
        ("GET", f"/v1/campaigns/{cid}/metrics", None),
    ]:
        r = api(stack, method, path, b, body)
        assert r.status_code == 404, (method, path, r.status_code)
    assert cid not in [c["id"] for c in api(stack, "GET", "/v1/campaigns", b).json()["campaigns"]]
    assert api(stack, "GET", f"/v1/campaigns/{cid}", a).json()["name"] == "campaign tenant"  # untouched


def test_read_only_fields_cannot_be_mass_assigned(stack: LocalStack, tokens: tuple[str, str]) -> None:
    cid = api(stack, "POST", "/v1/campaigns", tokens[0], campaign_body("massassign")).json()["id"]
    r = api(stack, "PATCH", f"/v1/campaigns/{cid}", tokens[0], {"status": "active", "advertiser_id": "advxxxxxx"})
    assert r.status_code == 422
    assert {f["field"] for f in r.json()["fields"]} == {"status", "advertiser_id"}
    assert api(stack, "GET", f"/v1/campaigns/{cid}", tokens[0]).json()["status"] == "draft"


def test_two_concurrent_patches_on_one_revision_give_one_409(stack: LocalStack, tokens: tuple[str, str]) -> None:
    created = api(stack, "POST", "/v1/campaigns", tokens[0], campaign_body("cas")).json()
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def patch(name: str) -> None:
        barrier.wait()
        r = api(stack, "PATCH", f"/v1/campaigns/{created['id']}", tokens[0], {"name": name},
                headers={"If-Match": f'"{created["revision"]}"'})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=patch, args=(f"writer {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 409]


# --- publisher path and billing ----------------------------------------------------------------------------

def test_bad_ad_request_names_the_parameter(stack: LocalStack) -> None:
    r = httpx.get(f"{stack.edges[0].url}/v1/ads", params={"format": "300x250", "slots": "99"})
    assert r.status_code == 400
    assert {f["field"] for f in r.json()["fields"]} == {"placement", "slots"}


def test_beacons_bill_exactly_once_and_forgeries_bill_nothing(stack: LocalStack, tokens: tuple[str, str]) -> None:
    campaign = launch(stack, tokens[0], campaign_body("e2eflow"))
    cid = campaign["id"]
    keys = SigningKeys.parse(stack.signing_keys)
    impressions: list[dict[str, Any]] = []
    for edge in stack.edges:
        assert wait_serving(edge.url, "e2eflow", cid)
    for edge in stack.edges:
        for _ in range(3):
            impressions.extend(ads_for(edge.url, "e2eflow", cid))
    assert len(impressions) == 2 * 3  # each request fills our campaign once (no repeated advertiser)
    for ad in impressions:
        assert httpx.get(ad["impression_url"]).status_code == 204
    for ad in impressions[:4]:  # the tag's viewability beacon, sent twice: measured once, billed never
        assert httpx.post(ad["viewable_url"]).status_code == 204
        assert httpx.get(ad["viewable_url"]).status_code == 204
    # Replays, on the other PoP and by POST: still 204, never billed again.
    for ad in impressions[:3]:
        other = stack.edges[1].url if ad["impression_url"].startswith(stack.edges[0].url) else stack.edges[0].url
        assert httpx.post(other + "/v1/track/impression?" + urlsplit(ad["impression_url"]).query).status_code == 204
        assert httpx.get(ad["impression_url"]).status_code == 204
    token = parse_qs(urlsplit(impressions[0]["impression_url"]).query)["t"][0]
    payload, kid, sig = token.split(".")
    tampered_payload = ("A" if payload[5] != "A" else "B").join([payload[:5], payload[6:]])
    expired = sign({"k": "i", "imp": "zzz-0", "auc": "zzz", "cmp": cid, "crv": "c", "adv": "a", "plc": "p",
                    "bt": "cpm", "px": 5000, "exp": int(time.time()) - 1}, keys)
    click_token = parse_qs(urlsplit(impressions[0]["click_url"]).query)["t"][0]
    base = stack.edges[0].url + "/v1/track/impression?t="
    for forged, reason in [(f"{tampered_payload}.{kid}.{sig}", "bad_signature"),
                           (f"{payload}.{kid}.{sig[:-2]}AA", "bad_signature"),
                           (f"{payload}.k9.{sig}", "unknown_key"),
                           (expired, "expired"),
                           (click_token, "wrong_kind"),
                           ("garbage", "malformed")]:
        r = httpx.get(base + forged)
        assert r.status_code == 403 and reason in r.json()["error"], (reason, r.text)
    # A click redirects to the signed landing URL with an attribution id; a conversion is billed once.
    r = httpx.get(impressions[0]["click_url"], follow_redirects=False)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith("https://shop.example.com/e2eflow?ref=ad&adclid=")
    adclid = parse_qs(urlsplit(location).query)["adclid"][0]
    assert httpx.get(impressions[0]["click_url"], follow_redirects=False).status_code == 302  # second click
    for _ in range(2):
        r = httpx.post(f"{stack.edges[1].url}/v1/track/conversion",
                       json={"conversion_id": "order-1", "adclid": adclid, "value_micros": 42_000_000})
        assert r.status_code == 204, r.text
    # A replayed postback with a new conversion id is still this click's one conversion: not billed again.
    r = httpx.post(f"{stack.edges[0].url}/v1/track/conversion",
                   json={"conversion_id": "order-3", "adclid": adclid, "value_micros": 1})
    assert r.status_code == 204
    r = httpx.post(f"{stack.edges[1].url}/v1/track/conversion",
                   json={"conversion_id": "order-2", "adclid": adclid[:-3] + "xyz", "value_micros": 1})
    assert r.status_code == 403
    stats = wait_stored(stack)
    assert stats["store"]["duplicates"] == 0
    totals = metrics(stack, tokens[0], cid)
    assert (totals["impressions"], totals["clicks"], totals["conversions"], totals["viewable"]) == (6, 1, 1, 4)
    prices = [parse_qs(urlsplit(ad["impression_url"]).query)["t"][0] for ad in impressions]
    assert totals["spend_micros"] == stats["spend_micros"][cid] > 0
    assert len(set(prices)) == 6


def test_campaign_stops_serving_when_its_budget_is_spent(stack: LocalStack, tokens: tuple[str, str]) -> None:
    # A competitor bidding $4 CPM sets our second price: 4,000 micros per impression, so ~25 impressions.
    launch(stack, tokens[0], campaign_body("e2ebudget", max_bid_micros=4_000_000))
    budget = 100_000
    campaign = launch(stack, tokens[1], campaign_body("e2ebudget", daily_budget_micros=budget,
                                                      total_budget_micros=budget))
    cid = campaign["id"]
    assert all(wait_serving(edge.url, "e2ebudget", cid) for edge in stack.edges)
    served = 0
    dry = 0
    for i in range(300):
        edge = stack.edges[i % 2].url
        ads = ads_for(edge, "e2ebudget", cid)
        if not ads:
            dry += 1
            if dry >= 40:
                break
            time.sleep(0.02)
            continue
        dry = 0
        for ad in ads:
            served += 1
            assert httpx.get(ad["impression_url"]).status_code == 204
    assert dry >= 40, "campaign kept serving after its budget"
    wait_stored(stack)
    spend = metrics(stack, tokens[1], cid)["spend_micros"]
    assert budget * 0.5 <= spend <= budget * 1.05, (spend, served)


def test_pause_reaches_every_pop_within_two_seconds(stack: LocalStack, tokens: tuple[str, str]) -> None:
    campaign = launch(stack, tokens[0], campaign_body("e2epause"))
    for edge in stack.edges:
        assert wait_serving(edge.url, "e2epause", campaign["id"])
    started = time.monotonic()
    r = api(stack, "POST", f"/v1/campaigns/{campaign['id']}/pause", tokens[0])
    assert r.status_code == 200 and r.json()["status"] == "paused"
    pending = [e.url for e in stack.edges]
    while pending:
        assert time.monotonic() - started < 2.0, f"still serving a paused campaign on {pending}"
        pending = [u for u in pending if ads_for(u, "e2epause", campaign["id"])]
        time.sleep(0.01)
    assert api(stack, "POST", f"/v1/campaigns/{campaign['id']}/pause", tokens[0]).status_code == 409


def test_demo_runs_and_its_report_holds(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "adserver", "demo", "--duration", "8", "--concurrency", "8", "--report", str(report)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["requests"] > 100 and data["fills"] > 0
    assert data["events_stored"] == data["events_in_jetstream"] > 0
    assert data["events_published"] >= data["events_in_jetstream"]  # cross-region replays: kept once by the hub
    assert data["duplicates_stored"] == 0
    assert data["propagation_ms"] < 2000
    assert data["freshness_ms_max"] is not None and data["freshness_ms_max"] < 10_000  # target: p99 <= 10 s
    for c in data["campaigns"]:
        assert c["spend_micros"] <= c["budget_micros"] * 1.05
    small = min(data["campaigns"], key=lambda c: c["budget_micros"])
    assert small["spend_micros"] > 0


def test_live_edits_stay_within_review_rules_and_odd_ids_are_404(stack: LocalStack, tokens: tuple[str, str]) -> None:
    campaign = launch(stack, tokens[0], campaign_body("liveedit"))
    r = api(stack, "PATCH", f"/v1/campaigns/{campaign['id']}", tokens[0], {"max_bid_micros": 900_000_000})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "max_bid_micros"
    assert api(stack, "GET", f"/v1/campaigns/{campaign['id']}", tokens[0]).json()["max_bid_micros"] == 5_000_000
    for odd in ("*", "x.>", "cmp..a", "%20", "a" * 300):
        assert api(stack, "GET", f"/v1/campaigns/{odd}", tokens[0]).status_code == 404, odd
    r = api(stack, "POST", f"/v1/campaigns/{campaign['id']}/complete", tokens[0])
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert api(stack, "PATCH", f"/v1/campaigns/{campaign['id']}", tokens[0], {"name": "x"}).status_code == 409
