"""``adserver chaos``: Jepsen-style fault runs against real processes, with per-run billing accounting.

Why: "billed exactly once" is a claim about crashes and partitions, and only a run that crashes and
partitions the real processes can check it. Each scenario starts its own stack (nats-server, control plane
with the collector on chdb, an edge PoP per region), drives publisher traffic over HTTP while a fault is
injected and healed, waits until the collector has caught up, and then compares what the client was told
(every beacon the edge *acknowledged* with 204/302) with what ClickHouse stored:

    attempted   event ids the client sent at least once (impression, viewable, click, conversion)
    acked       event ids the edge acknowledged (a 503 or a connection error is not an acknowledgement;
                the client retries those with the same token for a bounded time, then gives up)
    stored      event ids in ClickHouse
    lost        acked but not stored: the failure that matters
    unexpected  stored but never acked (the client gave up, or the answer was lost): allowed, counted
    phantom     stored but never even attempted: must be 0
    raw_duplicates     rows - unique event ids, over every row of the run
    duplicates_billed  billable rows counted in spend more than once (0 when spend equals the sum of the
                       unique billable costs)

The stored set is read from chdb itself after the control plane has stopped (chdb allows one process per
data directory, so it cannot be read while the control plane runs); the admin and reporting APIs are
read while the stack runs and reported beside it as a cross-check. The JetStream stream is read too, so a
loss is attributed to the hop that lost it (before JetStream: an edge's memory; after: the collector).

Why 150 s matters (nats-kill-150s): a publish that reached JetStream just before nats-server died, but
whose PubAck never reached the edge, is published again with the same Nats-Msg-Id when the server is back.
JetStream's default dedup window is 2 minutes; ours (``replication.subjects.EVENTS_DUPLICATE_WINDOW_S``) is
30 minutes, so a retry 150 s later is still recognised (``edge_publish_duplicates``) and the stream holds
each id once (``jetstream_duplicates`` = 0). ``nats-kill-150s-2min-window`` (opt-in) sets the default window
to show the next layer: such a retry is then stored twice in JetStream and ClickHouse must drop it by event
id. Both also show that an edge keeps its events through a long outage and the collector resumes after it.

The region cut-off uses the production topology (``LocalStack(leaf_regions=...)``): a hub nats-server
(JetStream domain ``hub``) and, for region eu, a leaf nats-server with JetStream domain ``eu`` reached through a
userspace TCP proxy (``adserver.faults.TcpProxy``). eu's edges publish to eu's own events stream, so while cut
off they still get PubAcks and answer beacons 204 (``beacons_acked_while_cut_off``); the hub's ADS_EVENTS
sources that stream and catches up when the link heals.

Run ``python -m adserver.chaos --report chaos-report.json [--scenarios a,b] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import nats
from nats.js import api

from adserver.faults import (
    LaunchSpec,
    capture,
    kill9,
    pause,
    relaunch,
    resume,
)
from adserver.processes import Proc, wait_ready, wait_tcp
from adserver.scrape import samples
from adserver.stack import LocalStack, hub_stream_state, run_sync
from replication.subjects import region_events_stream

EVENTS_STREAM = "ADS_EVENTS"
COLLECTOR_DURABLE = "collector"
# Billing-relevant beacons and the prefix of the event id the edge derives from the ad's impression id
# (replication/events.py). Ad decisions are not beacons: the edge may shed them by design.
PREFIX = {"impression": "imp", "viewable": "vw", "click": "clk", "conversion": "cnv"}


# --- timing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    warmup_s: float  # traffic before the fault
    after_s: float  # traffic after the heal
    nats_stop_s: float  # SIGSTOP length
    cut_s: float  # region cut-off length
    edge_down_s: float  # how long a killed edge stays dead
    retry_s: float  # how long the client keeps retrying one beacon
    catchup_s: float  # bound on waiting for the collector to store everything

    @classmethod
    def full(cls) -> Timing:
        return cls(warmup_s=10, after_s=10, nats_stop_s=60, cut_s=60, edge_down_s=2, retry_s=30, catchup_s=150)

    @classmethod
    def quick(cls) -> Timing:
        # catch-up must still outlast the collector's ack_wait (60 s): a batch fetched by a killed collector
        # is redelivered only after it. Three seconds of traffic either side of the fault: with two, a slower
        # 2-core machine stored 96 billable events of the nats-kill-5s run, under the tests' floor of 100.
        return cls(warmup_s=3, after_s=3, nats_stop_s=10, cut_s=10, edge_down_s=1, retry_s=10, catchup_s=90)


class Progress:
    """One line per phase on stderr, prefixed with the scenario and seconds since it started."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{self.scenario} {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- the stack, with restartable processes and an optional leaf topology --------------------------------


