"""Invalid traffic end to end: real nats-server, control plane + collector on chdb, one edge PoP wired to a real
redis-server. Each beacon below breaks one IVT rule (or none); the edge must record every one of them, mark
each with its reason, and bill only the clean ones, and the campaign's report must show gross against invalid.

The edge trusts one proxy hop, so each scenario gets its own client address through X-Forwarded-For and the
flood counts of one do not spill into another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from adserver.processes import ProcessGroup, start_redis
from adserver.stack import LocalStack

pytestmark = pytest.mark.e2e

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
IP_LIMIT = 12
_ips = (f"81.2.{n // 250}.{n % 250 + 1}" for n in count())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    group = ProcessGroup(tmp_path_factory.mktemp("redis"))
    _, redis_url = start_redis(group)
    env = {"ADSERVER_EDGE_REDIS_URL": redis_url, "ADSERVER_EDGE_TRUSTED_PROXY_HOPS": "1",
           "ADSERVER_EDGE_IVT_IP_LIMIT": str(IP_LIMIT)}
    try:
        with LocalStack(regions=("eu",), edge_env=env) as s:
            yield s
    finally:
        group.stop_all()


def launch(stack: LocalStack, keyword: str, bid_type: str) -> tuple[str, str]:
    token = stack.create_advertiser(f"IVT {keyword}")[1]
    body = {
        "name": f"ivt {keyword}", "bid_type": bid_type, "max_bid_micros": 2_000_000,
        "daily_budget_micros": 50_000_000, "total_budget_micros": 500_000_000, "pacing": "asap",
        "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "timezone": "UTC",
        "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": f"Buy {keyword}", "image_url": "https://img.example.com/a.png",
                       "landing_url": f"https://shop.example.com/{keyword}", "size": "300x250"}],
    }
    h = {"Authorization": f"Bearer {token}"}
    cid = httpx.post(f"{stack.cp_url}/v1/campaigns", json=body, headers=h, timeout=10).json()["id"]
    assert httpx.post(f"{stack.cp_url}/v1/campaigns/{cid}/submit", headers=h, timeout=10).json()["status"] == "active"
    return cid, token


def ad(stack: LocalStack, keyword: str, *, ip: str, ua: str = CHROME, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{stack.edges[0].url}/v1/ads", timeout=10,
                      params={"placement": "ivt", "format": "300x250", "slots": "1", "geo": "DE-BE",
                              "keywords": keyword},
                      headers={"User-Agent": ua, "X-Forwarded-For": ip})
        if r.status_code == 200:
            return r.json()["ads"][0]
        assert time.monotonic() < deadline, r.status_code
        time.sleep(0.05)


def fire(url: str, *, ip: str, ua: str = CHROME, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={"User-Agent": ua, "X-Forwarded-For": ip, **headers}, timeout=10)


def beacon_counts(stack: LocalStack) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for line in httpx.get(f"{stack.edges[0].url}/metrics").text.splitlines():
        if line.startswith("adserver_beacons_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1:line.index("}")].split(","))
            out[(labels["kind"].strip('"'), labels["result"].strip('"'))] = int(float(line.rsplit(" ", 1)[1]))
    return out


def totals(stack: LocalStack, token: str, cid: str, timeout: float = 30, **want: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{stack.cp_url}/v1/campaigns/{cid}/metrics?granularity=minute",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
        t = r.json()["totals"]
        if all(t.get(k) == v for k, v in want.items()):
            return t
        assert time.monotonic() < deadline, (t, want)
        time.sleep(0.3)


def test_each_rule_marks_its_beacon_and_only_clean_impressions_bill(stack: LocalStack):
    cid, token = launch(stack, "ivtcpm", "cpm")
    cases = [
        ("ok", {}),
        ("known_bot", {"ua": "curl/8.5.0"}),
        ("invalid_user_agent", {"ua": "MyScanner 1.0"}),
        ("datacenter_ip", {"ip": "3.5.140.2"}),
        ("prefetch", {"Sec-Purpose": "prefetch;prerender"}),
        ("ua_mismatch", {"ua": FIREFOX}),
        ("geo_mismatch", {"X-Geo": "FR"}),
    ]
    before = beacon_counts(stack)
    for _, extra in cases:
        ip = next(_ips)
        shown = ad(stack, "ivtcpm", ip=ip)
        kwargs = {"ip": extra.pop("ip", ip), "ua": extra.pop("ua", CHROME)}
        assert fire(shown["impression_url"], **kwargs, **extra).status_code == 204  # mark, don't block
    after = beacon_counts(stack)
    for result, _ in cases:
        assert after.get(("impression", result), 0) - before.get(("impression", result), 0) == 1, result
    t = totals(stack, token, cid, impressions=1, invalid_impressions=len(cases) - 1)
    print("cpm totals", t)
    assert t["gross_impressions"] == len(cases)
    assert 0 < t["spend_micros"] <= 2_000_000 // 1000  # one CPM impression's price at most


def test_clicks_too_fast_or_without_impression_are_not_billed(stack: LocalStack):
    cid, token = launch(stack, "ivtcpc", "cpc")
    ip = next(_ips)
    fast = ad(stack, "ivtcpc", ip=ip)
    no_imp = ad(stack, "ivtcpc", ip=ip)
    good = ad(stack, "ivtcpc", ip=ip)
    before = beacon_counts(stack)
    assert fire(fast["impression_url"], ip=ip).status_code == 204
    assert fire(good["impression_url"], ip=ip).status_code == 204
    r = fire(fast["click_url"], ip=ip)  # within a second of the ad request
    assert r.status_code == 302
    time.sleep(1.1)
    assert fire(no_imp["click_url"], ip=ip).status_code == 302  # its impression was never fired
    assert fire(good["click_url"], ip=ip).status_code == 302
    after = beacon_counts(stack)
    for result in ("click_too_fast", "click_without_impression", "ok"):
        assert after.get(("click", result), 0) - before.get(("click", result), 0) == 1, result
    # A conversion after the bot-fast click inherits its reason: recorded, never counted as valid.
    adclid = parse_qs(urlsplit(r.headers["location"]).query)["adclid"][0]
    conv = httpx.post(f"{stack.edges[0].url}/v1/track/conversion", timeout=10,
                      json={"conversion_id": "o-1", "adclid": adclid, "value_micros": 5})
    assert conv.status_code == 204
    t = totals(stack, token, cid, clicks=1, invalid_clicks=2, conversions=0, invalid_conversions=1)
    print("cpc totals", t)
    assert 0 < t["spend_micros"] <= 2_000_000  # one click's price at most


def test_one_ip_past_the_flood_limit_is_marked(stack: LocalStack):
    launch(stack, "ivtflood", "cpm")
    ip = next(_ips)
    # The count is a sliding estimate over fixed 60 s windows (edge/ivt_store.py): across a window's edge it
    # weighs the previous window's beacons a little less, so a run straddling one flags one fewer (seen once
    # in a full suite run). Start clear of the edge.
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.2)
    before = beacon_counts(stack)
    for _ in range(IP_LIMIT + 3):
        shown = ad(stack, "ivtflood", ip=ip)
        assert fire(shown["impression_url"], ip=ip).status_code == 204
    after = beacon_counts(stack)
    assert after.get(("impression", "ip_flood"), 0) - before.get(("impression", "ip_flood"), 0) == 3
    assert after.get(("impression", "ok"), 0) - before.get(("impression", "ok"), 0) == IP_LIMIT

