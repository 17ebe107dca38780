"""Control-plane process wiring: connect, open the stores, start the builder, grant service and collector.

Granian runs the lifespan once per worker; the control plane runs one worker, because it owns the chdb data
directory in the embedded default (chdb allows one process per data path).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.middleware import Middleware

from control_plane.auth import hash_token
from control_plane.builder import SnapshotBuilder
from control_plane.click_trainer import ClickTrainer
from control_plane.collector import Collector
from control_plane.conversion_learner import ConversionLearner
from control_plane.grants import GrantService
from control_plane.models import PriorCeilings
from control_plane.settings import ControlPlaneSettings
from control_plane.shape_learner import ShapeLearner
from control_plane.spend import SpendReplica
from control_plane.storage import EventStore, open_store
from control_plane.store import Store
from replication.nats_io import close_quietly, connect, ensure_events_hub, ensure_jetstream
from replication.observability import RequestIdMiddleware

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass
class ControlPlaneState:
    settings: ControlPlaneSettings
    nc: NATS
    js: JetStreamContext
    store: Store
    builder: SnapshotBuilder
    grants: GrantService
    executor: ThreadPoolExecutor
    spend: SpendReplica | None = None
    reports: EventStore | None = None
    collector: Collector | None = None
    shape: ShapeLearner | None = None
    clicks: ClickTrainer | None = None
    conversions: ConversionLearner | None = None
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    crashes: dict[str, int] = dataclasses.field(default_factory=dict)

    async def run_storage(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def collector_stats(self) -> dict[str, int] | None:
        return dataclasses.asdict(self.collector.stats) if self.collector else None


async def supervise(name: str, run: Callable[[], Awaitable[None]], crashes: dict[str, int]) -> None:
    """Run a background loop forever: a crash is logged, counted (readiness reports it) and restarted with
    backoff, instead of leaving a dead collector or builder behind a healthy-looking API."""
    backoff = 0.5
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            crashes[name] = crashes.get(name, 0) + 1
            log.exception("%s crashed (%d times); restarting in %.1f s", name, crashes[name], backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def uses_chdb(url: str) -> bool:
    return not url.startswith(("http://", "https://", "clickhouse://"))


def check_topology(settings: ControlPlaneSettings) -> None:
    if uses_chdb(settings.cp_store_url) and not settings.cp_embedded_collector:
        raise SystemExit(
            "ADSERVER_CP_STORE_URL is a chdb directory but ADSERVER_CP_EMBEDDED_COLLECTOR is false: chdb allows "
            "one process per data directory, so run the collector inside the control plane or use a "
            "ClickHouse server URL"
        )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: ControlPlaneSettings = app.state.settings
    check_topology(settings)
    nc = await connect(settings.nats_url, "control-plane")
    js = nc.jetstream()
    await ensure_jetstream(js)
    await ensure_events_hub(nc, settings.cp_regions, settings.cp_leaf_regions)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage")
    store = await Store(js).open()
    builder = SnapshotBuilder(js, settings.cp_regions, reserve_cpm_micros=settings.cp_reserve_cpm_micros,
                              placement_reserves=settings.cp_placement_reserves, min_ctr=settings.cp_min_ctr,
                              prior_ceilings=PriorCeilings(settings.cp_max_prior_ctr, settings.cp_max_prior_cvr),
                              clock=settings.clock, traffic_shape=settings.cp_traffic_shape,
                              admin_key=hash_token(settings.cp_admin_token)
                              if settings.cp_admin_token else "")
    grants = GrantService(nc, store, builder.terms, settings.cp_grant_slice, clock=settings.clock,
                          lease_s=settings.cp_lease_s)
    cp = ControlPlaneState(settings, nc, js, store, builder, grants, executor)
    cp.reports = await cp.run_storage(open_store, settings.cp_store_url)
    await cp.run_storage(cp.reports.ensure_schema)
    await grants.start()
    cp.spend = SpendReplica(settings.clock)
    await cp.spend.start(nc)
    cp.tasks.append(
        asyncio.create_task(supervise("snapshot-builder", builder.run, cp.crashes), name="snapshot-builder")
    )
    cp.tasks.append(asyncio.create_task(supervise("reclaim", grants.reclaim_loop, cp.crashes), name="reclaim"))
    learner = cp.shape = ShapeLearner(cp.reports, builder, settings.clock, cp.run_storage,
                                      prior=settings.cp_traffic_shape, days=settings.cp_shape_days,
                                      prior_weight=settings.cp_shape_prior_weight,
                                      every_s=settings.cp_shape_refresh_s)
    cp.tasks.append(asyncio.create_task(supervise("traffic-shape", learner.run, cp.crashes), name="traffic-shape"))
    trainer = cp.clicks = ClickTrainer(cp.reports, builder, settings.clock, cp.run_storage,
                                       every_s=settings.cp_ctr_train_every_s,
                                       label_delay_s=settings.cp_ctr_label_delay_s,
                                       history_s=settings.cp_ctr_history_s,
                                       min_impressions=settings.cp_ctr_min_impressions, prior_of=builder.prior_of,
                                       decision_lookback_s=settings.cp_ctr_decision_lookback_s)
    cp.tasks.append(asyncio.create_task(supervise("click-model", trainer.run, cp.crashes), name="click-model"))
    rates = cp.conversions = ConversionLearner(cp.reports, builder, settings.clock, cp.run_storage,
                                               every_s=settings.cp_cvr_every_s,
                                               label_delay_s=settings.cp_cvr_label_delay_s,
                                               history_s=settings.cp_cvr_history_s)
    cp.tasks.append(asyncio.create_task(supervise("conversion-rates", rates.run, cp.crashes),
                                        name="conversion-rates"))
    if settings.cp_embedded_collector:
        collector = cp.collector = Collector(js, cp.reports, executor, clock=settings.clock)
        cp.tasks.append(asyncio.create_task(supervise("collector", collector.run, cp.crashes), name="collector"))
    app.state.cp = cp
    log.info("control plane up: %r", settings)
    try:
        yield
    finally:
        log.info("control plane stopping")
        for task in cp.tasks:
            task.cancel()
        await asyncio.gather(*cp.tasks, return_exceptions=True)
        log.info("background tasks stopped")
        await close_quietly(nc)
        log.info("nats closed")
        if cp.reports is not None:
            await cp.run_storage(cp.reports.close)
        executor.shutdown(wait=True)
        log.info("control plane stopped")


def create_app(settings: ControlPlaneSettings | None = None) -> Starlette:
    from control_plane.api import ROUTES, STORE_UNAVAILABLE, store_unavailable
    from control_plane.limits import middleware

    stack = [Middleware(RequestIdMiddleware, access_log_enabled=True), *middleware()]
    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=stack,
                    exception_handlers=dict.fromkeys(STORE_UNAVAILABLE, store_unavailable))
    app.state.settings = settings or ControlPlaneSettings.from_env()
    return app