@dataclass
class ChaosStack(LocalStack):
    """A LocalStack whose processes can be killed and started again exactly as they were (with
    ``leaf_regions``, the hub-and-leaf topology whose leaf links can be cut)."""

    specs: dict[str, LaunchSpec] = field(default_factory=dict)
    generation: int = 0

    def start(self) -> ChaosStack:
        super().start()
        # Argv and environment of every child, read back from /proc now, while all of them are alive.
        for proc in self.group.procs:
            self.specs[proc.name] = capture(proc)
        return self

    def restart(self, old: Proc) -> Proc:
        """Start a dead process again with its original argv and environment (same ports, same data)."""
        spec = self.specs[old.name]
        self.generation += 1
        new = relaunch(self.group, old, spec, self.generation)
        self.specs[new.name] = spec
        if old is self.nats:
            self.nats = new
        if old is self.control_plane:
            self.control_plane = new
        for edge in self.edges:
            if edge.proc is old:
                edge.proc = new
        return new

    def stop_processes(self) -> None:
        """Stop every process but keep the data directory, so the stored events can be read afterwards."""
        if hasattr(self, "group"):
            self.group.stop_all()
        for proxy in self.proxies.values():
            proxy.stop()


# --- publisher traffic and its history ------------------------------------------------------------------


@dataclass
class EventRecord:
    kind: str
    campaign_id: str
    edge: str
    tries: int = 0
    acked: bool = False
    last: str = ""  # the last non-acknowledging outcome (status code or error class)


@dataclass
class History:
    """What the client did and was told. Written only by the load thread; read after it has stopped (or,
    for progress lines, as plain integers that may be a moment old)."""

    events: dict[str, EventRecord] = field(default_factory=dict)
    ad_requests: int = 0
    fills: int = 0
    ad_errors: int = 0
    beacon_acks: int = 0
    beacon_failures: Counter[str] = field(default_factory=Counter)
    fills_by_edge: Counter[str] = field(default_factory=Counter)
    probes: Counter[str] = field(default_factory=Counter)  # "<edge url> <fill|status|error>" from the prober

    def counts(self) -> dict[str, int]:
        return {"ad_requests": self.ad_requests, "fills": self.fills, "ad_errors": self.ad_errors,
                "beacon_acks": self.beacon_acks, "beacon_failures": sum(self.beacon_failures.values())}


