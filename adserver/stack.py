"""A whole local deployment on one machine: nats-server, control plane (+ collector on chdb), edge PoPs.

This is the embedded default of ARCHITECTURE §2: one nats-server holds every stream. With ``leaf_regions``
it is the production topology instead: a hub nats-server plus, for each of those regions, a leaf nats-server
with its own JetStream domain, linked to the hub through a ``TcpProxy`` that can cut the region off; that
region's edges connect to their leaf, the control plane and the other regions' edges to the hub.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
from nats.js import JetStreamContext

from adserver.faults import TcpProxy, start_nats_hub, start_nats_leaf
from adserver.processes import (
    Proc,
    ProcessGroup,
    adserver_argv,
    free_port,
    start_nats,
    wait_ready,
)
from adserver.scrape import samples
from replication import subjects as S

T = TypeVar("T")


@dataclass
class EdgeProc:
    region: str
    pop: str
    url: str
    proc: Proc


@dataclass
class LocalStack:
    regions: tuple[str, ...] = ("eu", "us")
    pops_per_region: int = 1
    edge_workers: int = 1
    data_dir: Path | None = None
    # Extra environment for every edge. By default the invalid-traffic rules are off: the tests and the demo
    # drive the edges with scripted HTTP clients from one address, which is exactly what the rules flag.
    edge_env: dict[str, str] = field(default_factory=lambda: {"ADSERVER_EDGE_IVT_ENABLED": "false"})
    cp_env: dict[str, str] = field(default_factory=dict)  # extra environment for the control plane
    leaf_regions: tuple[str, ...] = ()
    proxies: dict[str, TcpProxy] = field(default_factory=dict)  # region -> its leaf link, cuttable
    leaf_nats: dict[str, Proc] = field(default_factory=dict)
    region_nats_url: dict[str, str] = field(default_factory=dict)
    group: ProcessGroup = field(init=False)
    nats_url: str = ""
    cp_url: str = ""
    admin_token: str = ""
    signing_keys: str = ""
    edges: list[EdgeProc] = field(default_factory=list)
    nats: Proc | None = None
    control_plane: Proc | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> LocalStack:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="adserver-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.group = ProcessGroup(self.data_dir)
        try:
            self._start_nats()
            self.admin_token = secrets.token_urlsafe(24)
            self.signing_keys = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
            cp_port = free_port()
            self.cp_url = f"http://127.0.0.1:{cp_port}"
            self.control_plane = self.group.start(
                "control-plane",
                adserver_argv("control-plane", "--port", str(cp_port)),
                {
                    "ADSERVER_NATS_URL": self.nats_url,
                    "ADSERVER_CP_REGIONS": ",".join(self.regions),
                    "ADSERVER_CP_STORE_URL": f"chdb://{self.data_dir / 'chdb'}",
                    "ADSERVER_CP_ADMIN_TOKEN": self.admin_token,
                    "ADSERVER_CP_LEAF_REGIONS": ",".join(self.leaf_regions),
                    **self.cp_env,
                },
            )
            wait_ready(f"{self.cp_url}/readyz", self.control_plane, timeout=60)
            for region in self.regions:
                for i in range(self.pops_per_region):
                    self.start_edge(region, f"pop{i + 1}")
            for edge in self.edges:
                wait_ready(f"{edge.url}/readyz", edge.proc, timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nats(self) -> None:
        """One nats-server; or a hub plus, per leaf region, a leaf node behind a TCP proxy that can be cut."""
        assert self.data_dir is not None
        if not self.leaf_regions:
            self.nats, self.nats_url = start_nats(self.group, self.data_dir / "jetstream")
            return
        leaf_port = free_port()
        self.nats, self.nats_url = start_nats_hub(self.group, self.data_dir / "jetstream", port=free_port(),
                                                  leaf_port=leaf_port)
        for region in self.leaf_regions:
            proxy = self.proxies[region] = TcpProxy("127.0.0.1", leaf_port).start()
            proc, url = start_nats_leaf(self.group, region, self.data_dir / f"jetstream-{region}",
                                        hub_leaf_addr=proxy.url_host_port)
            self.leaf_nats[region], self.region_nats_url[region] = proc, url
            asyncio.run(wait_hub_reachable(url, timeout_s=15))

    def start_edge(self, region: str, pop: str, workers: int | None = None,
                   signing_keys: str | None = None) -> EdgeProc:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        leaf = self.region_nats_url.get(region)
        proc = self.group.start(
            f"edge-{region}-{pop}",
            adserver_argv("edge", "--port", str(port), "--workers", str(workers or self.edge_workers)),
            {
                "ADSERVER_NATS_URL": leaf or self.nats_url,
                "ADSERVER_EDGE_HUB_DOMAIN": "hub" if leaf else "",
                "ADSERVER_EDGE_REGION": region,
                "ADSERVER_EDGE_POP": pop,
                "ADSERVER_EDGE_SIGNING_KEYS": signing_keys or self.signing_keys,
                "ADSERVER_EDGE_PUBLIC_URL": url,
                **self.edge_env,
            },
        )
        edge = EdgeProc(region, pop, url, proc)
        self.edges.append(edge)
        return edge

    @functools.cached_property
    def http(self) -> httpx.Client:
        """One HTTP client for every call to the stack: ``httpx.get`` and friends build a client per call,
        56 ms each here, most of it loading CA certificates (the click model tests went from 65 to 17 s; one-off)."""
        return httpx.Client(timeout=30)

    def create_advertiser(self, name: str) -> tuple[str, str]:
        from control_plane.admin import create_advertiser

        return run_sync(create_advertiser(self.nats_url, name))

    def explain(self, token: str | None, **params: str) -> httpx.Response:
        """A dry run of the first edge's auction (``/v1/ads`` with ``explain=1``) for ``params``, in the scope of
        ``token``: the admin token, an advertiser's postback token, or none (refused)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(f"{self.edges[0].url}/v1/ads", params={"explain": "1", **params}, headers=headers,
                             timeout=5)

    def launch_campaign(self, token: str, keyword: str, **fields: object) -> str:
        """Create, submit and approve a campaign targeting ``keyword`` (one 300x250 creative, a budget no run
        exhausts, unless ``fields`` say otherwise); returns its id once every edge serves it."""
        h = {"Authorization": f"Bearer {token}"}
        body = {"name": keyword, "bid_type": "cpm", "max_bid_micros": 2_000_000, "daily_budget_micros": 10**11,
                "total_budget_micros": 10**11, "timezone": "UTC", "pacing": "asap",
                "start": (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat(),
                "targeting": {"keywords": [keyword]},
                "creatives": [{"headline": keyword, "size": "300x250", "image_url": "https://img.example.com/a.png",
                               "landing_url": "https://shop.example.com/"}], **fields}
        r = self.http.post(f"{self.cp_url}/v1/campaigns", json=body, headers=h, timeout=10)
        r.raise_for_status()
        cid = r.json()["id"]
        r = self.http.post(f"{self.cp_url}/v1/campaigns/{cid}/submit", headers=h, timeout=10)
        r.raise_for_status()
        if r.json()["status"] != "active":
            raise RuntimeError(f"campaign {keyword} not approved: {r.json().get('review')}")
        deadline = time.monotonic() + 20
        pending = {e.url for e in self.edges}
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sorted(pending)} never served campaign {cid}")
            for url in list(pending):
                if cid in self.http.get(f"{url}/readyz", timeout=2).json().get("revisions", {}):
                    pending.discard(url)
            time.sleep(0.05)
        return cid

    def admin_stats(self) -> dict:
        r = self.http.get(f"{self.cp_url}/v1/admin/stats", headers={"Authorization": f"Bearer {self.admin_token}"})
        r.raise_for_status()
        return r.json()

    def edge_events(self) -> tuple[int, int]:
        """(events the edges had JetStream acknowledge, minus acks of retries it already held; events still
        buffered at the edges), read from every edge's /metrics."""
        published = buffered = 0
        for edge in self.edges:
            events = samples(self.http.get(f"{edge.url}/metrics", timeout=5).text, "adserver_events", "state")
            published += int(events.get("acked", 0)) - int(events.get("duplicates", 0))
            buffered += int(events.get("buffered", 0))
        return published, buffered

    def wait_stored(self, timeout: float = 30, every: float = 0.3) -> tuple[bool, int, dict]:
        """Poll until ClickHouse holds every event JetStream holds: no edge buffers an event, the hub has
        sourced every region's stream, and the store's unique events equal the events in the hub stream (decision
        batches counted by the events they carry, ``S.events_in``; the hub drops a copy another region's
        stream also took, by Nats-Msg-Id). Returns (caught up,
        events in the hub stream, admin stats at the last poll); never raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            _, buffered = self.edge_events()
            in_hub, lag = run_sync(hub_stream_state(self.nats_url))
            behind = self.sources_behind(in_hub)
            stats = self.admin_stats()
            caught_up = buffered == 0 and lag == 0 and behind == 0 and stats["store"]["unique_events"] == in_hub
            if caught_up or time.monotonic() >= deadline:
                return caught_up, in_hub, stats
            time.sleep(every)

    def sources_behind(self, in_hub: int) -> int:
        """Events the regions' streams hold beyond what the hub stream holds. Right after a cut leaf link
        heals, the hub's source reports a lag of 0 until it has re-attached, so the lag alone would call a
        stream caught up that has not started catching up. Only leaf regions are counted: with one server
        a beacon replayed to another region's edge sits in both regions' streams and once in the hub's."""
        if not self.leaf_regions:
            return 0
        regional = run_sync(regional_stream_messages(
            {r: self.region_nats_url[r] for r in self.leaf_regions}))
        in_hub = run_sync(hub_region_messages(self.nats_url, self.leaf_regions))
        return max(0, regional - in_hub)

    def stop(self) -> None:
        if "http" in self.__dict__:
            self.__dict__.pop("http").close()
        if hasattr(self, "group"):
            self.group.stop_all()
        for proxy in self.proxies.values():
            proxy.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_hub_reachable(url: str, timeout_s: float) -> None:
    """Until the hub's JetStream answers through ``url`` (a leaf node needs its link to the hub first)."""
    deadline = time.monotonic() + timeout_s
    nc = await nats.connect(url, connect_timeout=2)
    try:
        while True:
            try:
                await nc.jetstream(domain="hub").account_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when the caller's thread runs an event loop (the
    browser tests drive Playwright from one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.asynccontextmanager
async def _jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def regional_stream_messages(urls: dict[str, str]) -> int:
    """Messages in every region's own events stream, each read from the server that holds it."""
    total = 0
    for region, url in urls.items():
        async with _jetstream(url) as js:
            total += (await js.stream_info(S.region_events_stream(region))).state.messages
    return total


async def hub_region_messages(nats_url: str, regions: tuple[str, ...]) -> int:
    """Messages in the hub's events stream on these regions' subjects."""
    total = 0
    async with _jetstream(nats_url) as js:
        for region in regions:
            info = await js.stream_info(S.EVENTS_STREAM, subjects_filter=S.region_event_subjects(region))
            total += sum((info.state.subjects or {}).values())
    return total


async def hub_stream_state(nats_url: str) -> tuple[int, int]:
    """(events in the hub's events stream, messages the hub has yet to source from the regions' streams).
    Events, not messages: an ad request's decisions travel as one message (``S.events_in`` counts them)."""
    async with _jetstream(nats_url) as js:
        info = await js.stream_info(S.EVENTS_STREAM, subjects_filter=S.EVENTS_SUBJECTS)
        return S.events_in(info.state.subjects or {}), sum(int(src.lag or 0) for src in info.sources or [])
