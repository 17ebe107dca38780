"""What an SRE relies on: metrics that name what matters, JSON logs with request ids and no secrets, and a
graceful shutdown that delivers every accepted billing event even when NATS is stalled at that moment."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adserver.processes import wait_ready
from adserver.stack import LocalStack
from edge import compile_cache

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(regions=("eu",)) as s:
        yield s


@pytest.fixture(scope="module")
def token(stack: LocalStack) -> str:
    return stack.create_advertiser("Ops Advertiser")[1]


def launch(stack: LocalStack, token: str, keyword: str) -> str:
    h = {"Authorization": f"Bearer {token}"}
    body = {
        "name": f"ops {keyword}", "bid_type": "cpm", "max_bid_micros": 2_000_000,
        "daily_budget_micros": 50_000_000, "total_budget_micros": 50_000_000, "pacing": "asap",
        "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "timezone": "UTC",
        "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": "Ops", "image_url": "https://img.example.com/o.png",
                       "landing_url": "https://ops.example.com/", "size": "300x250"}],
    }
    cid = httpx.post(f"{stack.cp_url}/v1/campaigns", json=body, headers=h).json()["id"]
    assert httpx.post(f"{stack.cp_url}/v1/campaigns/{cid}/submit", headers=h).json()["status"] == "active"
    return cid


def fill(edge_url: str, keyword: str, campaign_id: str, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    ads: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(ads) < n:
        assert time.monotonic() < deadline, "campaign never served"
        r = httpx.get(f"{edge_url}/v1/ads", params={"placement": "ops", "format": "300x250", "keywords": keyword})
        if r.status_code == 200:
            ads.extend(a for a in r.json()["ads"] if a["campaign_id"] == campaign_id)
        else:
            time.sleep(0.02)
    return ads[:n]


def stored_impressions(stack: LocalStack, token: str, campaign_id: str) -> int:
    r = httpx.get(f"{stack.cp_url}/v1/campaigns/{campaign_id}/metrics?granularity=minute",
                  headers={"Authorization": f"Bearer {token}"})
    return r.json()["totals"].get("impressions", 0)


def test_metrics_name_what_an_sre_watches(stack: LocalStack, token: str) -> None:
    cid = launch(stack, token, "opsmetrics")
    edge = stack.edges[0].url
    fill(edge, "opsmetrics", cid, 3)
    httpx.get(f"{edge}/v1/ads", params={"placement": "ops", "format": "728x90", "keywords": "nothing-matches"})
    text = httpx.get(f"{edge}/metrics").text
    for name in ("adserver_decision_seconds_bucket", 'adserver_no_fill_total{reason="no_candidates"}',
                 'adserver_events{state="acked"}', 'adserver_events{state="buffered"}',
                 "adserver_snapshot_version", "adserver_snapshot_age_seconds",
                 'adserver_allowance_micros{state="available"}', 'adserver_ad_requests_total{outcome="filled"}'):
        assert name in text, name
    cp_text = httpx.get(f"{stack.cp_url}/metrics").text
    for name in ('adserver_collector{counter="inserted"}', 'adserver_collector_lag_messages{state="pending"}',
                 'adserver_snapshot{field="version"}', "adserver_budget_granted_micros"):
        assert name in cp_text, name


def test_request_ids_flow_into_json_logs_and_secrets_stay_out(stack: LocalStack, token: str) -> None:
    r = httpx.get(f"{stack.cp_url}/v1/campaigns", headers={"Authorization": f"Bearer {token}",
                                                           "X-Request-Id": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    generated = httpx.get(f"{stack.cp_url}/livez").headers["x-request-id"]
    assert len(generated) == 16
    bad = httpx.get(f"{stack.cp_url}/livez", headers={"X-Request-Id": "<script>"}).headers["x-request-id"]
    assert bad != "<script>"  # an id that could break a log line is replaced
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in stack.control_plane.log_path.read_text().splitlines()
                 if line.startswith("{")]
        if any(line.get("request_id") == "trace-abc.123" for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    access = [line for line in lines if line.get("request_id") == "trace-abc.123"]
    assert access and access[0]["path"] == "/v1/campaigns" and access[0]["status"] == 200
    secret = token.split(".", 1)[1]
    for proc in (stack.control_plane, *[e.proc for e in stack.edges]):
        assert secret not in proc.log_path.read_text(), f"{proc.name} logged an advertiser token"


def test_shutdown_delivers_buffered_billing_events_while_nats_is_stalled(stack: LocalStack, token: str) -> None:
    cid = launch(stack, token, "opsdrain")
    edge = stack.edges[0]
    ads = fill(edge.url, "opsdrain", cid, 20)
    assert stack.nats is not None
    stack.nats.popen.send_signal(signal.SIGSTOP)  # JetStream stops answering: beacons can only be buffered
    try:
        # Not acknowledged by JetStream within the ack timeout: 503 (retry), never a 204 that a crash could
        # take back; the events stay buffered and keep being retried under their ids.
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(lambda ad: httpx.get(ad["impression_url"], timeout=10).status_code, ads))
        assert statuses == [503] * 20
        stopper = threading.Thread(target=edge.proc.stop, kwargs={"timeout": 30})
        stopper.start()  # SIGTERM now: the edge must hold its exit until the buffer is acknowledged
        time.sleep(1.5)
        assert edge.proc.alive(), "edge exited while its events were still unacknowledged"
    finally:
        stack.nats.popen.send_signal(signal.SIGCONT)
    stopper.join(40)
    assert not edge.proc.alive()
    deadline = time.monotonic() + 30
    while stored_impressions(stack, token, cid) < 20:
        assert time.monotonic() < deadline, f"only {stored_impressions(stack, token, cid)} of 20 stored"
        time.sleep(0.3)
    assert stored_impressions(stack, token, cid) == 20
    assert stack.admin_stats()["store"]["duplicates"] == 0


def test_metrics_of_a_multi_worker_edge_add_up_across_workers(stack: LocalStack, token: str) -> None:
    edge = stack.start_edge("eu", "multi", workers=2)
    wait_ready(f"{edge.url}/readyz", edge.proc, timeout=30)
    with httpx.Client(timeout=5) as client:  # fresh connections, so granian spreads them over both workers
        for _ in range(40):
            client.get(f"{edge.url}/v1/ads", params={"placement": "ops", "format": "300x250"},
                       headers={"Connection": "close"})
        totals = []
        for _ in range(4):
            text = client.get(f"{edge.url}/metrics", headers={"Connection": "close"}).text
            totals.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith("adserver_ad_requests_total{")))
    assert totals == [40.0] * 4  # every scrape, whichever worker answers, sees all 40 requests
    edge.proc.stop()


def test_a_second_edge_process_loads_the_compiled_auction_from_the_cache(stack: LocalStack, tmp_path: Path) -> None:
    """The first edge process compiles the auction's kernels into its cache directory; the next one (a
    restart, another pod on the node's volume) loads them instead of compiling for seconds."""
    saved = stack.edge_env
    stack.edge_env = {**saved, "ADSERVER_EDGE_COMPILE_CACHE_DIR": str(tmp_path / "kernels")}
    started = []
    try:
        for pop in ("cache1", "cache2"):  # one after the other: the second must find the first's files
            edge = stack.start_edge("eu", pop)
            started.append(edge)
            wait_ready(f"{edge.url}/readyz", edge.proc, timeout=60)
    finally:
        stack.edge_env = saved
        for edge in started:
            stack.edges.remove(edge)
            edge.proc.stop()
    first, second = (edge.proc.log_path.read_text() for edge in started)
    assert "compiled kernels loaded from the cache so far: 0)" in first, first[-2000:]
    assert re.search(r"compiled kernels loaded from the cache so far: [1-9]", second), second[-2000:]
    directory = tmp_path / "kernels" / compile_cache.source_digest()
    assert any(p.name.startswith("auction._select") and p.suffix == ".nbc" for p in directory.rglob("*"))


def test_the_campaign_api_answers_503_to_reads_and_504_to_writes_while_nats_is_stalled(
        stack: LocalStack, token: str) -> None:
    cid = launch(stack, token, "opsstall")
    assert stack.nats is not None
    stack.nats.popen.send_signal(signal.SIGSTOP)
    try:
        for path in ("/v1/campaigns", f"/v1/campaigns/{cid}"):
            r = stack.http.get(stack.cp_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert (r.status_code, r.headers.get("retry-after")) == (503, "1"), (path, r.status_code, r.text)
            assert "campaign store unavailable" in r.json()["error"]
        # A write that got no answer may still be applied once NATS resumes: 504, and no invitation to retry.
        r = stack.http.post(f"{stack.cp_url}/v1/campaigns/{cid}/pause", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        assert (r.status_code, r.headers.get("retry-after")) == (504, None), r.text
        assert "may or may not have been stored" in r.json()["error"]
    finally:
        stack.nats.popen.send_signal(signal.SIGCONT)
    r = stack.http.get(f"{stack.cp_url}/v1/campaigns/{cid}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == cid