class Load:
    """Page views from ``workers`` concurrent clients: ask an edge for ads, fire an impression per ad, a
    viewable beacon for ~60%, a click for ~15% and a conversion for half of the clicks; retry a beacon that
    was not acknowledged with the same token, for up to ``retry_s``. Runs in its own thread and event loop,
    so the fault injection in the main thread can block without stalling the traffic."""

    def __init__(self, edges: list[str], campaigns: set[str], keyword: str, *, retry_s: float, workers: int = 6,
                 think_s: float = 0.02, max_inflight: int = 40, seed: int = 7) -> None:
        self.edges = edges
        self.campaigns = campaigns
        self.keyword = keyword
        self.retry_s = retry_s
        self.workers = workers
        self.think_s = think_s
        self.max_inflight = max_inflight
        self.seed = seed
        self.history = History()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float) -> None:
        """Stop starting new page views; a page in progress finishes, including its beacon retries."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"load did not stop within {timeout_s:.0f}s")
        if self.error is not None:
            raise RuntimeError("load generator failed") from self.error

    def abort(self) -> None:
        """Stop without waiting (the scenario failed; the stack is going away under the clients)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop(), in the main thread
            self.error = exc

    async def _main(self) -> None:
        # Beacon chains wait on retries (a stalled edge answers 503 until its event is durable), so the pool
        # waits for a free connection without a deadline of its own: _beacon's retry window bounds it.
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        timeout = httpx.Timeout(5.0, pool=None)
        # A browser's user agent: the edge's invalid-traffic rules mark a scripted client's events as bots,
        # and unbillable traffic would make the duplicates_billed check vacuous.
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                 "Chrome/124.0.0.0 Safari/537.36"}
        async with (httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client,
                    httpx.AsyncClient(timeout=1.0, headers=headers) as probe_client):
            # The prober has its own connections: beacons stuck retrying must not starve it of the pool.
            await asyncio.gather(self._prober(probe_client), *(self._worker(i, client) for i in range(self.workers)))

    async def _worker(self, index: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(self.seed * 1000 + index)
        h = self.history
        # Like pages in many browsers, an ad's beacons (and their retries) run on their own while the next
        # page asks for ads; a cap on chains in flight keeps a long stall from growing without bound.
        inflight: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            if len(inflight) >= self.max_inflight:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            edge = rng.choice(self.edges)
            try:
                r = await client.get(f"{edge}/v1/ads", params={
                    "placement": "chaos-page", "format": "300x250", "slots": "3", "keywords": self.keyword,
                    "geo": "DE-BE", "device": "desktop"})
            except httpx.HTTPError:
                h.ad_errors += 1
                await asyncio.sleep(0.1)
                continue
            h.ad_requests += 1
            if r.status_code != 200:
                await asyncio.sleep(0.05)
                continue
            ads = [ad for ad in r.json().get("ads", []) if ad.get("campaign_id") in self.campaigns]
            h.fills += len(ads)
            h.fills_by_edge[edge] += len(ads)
            for ad in ads:
                task = asyncio.create_task(self._ad(client, random.Random(rng.random()), ad))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            await asyncio.sleep(self.think_s)
        if inflight:  # every chain ends within its retry window
            await asyncio.gather(*inflight)

    async def _prober(self, client: httpx.AsyncClient) -> None:
        """Ask every edge for an ad ten times a second, beacons aside: whether a PoP keeps serving through a
        fault is then measured even while the pages' beacons are stuck retrying."""
        while not self._stop.is_set():
            for edge in self.edges:
                try:
                    r = await client.get(f"{edge}/v1/ads", params={
                        "placement": "chaos-probe", "format": "300x250", "slots": "1", "keywords": self.keyword})
                    outcome = "fill" if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError:
                    outcome = "error"
                self.history.probes[f"{edge} {outcome}"] += 1
            await asyncio.sleep(0.1)

    async def _ad(self, client: httpx.AsyncClient, rng: random.Random, ad: dict[str, Any]) -> None:
        if await self._beacon(client, "impression", ad, "GET", ad["impression_url"]) is None:
            return  # a page whose impression never counted does not go on to be viewed or clicked
        if rng.random() < 0.6 and ad.get("viewable_url"):
            await self._beacon(client, "viewable", ad, "GET", ad["viewable_url"])
        if rng.random() < 0.15:
            clicked = await self._beacon(client, "click", ad, "GET", ad["click_url"], ok=(302,))
            if clicked is not None and rng.random() < 0.5:
                adclid = parse_qs(urlsplit(clicked.headers.get("location", "")).query).get("adclid", [""])[0]
                parts = urlsplit(ad["impression_url"])
                await self._beacon(client, "conversion", ad, "POST",
                                   f"{parts.scheme}://{parts.netloc}/v1/track/conversion",
                                   body={"conversion_id": f"order-{ad['ad_id']}", "adclid": adclid,
                                         "value_micros": 25_000_000})

    async def _beacon(self, client: httpx.AsyncClient, kind: str, ad: dict[str, Any], method: str, url: str, *,
                      body: dict[str, Any] | None = None, ok: tuple[int, ...] = (204,)) -> httpx.Response | None:
        """Send until acknowledged; None when the edge never acknowledged it within ``retry_s``."""
        event_id = f"{PREFIX[kind]}:{ad['ad_id']}"
        parts = urlsplit(url)
        rec = self.history.events.setdefault(
            event_id, EventRecord(kind, ad["campaign_id"], f"{parts.scheme}://{parts.netloc}"))
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            rec.tries += 1
            try:
                r = await client.request(method, url, json=body)
                if r.status_code in ok:
                    rec.acked = True
                    self.history.beacon_acks += 1
                    return r
                rec.last = str(r.status_code)
                if r.status_code not in (429, 502, 503, 504):
                    self.history.beacon_failures[rec.last] += 1
                    return None  # a definite refusal (a 4xx names why): retrying would not change it
            except httpx.HTTPError as exc:
                rec.last = type(exc).__name__
            self.history.beacon_failures[rec.last] += 1
            if time.monotonic() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- probes: what the processes report ------------------------------------------------------------------


def edge_events(url: str) -> dict[str, int] | None:
    """The edge's publisher counters (adserver_events{state=...}), or None when it does not answer."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    return {state: int(n) for state, n in samples(text, "adserver_events", "state").items()}


async def _consumer_state(nats_url: str) -> tuple[int, int]:
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.consumer_info(EVENTS_STREAM, COLLECTOR_DURABLE, timeout=2)
        stream = await js.stream_info(EVENTS_STREAM)
        # Not acknowledged yet, counted from the ack floor: num_pending + num_ack_pending misses the messages
        # between an ack_wait expiry and their redelivery (seen: a "caught up" 5 s after a collector kill).
        unacked_tail = max(0, int(stream.state.last_seq or 0) - int(info.ack_floor.stream_seq or 0))
        # Messages still in a region's stream that the hub has not sourced yet count as not delivered.
        lag = sum(int(src.lag or 0) for src in stream.sources or [])
        return unacked_tail + lag, int(info.num_ack_pending or 0)
    finally:
        await nc.close()


def consumer_state(nats_url: str) -> tuple[int, int] | None:
    """(messages not yet acknowledged by the collector, including those the hub has yet to source from a
    region's stream; delivered but not acknowledged), None if unknown."""
    try:
        return asyncio.run(_consumer_state(nats_url))
    except Exception:
        return None


async def _scan_stream(nats_url: str, stream: str = EVENTS_STREAM) -> tuple[int, Counter[str]]:
    """Every event id (Nats-Msg-Id) stored in an events stream, with how many times, decisions skipped."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("ads.ev.>", stream=stream, config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30,
            max_ack_pending=-1))
        ids: Counter[str] = Counter()
        seen = 0
        while seen < total:
            try:
                msgs = await sub.fetch(2000, timeout=3)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                seen += 1
                if ".decision" not in msg.subject:  # decisions: batched many to a message, not billed
                    ids[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
        return total, ids
    finally:
        await nc.close()


async def _scan_regional_streams(stack: LocalStack) -> set[str]:
    """Every event id in the regions' own streams (each read from the server that holds it)."""
    ids: set[str] = set()
    for region in stack.regions:
        _, found = await _scan_stream(stack.region_nats_url.get(region, stack.nats_url),
                                      region_events_stream(region))
        ids.update(found)
    return ids


async def _unsourced(stack: LocalStack) -> set[str]:
    """Event ids a region's stream holds that the hub's stream does not (yet)."""
    regional = await _scan_regional_streams(stack)
    _, hub = await _scan_stream(stack.nats_url)
    return regional - hub.keys()


async def _set_dedup_window(nats_url: str, seconds: int) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():  # the hub's ADS_EVENTS and the regions' ADS_EVENTS_<region>
            if info.config.name.startswith(EVENTS_STREAM):
                info.config.duplicate_window = seconds
                await js.update_stream(info.config)
    finally:
        await nc.close()


_DUMP_CHDB = r"""
import json, sys
from chdb.session import Session
from control_plane.storage import EVENTS_TABLE, ROLLUP_TABLE
session = Session(sys.argv[1] + "?output_format_json_quote_64bit_integers=0")
def rows(sql):
    text = str(session.query(sql, "JSONCompact").data())
    return json.loads(text)["data"] if text else []
out = {
    "events": rows(f"SELECT event_id, type, campaign_id, cost_micros, invalid_reason FROM {EVENTS_TABLE} "
                   "WHERE type != 'decision'"),
    "totals": rows(f"SELECT count(), uniqExact(event_id) FROM {EVENTS_TABLE}")[0],
    "spend": rows(f"SELECT campaign_id, sum(spend_micros) FROM {ROLLUP_TABLE} GROUP BY campaign_id"),
    # What the reports read, per campaign: gross impressions, clicks, conversions and valid viewables.
    "rollup": rows(f"SELECT campaign_id, sum(impressions) + sum(invalid_impressions), sum(clicks) + "
                   f"sum(invalid_clicks), sum(conversions) + sum(invalid_conversions), sum(viewable) "
                   f"FROM {ROLLUP_TABLE} GROUP BY campaign_id"),
}
session.close()
json.dump(out, sys.stdout)
"""


def dump_chdb(path: Path) -> dict[str, Any]:
    """Read the stored events from a stopped control plane's chdb directory, in a child process (chdb
    keeps one data path per process, and each scenario has its own)."""
    done = subprocess.run([sys.executable, "-c", _DUMP_CHDB, str(path)], capture_output=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reading {path} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(done.stdout)


def wait_caught_up(stack: ChaosStack, limit_s: float, say: Callable[[str], None]) -> tuple[bool, float]:
    """Until no edge buffers an event, the collector's consumer has nothing pending or unacknowledged, and
    the stored count has stopped moving; bounded by ``limit_s``."""
    started = time.monotonic()
    last_unique: int | None = None
    next_line = started + 5
    while True:
        buffers = [edge_events(e.url) for e in stack.edges]
        buffered = None if any(b is None for b in buffers) else sum(b.get("buffered", 0) for b in buffers if b)
        consumer = consumer_state(stack.nats_url)
        if consumer is not None and consumer[0] == 0:
            try:  # a just-healed leaf source reports lag 0 before it re-attaches: compare counts as well
                behind = stack.sources_behind(run_sync(hub_stream_state(stack.nats_url))[0])
            except Exception:
                behind = None
            consumer = None if behind is None else (behind, consumer[1])
        try:
            unique: int | None = int(stack.admin_stats()["store"]["unique_events"])
        except (httpx.HTTPError, KeyError, ValueError):
            unique = None
        done = (buffered == 0 and consumer == (0, 0) and unique is not None and unique == last_unique)
        last_unique = unique
        if done:
            # The hub's source lag is not enough either: after nats-server was frozen the source reads lag 0
            # while it waits to re-attach, with events still only in a region's stream. Compare the ids.
            try:
                unsourced: int | None = len(run_sync(_unsourced(stack)))
            except Exception:
                unsourced = None
            done = unsourced == 0
            if not done:
                consumer = (f"{unsourced} events only in a region's stream", consumer)
        waited = time.monotonic() - started
        if done:
            return True, waited
        if waited > limit_s:
            say(f"NOT caught up after {waited:.0f}s: edge buffers {buffered}, consumer (pending, unacked) "
                f"{consumer}, stored {unique}")
            return False, waited
        if time.monotonic() >= next_line:
            say(f"catching up: edge buffers {buffered}, consumer (pending, unacked) {consumer}, stored {unique}")
            next_line += 5
        time.sleep(0.5)


# --- campaigns ------------------------------------------------------------------------------------------


def launch_campaigns(stack: ChaosStack, keyword: str) -> tuple[dict[str, str], dict[str, str]]:
    """One CPM, one CPC and one CPA campaign, each from its own advertiser (the auction gives one slot per
    advertiser), all matching ``keyword``, with budgets no run can exhaust: spend is then decided by the
    events alone. Returns ({campaign id: bid type}, {campaign id: advertiser token})."""
    bodies = [
        {"bid_type": "cpm", "max_bid_micros": 5_000_000},
        {"bid_type": "cpc", "max_bid_micros": 1_000_000},
        {"bid_type": "cpa", "max_bid_micros": 20_000_000, "prior_cvr": 0.1},
    ]
    kinds: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for extra in bodies:
        token = stack.create_advertiser(f"chaos {extra['bid_type']}")[1]
        cid = stack.launch_campaign(
            token, keyword, name=f"chaos {extra['bid_type']}",
            creatives=[{"headline": f"Chaos {extra['bid_type']}", "size": "300x250", "prior_ctr": 0.05,
                        "image_url": "https://img.example.com/chaos.png",
                        "landing_url": "https://shop.example.com/chaos"}], **extra)
        kinds[cid], tokens[cid] = extra["bid_type"], token
    return kinds, tokens


def api_counts(stack: ChaosStack, tokens: dict[str, str]) -> dict[str, int]:
    """Gross stored counts per beacon type as the reporting API shows them (valid + invalid)."""
    out: Counter[str] = Counter()
    for cid, token in tokens.items():
        r = httpx.get(f"{stack.cp_url}/v1/campaigns/{cid}/metrics", params={"granularity": "hour"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
        r.raise_for_status()
        t = r.json()["totals"]
        out["impression"] += t.get("impressions", 0) + t.get("invalid_impressions", 0)
        out["click"] += t.get("clicks", 0) + t.get("invalid_clicks", 0)
        out["conversion"] += t.get("conversions", 0) + t.get("invalid_conversions", 0)
        out["viewable"] += t.get("viewable", 0)
        out["spend_micros"] += t.get("spend_micros", 0)
    return dict(out)


# --- accounting -----------------------------------------------------------------------------------------


def account(history: History, dump: dict[str, Any], campaigns: set[str],
            jetstream_ids: Counter[str] | None, regional_ids: set[str] | None = None) -> dict[str, Any]:
    """Jepsen-style accounting of one run: the client's history against the stored rows. Pure."""
    attempted = set(history.events)
    acked = {i for i, e in history.events.items() if e.acked}
    rows: Counter[str] = Counter()
    billable_rows: Counter[str] = Counter()
    cost_of: dict[str, int] = {}
    stored_by_type: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    valid_viewable = 0
    for event_id, kind, campaign_id, cost, reason in dump["events"]:
        if campaign_id not in campaigns:
            continue
        if rows[event_id] == 0:
            stored_by_type[kind] += 1
            if reason:
                invalid[reason] += 1
            elif kind == "viewable":
                valid_viewable += 1
        rows[event_id] += 1
        if int(cost) > 0 and not reason:
            billable_rows[event_id] += 1
            cost_of.setdefault(event_id, int(cost))
    stored = set(rows)
    lost = acked - stored
    spend = sum(int(s) for cid, s in dump["spend"] if cid in campaigns)
    unique_billable = sum(cost_of.values())
    billed_twice = sum(n - 1 for n in billable_rows.values())
    spend_delta = spend - unique_billable
    total_rows, unique_rows = (int(v) for v in dump["totals"])
    # Events stored in the raw table but missing from the rollup the reports and spend read (or the other
    # way round, if negative). Valid viewables only: the rollup does not count invalid ones.
    rollup: Counter[str] = Counter()
    for cid, imps, clicks, convs, viewable in dump.get("rollup", []):
        if cid in campaigns:
            rollup.update({"impression": int(imps), "click": int(clicks), "conversion": int(convs),
                           "viewable": int(viewable)})
    raw_counts = {**stored_by_type, "viewable": valid_viewable}
    rollup_missing = {k: raw_counts.get(k, 0) - rollup.get(k, 0) for k in PREFIX
                      if raw_counts.get(k, 0) != rollup.get(k, 0)}
    result: dict[str, Any] = {
        "attempted": len(attempted),
        "acked": len(acked),
        "stored": len(stored),
        "lost": len(lost),
        "unexpected": len(stored - acked),
        "phantom": len(stored - attempted),
        "raw_duplicates": total_rows - unique_rows,
        "duplicates_billed": 0 if spend_delta <= 0 else max(billed_twice, 1),
        "spend_micros": spend,
        "spend_delta_micros": spend_delta,  # stored spend minus the sum of unique billable costs
        "rollup_missing": rollup_missing,  # per type: raw stored events the reporting rollup lacks
        "not_acked": len(attempted - acked),
        "stored_billable": len(billable_rows),
        "stored_by_type": dict(stored_by_type),
        "stored_invalid": dict(invalid),
        "lost_by_type": dict(Counter(history.events[i].kind for i in lost)),
        "lost_sample": sorted(lost)[:10],
    }
    if jetstream_ids is not None:
        in_js = set(jetstream_ids)
        result["jetstream_duplicates"] = sum(n - 1 for n in jetstream_ids.values())
        result["lost_before_jetstream"] = len(lost - in_js)  # acked by the edge, never reached the hub's stream
        result["lost_after_jetstream"] = len(lost & in_js)  # in JetStream, never stored
        if regional_ids is not None:  # in a region's stream, never sourced into the hub's
            result["lost_in_region_stream"] = len((lost - in_js) & regional_ids)
    return result


# --- scenarios ------------------------------------------------------------------------------------------


Fault = Callable[[ChaosStack, Load, Timing, Callable[[str], None]], dict[str, Any]]


def _sleep_with_progress(seconds: float, say: Callable[[str], None], load: Load, what: str) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(10.0, left))
        if end - time.monotonic() > 0.5:
            say(f"{what}: {end - time.monotonic():.0f}s left; client so far {load.history.counts()}")


def _wait_all_ready(stack: ChaosStack, timeout_s: float) -> None:
    assert stack.control_plane is not None
    wait_ready(f"{stack.cp_url}/readyz", stack.control_plane, timeout=timeout_s)
    for edge in stack.edges:
        wait_ready(f"{edge.url}/readyz", edge.proc, timeout=timeout_s)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _kill_edge(stack: ChaosStack, timing: Timing, say: Callable[[str], None], *, stall_jetstream: bool
               ) -> dict[str, Any]:
    edge = stack.edges[0]
    name = edge.proc.name
    # The kill should land while the edge holds events it has acknowledged to clients but JetStream has not
    # acknowledged to it: that is the moment the buffer's durability is tested. Unaided, that window is a
    # PubAck round trip (about a millisecond with fsync), so a plain kill finds it only sometimes. With
    # ``stall_jetstream`` nats-server is paused (under a second, bounded) until the edge's buffer holds at
    # least 30 events, which makes the moment certain instead of lucky.
    buffered = 0
    stalled = False
    if stall_jetstream:
        assert stack.nats is not None
        pause(stack.nats)
        stalled = True
    try:
        deadline = time.monotonic() + (1.0 if stall_jetstream else 5.0)
        while time.monotonic() < deadline:
            buffered = (edge_events(edge.url) or {}).get("buffered", 0)
            if buffered >= (30 if stall_jetstream else 1):
                break
        kill9(edge.proc)
    finally:
        if stalled:
            assert stack.nats is not None
            resume(stack.nats)
    say(f"kill -9 {name} and its workers (its publisher reported {buffered} unacknowledged events just before"
        f"{'; nats-server was paused until then' if stalled else ''})")
    time.sleep(timing.edge_down_s)
    new = stack.restart(edge.proc)
    wait_ready(f"{edge.url}/readyz", new, timeout=60)
    say(f"{edge.region}/{edge.pop} restarted on the same port")
    return {"killed": name, "buffered_seen_before_kill": buffered, "jetstream_stalled": stalled,
            "down_s": timing.edge_down_s}


def fault_edge_kill(stack: ChaosStack, load: Load, timing: Timing, say: Callable[[str], None]) -> dict[str, Any]:
    return _kill_edge(stack, timing, say, stall_jetstream=True)


def fault_edge_kill_plain(stack: ChaosStack, load: Load, timing: Timing,
                          say: Callable[[str], None]) -> dict[str, Any]:
    return _kill_edge(stack, timing, say, stall_jetstream=False)


def _nats_kill(down_s: float) -> Fault:
    def fault(stack: ChaosStack, load: Load, timing: Timing, say: Callable[[str], None]) -> dict[str, Any]:
        assert stack.nats is not None
        kill9(stack.nats)
        say(f"kill -9 nats-server; restarting it in {down_s:.0f}s")
        _sleep_with_progress(down_s, say, load, "nats-server down")
        new = stack.restart(stack.nats)
        wait_tcp("127.0.0.1", _port_of(stack.nats_url), new, timeout=30)
        say("nats-server restarted (same store directory and port)")
        _wait_all_ready(stack, 60)
        return {"down_s": down_s}
    return fault


def fault_nats_stop(stack: ChaosStack, load: Load, timing: Timing, say: Callable[[str], None]) -> dict[str, Any]:
    assert stack.nats is not None
    pause(stack.nats)
    say(f"SIGSTOP nats-server for {timing.nats_stop_s:.0f}s")
    try:
        _sleep_with_progress(timing.nats_stop_s, say, load, "nats-server stopped")
    finally:
        resume(stack.nats)
    say("SIGCONT nats-server")
    return {"stopped_s": timing.nats_stop_s}


def fault_collector_kill(stack: ChaosStack, load: Load, timing: Timing,
                         say: Callable[[str], None]) -> dict[str, Any]:
    cp = stack.control_plane
    assert cp is not None
    # "Mid-batch": the consumer has handed the collector messages it has not acknowledged (fetched, being
    # inserted, or inserted and not yet acked). A fetch-insert-ack cycle takes milliseconds, so seeing
    # unacked messages is not enough: by the time the kill lands the acks may be out. Freeze the control
    # plane (SIGSTOP), ask the server again, and kill only if the batch is still unacknowledged then.
    unacked = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not unacked:
        state = consumer_state(stack.nats_url)
        if state is None or state[1] == 0:
            continue
        pause(cp)
        frozen = consumer_state(stack.nats_url)
        if frozen is not None and frozen[1] > 0:
            unacked = frozen[1]
        else:
            resume(cp)
    kill9(cp)  # SIGKILL ends a stopped process too
    say(f"kill -9 control plane + collector with {unacked} delivered, unacknowledged messages")
    time.sleep(1.0)
    new = stack.restart(stack.control_plane)
    wait_ready(f"{stack.cp_url}/readyz", new, timeout=60)
    say("control plane restarted (same chdb directory and port)")
    return {"unacked_at_kill": unacked}


def _acked_by(history: History, edge_url: str) -> int:
    """Beacons this edge has acknowledged so far (read from the load thread's records; may be a moment old)."""
    return sum(1 for r in list(history.events.values()) if r.acked and r.edge == edge_url)


def fault_region_cut(stack: ChaosStack, load: Load, timing: Timing, say: Callable[[str], None]) -> dict[str, Any]:
    region = stack.leaf_regions[0]
    proxy = stack.proxies[region]
    edge = next(e for e in stack.edges if e.region == region)
    probes = load.history.probes
    before = (probes[f"{edge.url} fill"], sum(n for k, n in probes.items() if k.startswith(f"{edge.url} ")))
    acked_before = _acked_by(load.history, edge.url)
    proxy.cut()
    say(f"region {region} cut off from the hub for {timing.cut_s:.0f}s")
    try:
        _sleep_with_progress(timing.cut_s, say, load, f"{region} cut off")
    finally:
        buffered = (edge_events(edge.url) or {}).get("buffered", 0)
        fills = probes[f"{edge.url} fill"] - before[0]
        asked = sum(n for k, n in probes.items() if k.startswith(f"{edge.url} ")) - before[1]
        acked_cut = _acked_by(load.history, edge.url) - acked_before
        proxy.heal()
    say(f"link healed; while cut off {region}'s edge acknowledged {acked_cut} beacons (held by its leaf's "
        f"stream), held {buffered} unacknowledged events and filled {fills} of {asked} probe ad requests")
    return {"region": region, "cut_s": timing.cut_s, "buffered_at_heal": buffered,
            "beacons_acked_while_cut_off": acked_cut,
            "probe_fills_while_cut_off": fills, "probe_requests_while_cut_off": asked,
            "leaf_reconnects_refused": proxy.refused}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fault: Fault
    full_only: bool = False
    leaf_regions: tuple[str, ...] = ()
    opt_in: bool = False  # runs only when named with --scenarios
    # Set the events stream's dedup window to this after start-up (JetStream's default is 120 s; ours 30 min).
    dedup_window_s: int | None = None


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("edge-kill", "kill -9 an edge PoP mid-load while it holds acknowledged, unpublished events "
                          "(JetStream held back for <1 s to make that certain), restart it on the same port",
             fault_edge_kill),
    Scenario("edge-kill-plain", "kill -9 an edge PoP mid-load at a moment its publisher reports buffered events "
                                "(no help: finds the window only sometimes)", fault_edge_kill_plain,
             full_only=True),
    Scenario("nats-kill-5s", "kill -9 nats-server, restart it after 5 s (same store, same port)", _nats_kill(5)),
    Scenario("nats-kill-150s", "kill -9 nats-server, restart it after 150 s: retries arrive after JetStream's "
                               "default 2-minute dedup window (ours is 30 min)", _nats_kill(150), full_only=True),
    Scenario("nats-kill-150s-2min-window", "as nats-kill-150s, with the stream's dedup window set to "
                                           "JetStream's default 2 minutes: duplicates get past JetStream, and "
                                           "ClickHouse must drop them", _nats_kill(150), full_only=True,
             opt_in=True, dedup_window_s=120),
    Scenario("nats-stop", "SIGSTOP nats-server (60 s; 10 s quick), then SIGCONT", fault_nats_stop),
    Scenario("collector-kill", "kill -9 the control plane (the collector) with a batch in flight, restart it "
                               "on the same chdb directory and port", fault_collector_kill),
    Scenario("region-cut", "cut region eu's leaf-node link to the hub (60 s; 10 s quick), then heal",
             fault_region_cut, leaf_regions=("eu",)),
)}


def run_scenario(scenario: Scenario, timing: Timing) -> dict[str, Any]:
    say = Progress(scenario.name)
    started = time.monotonic()
    keyword = f"chaos{random.randrange(10**6)}"
    say(f"starting nats-server{'s (hub + leaf)' if scenario.leaf_regions else ''}, control plane and edges")
    stack = ChaosStack(regions=("eu", "us"), leaf_regions=scenario.leaf_regions).start()
    extra: dict[str, Any] = {}
    load: Load | None = None
    try:
        kinds, tokens = launch_campaigns(stack, keyword)
        if scenario.dedup_window_s is not None:
            # Nothing re-runs ensure_jetstream (which would restore 30 min) until a process restarts, and
            # this scenario restarts only nats-server, which keeps the stream's stored config.
            asyncio.run(_set_dedup_window(stack.nats_url, scenario.dedup_window_s))
            extra["dedup_window_s"] = scenario.dedup_window_s
            say(f"events stream dedup window set to {scenario.dedup_window_s}s")
        load = Load([e.url for e in stack.edges], set(kinds), keyword, retry_s=timing.retry_s).start()
        say(f"traffic on {len(stack.edges)} edges for {timing.warmup_s:.0f}s before the fault")
        time.sleep(timing.warmup_s)
        before = load.history.counts()
        extra["fault"] = scenario.fault(stack, load, timing, say)
        extra["client_during_fault"] = {k: v - before[k] for k, v in load.history.counts().items()}
        say(f"traffic for {timing.after_s:.0f}s after the heal")
        time.sleep(timing.after_s)
        load.stop(timeout_s=timing.retry_s * 6 + 30)
        say(f"traffic stopped: {load.history.counts()}; waiting for the collector to catch up")
        caught_up, waited = wait_caught_up(stack, timing.catchup_s, say)
        say(f"caught up in {waited:.1f}s" if caught_up else "continuing without a full catch-up")
        try:
            js_total, js_ids = asyncio.run(_scan_stream(stack.nats_url))
            regional_ids: set[str] | None = asyncio.run(_scan_regional_streams(stack))
        except Exception as exc:
            js_total, js_ids, regional_ids = -1, None, None
            say(f"could not read the JetStream streams: {exc!r}")
        publishers = [edge_events(e.url) or {} for e in stack.edges]
        try:
            admin = stack.admin_stats()
            extra["api"] = {"reporting": api_counts(stack, tokens), "admin_store": admin["store"],
                            "collector": admin.get("collector")}
        except httpx.HTTPError as exc:
            extra["api"] = {"error": repr(exc)}
        say("stopping the processes and reading the stored events from chdb")
        stack.stop_processes()
        assert stack.data_dir is not None
        dump = dump_chdb(stack.data_dir / "chdb")
    finally:
        if load is not None:
            load.abort()
        stack.stop()
    assert load is not None
    result = {"name": scenario.name, "description": scenario.description,
              **account(load.history, dump, set(kinds), js_ids, regional_ids)}
    result.update({
        "caught_up": caught_up,
        "catchup_s": round(waited, 1),
        "jetstream_messages": js_total,
        # Publishes JetStream answered "duplicate": a retry of a message that had in fact landed.
        "edge_publish_duplicates": sum(p.get("duplicates", 0) for p in publishers),
        "edge_publish_retries": sum(p.get("retries", 0) for p in publishers),
        # Events of redelivered batches that the store already had: > 0 when a collector died after its
        # insert and before its ack, and the retry was dropped by event id.
        "collector_duplicates_dropped": ((extra.get("api") or {}).get("collector") or {}).get("duplicates_dropped"),
        "client": {**load.history.counts(), "failures": dict(load.history.beacon_failures),
                   "probes": dict(load.history.probes)},
        **extra,
        "seconds": round(time.monotonic() - started, 1),
    })
    result["ok"] = (result["lost"] == 0 and result["duplicates_billed"] == 0 and result["phantom"] == 0
                    and caught_up)
    say(f"attempted {result['attempted']}, acked {result['acked']}, stored {result['stored']}, lost "
        f"{result['lost']}, duplicates billed {result['duplicates_billed']}, raw duplicates "
        f"{result['raw_duplicates']} -> {'ok' if result['ok'] else 'FAIL'}")
    return result


# --- the suite ------------------------------------------------------------------------------------------

COLUMNS = ("name", "attempted", "acked", "stored", "lost", "duplicates_billed", "raw_duplicates", "seconds",
           "notes")


def notes(r: dict[str, Any]) -> str:
    """Anomalies beside the headline numbers: what else a reader of the table should look at."""
    out = []
    if r.get("error"):
        out.append(f"run failed: {r['error'][:120]}")
    if not r.get("caught_up", True):
        out.append("collector never caught up")
    if r.get("phantom"):
        out.append(f"{r['phantom']} phantom")
    if r.get("lost"):
        out.append(f"lost {r.get('lost_by_type')}, {r.get('lost_before_jetstream')} not in the hub's stream "
                   f"({r.get('lost_in_region_stream')} of them in a region's)")
    if r.get("rollup_missing"):
        out.append(f"rollup lacks {r['rollup_missing']} ({r.get('spend_delta_micros')} micros spend)")
    elif r.get("spend_delta_micros"):
        out.append(f"spend off by {r['spend_delta_micros']} micros")
    if r.get("catchup_s", 0) > 30:
        out.append(f"catch-up {r['catchup_s']:.0f}s")
    return "; ".join(out)


def table(results: list[dict[str, Any]]) -> str:
    rows = [COLUMNS, *[tuple(notes(r) if c == "notes" else str(r.get(c, "")) for c in COLUMNS) for r in results]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = (0, len(COLUMNS) - 1)  # name and notes read left to right; numbers line up on the right
    lines = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_suite(names: list[str], *, quick: bool) -> list[dict[str, Any]]:
    timing = Timing.quick() if quick else Timing.full()
    results: list[dict[str, Any]] = []
    for name in names:
        try:
            results.append(run_scenario(SCENARIOS[name], timing))
        except Exception as exc:  # one broken run must not hide the others' results
            print(f"[{name}] failed: {exc!r}", file=sys.stderr, flush=True)
            results.append({"name": name, "error": repr(exc), "ok": False})
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", help="write {scenarios: [...]} as JSON to this file")
    parser.add_argument("--scenarios", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true",
                        help="short faults and waits (10 s stops and cuts; skips nats-kill-150s unless named)")


def run_from_args(args: argparse.Namespace) -> int:
    if args.scenarios:
        names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
    else:
        names = [n for n, s in SCENARIOS.items() if not s.opt_in and not (args.quick and s.full_only)]
    started = time.monotonic()
    results = run_suite(names, quick=args.quick)
    print(table(results))
    print(f"\n{sum(r['ok'] for r in results)}/{len(results)} scenarios with lost = 0 and duplicates_billed = 0 "
          f"({time.monotonic() - started:.0f}s)")
    if args.report:
        Path(args.report).write_text(json.dumps({"quick": args.quick, "scenarios": results}, indent=2))
        print(f"report written to {args.report}")
    return 0 if all(r["ok"] for r in results) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="adserver chaos", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(run_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
