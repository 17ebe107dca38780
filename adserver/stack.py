"""A whole local deployment on one machine: nats-server, control plane (+ collector on chdb), edge PoPs.

This is the embedded default of ARCHITECTURE §2. Production runs the same processes with a NATS cluster,
leaf nodes per region and a ClickHouse server, by configuration only.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from adserver.processes import (
    Proc,
    ProcessGroup,
    adserver_argv,
    free_port,
    start_nats,
    wait_ready,
)


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
        """The NATS topology: one nats-server here; a subclass may start a hub with leaf nodes instead."""
        assert self.data_dir is not None
        self.nats, self.nats_url = start_nats(self.group, self.data_dir / "jetstream")

    def start_edge(self, region: str, pop: str, workers: int | None = None,
                   signing_keys: str | None = None) -> EdgeProc:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self.group.start(
            f"edge-{region}-{pop}",
            adserver_argv("edge", "--port", str(port), "--workers", str(workers or self.edge_workers)),
            {
                "ADSERVER_NATS_URL": self.nats_url,
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

    def create_advertiser(self, name: str) -> tuple[str, str]:
        from control_plane.admin import create_advertiser

        return asyncio.run(create_advertiser(self.nats_url, name))

    def admin_stats(self) -> dict:
        r = httpx.get(f"{self.cp_url}/v1/admin/stats", headers={"Authorization": f"Bearer {self.admin_token}"},
                      timeout=30)
        r.raise_for_status()
        return r.json()

    def edge_events(self) -> tuple[int, int]:
        """(events the edges had JetStream acknowledge, minus acks of retries it already held; events still
        buffered at the edges), read from every edge's /metrics."""
        published = buffered = 0
        for edge in self.edges:
            for line in httpx.get(f"{edge.url}/metrics", timeout=5).text.splitlines():
                if not line.startswith("adserver_events{"):
                    continue
                value = int(float(line.rsplit(" ", 1)[1]))
                if 'state="acked"' in line:
                    published += value
                elif 'state="duplicates"' in line:
                    published -= value
                elif 'state="buffered"' in line:
                    buffered += value
        return published, buffered

    def wait_stored(self, timeout: float = 30, every: float = 0.3) -> tuple[bool, int, dict]:
        """Poll until ClickHouse holds every event the edges published and nothing is buffered.
        Returns (caught up, events published, admin stats at the last poll); never raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            published, buffered = self.edge_events()
            stats = self.admin_stats()
            caught_up = buffered == 0 and stats["store"]["unique_events"] == published
            if caught_up or time.monotonic() >= deadline:
                return caught_up, published, stats
            time.sleep(every)

    def stop(self) -> None:
        if hasattr(self, "group"):
            self.group.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
