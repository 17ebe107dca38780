"""The collector as its own process, for deployments with a ClickHouse server (the control plane then only
reads). With chdb the collector runs inside the control plane instead: one process owns a chdb directory."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from control_plane.collector import Collector
from control_plane.settings import ControlPlaneSettings
from control_plane.storage import open_store
from replication.nats_io import close_quietly, connect, ensure_events_hub, ensure_jetstream

log = logging.getLogger(__name__)


async def run_collector(settings: ControlPlaneSettings) -> None:
    nc = await connect(settings.nats_url, "collector")
    js = nc.jetstream()
    await ensure_jetstream(js)
    await ensure_events_hub(nc, settings.cp_regions, settings.cp_leaf_regions)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage")
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(executor, open_store, settings.cp_store_url)
    await loop.run_in_executor(executor, store.ensure_schema)
    try:
        await Collector(js, store, executor, clock=settings.clock).run()
    finally:
        await close_quietly(nc)
        await loop.run_in_executor(executor, store.close)
        executor.shutdown()
