"""Prometheus metrics of the control plane, read from the components' own counters at scrape time
(so the hot paths keep plain integer increments)."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from control_plane.state import ControlPlaneState
from replication import subjects as S


class ControlPlaneMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.collector = Gauge("adserver_collector", "collector counters", ["counter"], registry=r)
        self.lag = Gauge("adserver_collector_lag_messages", "events not yet stored", ["state"], registry=r)
        self.snapshot = Gauge("adserver_snapshot", "snapshot builder state", ["field"], registry=r)
        self.granted = Gauge("adserver_budget_granted_micros", "budget granted to edges by this process",
                             registry=r)
        self.replayed = Gauge("adserver_budget_grant_replays", "grant requests answered from the replay cache",
                              registry=r)
        self.crashes = Gauge("adserver_task_crashes", "background task restarts", ["task"], registry=r)

    async def render(self, cp: ControlPlaneState) -> bytes:
        if cp.collector is not None:
            for name, value in dataclasses.asdict(cp.collector.stats).items():
                self.collector.labels(name).set(value)
            try:
                info = await cp.js.consumer_info(S.EVENTS_STREAM, S.COLLECTOR_DURABLE)
                self.lag.labels("pending").set(info.num_pending or 0)
                self.lag.labels("ack_pending").set(info.num_ack_pending or 0)
            except Exception:
                self.lag.labels("pending").set(-1)  # unknown: NATS unreachable or consumer not created yet
        b = cp.builder.stats
        for name, value in (("version", b.version), ("campaigns", b.campaigns), ("bytes", b.last_size),
                            ("build_ms", b.last_build_ms), ("builds", b.builds)):
            self.snapshot.labels(name).set(value)
        self.granted.set(cp.grants.granted_micros)
        self.replayed.set(cp.grants.replayed)
        for task, count in cp.crashes.items():
            self.crashes.labels(task).set(count)
        return generate_latest(self.registry)


async def metrics(request: Request) -> Response:
    cp: ControlPlaneState = request.app.state.cp
    holder = request.app.state
    if not hasattr(holder, "metrics"):
        holder.metrics = ControlPlaneMetrics()
    return Response(await holder.metrics.render(cp), media_type="text/plain; version=0.0.4; charset=utf-8")
