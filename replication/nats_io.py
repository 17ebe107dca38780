"""NATS adapters shared by the edge and the control plane: connection, streams, event publishing, snapshots.

Known traps handled here (ARCHITECTURE §6): default reconnects give up after ~2 minutes, so we ask for
unlimited reconnects. Event publishing (ids, retries, batching) is ``replication.publisher``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from replication import subjects as S

log = logging.getLogger(__name__)

# Messages up to this size carry the snapshot inline (one hop); larger ones go through the Object Store,
# which chunks them below the server's max payload.
INLINE_SNAPSHOT_LIMIT = 512 * 1024


async def connect(url: str, name: str) -> NATS:
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
    )


async def _add_or_update(js: JetStreamContext, cfg: api.StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except Exception:
        await js.update_stream(cfg)


def _events_limits() -> dict[str, object]:
    # Billing data: on disk (the servers run with sync_interval: always, so a PubAck means fsynced), kept a
    # week so a region cut off for days still has its events when the link heals, and a dedup window far
    # past JetStream's 2-minute default so a retry after a long outage is still recognised.
    return {"storage": api.StorageType.FILE, "retention": api.RetentionPolicy.LIMITS,
            "duplicate_window": S.EVENTS_DUPLICATE_WINDOW_S, "max_age": 7 * 24 * 3600}


async def ensure_region_stream(js: JetStreamContext, region: str) -> None:
    """The region's own events stream, in the JetStream the region's edges publish to (its leaf node's
    domain, or the one server): a PubAck from it lets a cut-off region keep acknowledging beacons."""
    # allow_atomic: edges group-commit their events as atomic batches (replication/publisher.py).
    await _add_or_update(js, api.StreamConfig(
        name=S.region_events_stream(region), subjects=[S.region_event_subjects(region)], allow_atomic=True,
        **_events_limits()))


async def ensure_events_hub(nc: NATS, regions: Iterable[str], leaf_regions: Iterable[str] = ()) -> None:
    """The hub's ADS_EVENTS, sourcing every region's stream: from the JetStream domain named after the region
    for ``leaf_regions``, else from this server (where the regional stream is created here too).

    The dedup window is set explicitly: a stream that sources others does not get one by default, and the
    same event can arrive twice if an edge's retry landed after its regional stream's window."""
    js = nc.jetstream()
    regions = list(regions)
    leaf = set(leaf_regions)
    for region in leaf:
        # Create the leaf's stream from here when its link is up: a source whose stream does not exist yet is
        # retried by the server only after a backoff (~10 s measured), which would delay a fresh region.
        try:
            await ensure_region_stream(nc.jetstream(domain=region, timeout=2), region)
        except Exception as exc:
            log.warning("region %s's leaf JetStream unreachable (%r); the hub will source it once it is up",
                        region, exc)
    sources = [
        api.StreamSource(name=S.region_events_stream(r),
                         external=api.ExternalStream(api=f"$JS.{r}.API") if r in leaf else None)
        for r in regions
    ]
    hub = api.StreamConfig(name=S.EVENTS_STREAM, sources=sources, **_events_limits())
    local = [r for r in regions if r not in leaf]
    try:
        # The regional streams first: a source whose stream is missing is retried only after a backoff.
        for region in local:
            await ensure_region_stream(js, region)
    except Exception:
        # An older layout had ADS_EVENTS on ads.ev.>, which overlaps the regions' subjects: move it first.
        await _add_or_update(js, hub)
        for region in local:
            await ensure_region_stream(js, region)
    await _add_or_update(js, hub)


async def ensure_jetstream(js: JetStreamContext) -> None:
    """Create or update the control plane's streams and buckets (snapshots, dead letters, campaign store,
    budget). Idempotent; safe from several processes. Event streams: ``ensure_events_hub`` and
    ``ensure_region_stream``."""
    snapshots = api.StreamConfig(
        name=S.SNAPSHOT_STREAM,
        subjects=[S.SNAPSHOT_SUBJECTS],
        storage=api.StorageType.FILE,
        max_msgs_per_subject=1,  # an edge only ever needs the newest snapshot of its region
        max_msg_size=-1,
    )
    dlq = api.StreamConfig(name="ADS_DLQ", subjects=["ads.dlq.>"], storage=api.StorageType.FILE)
    for cfg in (snapshots, dlq):
        await _add_or_update(js, cfg)
    for bucket, history in ((S.CAMPAIGNS_BUCKET, 5), (S.ADVERTISERS_BUCKET, 1), (S.BUDGET_BUCKET, 1)):
        try:
            await js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            await js.create_key_value(bucket=bucket, history=history, storage=api.StorageType.FILE)
    try:
        await js.object_store(S.SNAPSHOT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(S.SNAPSHOT_BUCKET, storage=api.StorageType.FILE)


@dataclass(frozen=True, slots=True)
class SnapshotPointer:
    region: str
    version: int
    sha256: str
    size: int
    inline: bool


# The longest wait for the next entry of a KV replay its consumer has said is coming (``replay``).
REPLAY_WAIT_S = 5.0


async def replay(watcher: KeyValue.KeyWatcher) -> AsyncIterator[KeyValue.Entry]:
    """A KV watch's initial replay, whole: the entries (deletes included) its consumer held when asked, that is
    what it had delivered plus what it still held (a key written meanwhile may come too). nats-py's own
    end-of-replay marker (the watcher's None) can come before values already on their way to the watcher
    (nats-io/nats.py#842; the fix, #995, is unreleased), so it is skipped and the entries are counted
    instead. Raises nats' TimeoutError when none comes for REPLAY_WAIT_S; that can also mean a marker
    message nats-py drops unseen (an expiry reason it does not know, nats-server 2.11+) made the count one
    too high. The consumer is the watcher's ``_sub`` (nats-py has no public accessor)."""
    info = await watcher._sub.consumer_info()
    left = (info.delivered.consumer_seq if info.delivered else 0) + (info.num_pending or 0)
    while left:
        entry = await watcher.updates(timeout=REPLAY_WAIT_S)
        if entry is not None:  # not the marker, early or not
            left -= 1
            yield entry


async def publish_snapshot(js: JetStreamContext, region: str, version: int, data: bytes) -> SnapshotPointer:
    digest = hashlib.sha256(data).hexdigest()
    headers = {"Snap-Version": str(version), "Snap-Sha256": digest, "Snap-Size": str(len(data))}
    inline = len(data) <= INLINE_SNAPSHOT_LIMIT
    if inline:
        await js.publish(S.snapshot_subject(region), data, headers=headers)
    else:
        store = await js.object_store(S.SNAPSHOT_BUCKET)
        await store.put(S.snapshot_object_name(region), data)
        headers["Snap-Object"] = S.snapshot_object_name(region)
        await js.publish(S.snapshot_subject(region), b"", headers=headers)
    return SnapshotPointer(region, version, digest, len(data), inline)


async def read_snapshot_message(js: JetStreamContext, msg: Msg) -> tuple[int, bytes]:
    """Resolve a snapshot message to its bytes (inline or via the Object Store), checking the digest."""
    headers = msg.headers or {}
    version = int(headers.get("Snap-Version", "0"))
    expected = headers.get("Snap-Sha256", "")
    if "Snap-Object" in headers:
        store = await js.object_store(S.SNAPSHOT_BUCKET)
        data = (await store.get(headers["Snap-Object"])).data or b""
        if hashlib.sha256(data).hexdigest() != expected:
            # The object was replaced by a newer snapshot after this pointer was sent; its own pointer
            # follows, so skipping this one loses nothing.
            raise ValueError("snapshot object changed since its pointer was published")
    else:
        data = msg.data
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("snapshot digest mismatch")
    return version, data


async def follow_snapshots(
    js: JetStreamContext, region: str, on_snapshot: Callable[[int, bytes], Awaitable[None]]
) -> JetStreamContext.PushSubscription:
    """Deliver the region's newest snapshot now and every later one, with an ordered (gap-free) consumer."""

    async def handler(msg: Msg) -> None:
        try:
            version, data = await read_snapshot_message(js, msg)
        except Exception as exc:
            log.warning("skipping snapshot message: %s", exc)
            return
        await on_snapshot(version, data)

    return await js.subscribe(
        S.snapshot_subject(region),
        cb=handler,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
    )


async def close_quietly(nc: NATS, drain_s: float = 2.0) -> None:
    """Drain (flush pending publishes and acks), but never hang a shutdown on it: nats-py's drain waits up
    to 30 s on a subscription whose task was already cancelled."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), timeout=drain_s)
    with contextlib.suppress(Exception):
        await nc.close()
