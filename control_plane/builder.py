"""Snapshot builder: watches the campaign store and publishes a new snapshot per region on every change.

It keeps the latest value of every campaign from a KV watcher (so a rebuild reads memory, not NATS),
debounces bursts of writes, compiles the servable campaigns into an immutable index and publishes it to
each region. A periodic rebuild picks up schedule changes (a campaign's end passing) with no write at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from control_plane.allocator import BudgetTerms
from control_plane.cvr import NONE as NO_COUNTS
from control_plane.cvr import Counts, by_advertiser, conversion_rate
from control_plane.models import (
    NO_CEILINGS,
    PriorCeilings,
    declared_ctr,
    declared_cvr,
    is_servable,
    to_snapshot_campaign,
)
from replication import subjects as S
from replication.clock import REAL_CLOCK, Clock
from replication.ctr_model import ClickModel
from replication.nats_io import publish_snapshot, replay
from replication.snapshot import (
    SnapshotCampaign,
    build_snapshot,
    encode_snapshot,
    unit_cost_ceiling,
    unit_cost_floor,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BuilderStats:
    version: int = 0
    builds: int = 0
    campaigns: int = 0
    last_build_ms: float = 0.0
    last_size: int = 0
    revisions: dict[str, int] = field(default_factory=dict)


class SnapshotBuilder:
    def __init__(
        self,
        js: JetStreamContext,
        regions: tuple[str, ...],
        *,
        reserve_cpm_micros: int,
        placement_reserves: dict[str, int] | None = None,
        min_ctr: float = 0.0,
        prior_ceilings: PriorCeilings = NO_CEILINGS,
        clock: Clock = REAL_CLOCK,
        traffic_shape: tuple[float, ...] = (),
        admin_key: str = "",
        debounce_s: float = 0.01,
        refresh_s: float = 5.0,
    ) -> None:
        self._js = js
        self._regions = regions
        self._clock = clock
        self._traffic_shape = traffic_shape
        self._click_model: ClickModel | None = None
        self._published: tuple[object, ...] = ()  # what the last snapshot was built from
        self._admin_key = admin_key  # SHA-256 of the admin token, never the token: edges check explain calls
        self._reserve = reserve_cpm_micros
        self._placement_reserves = dict(placement_reserves or {})
        # The least a billable unit can cost on any placement (the lowest reserve of all).
        self._unit_floor = unit_cost_floor(min((reserve_cpm_micros, *self._placement_reserves.values())))
        self._min_ctr = min_ctr
        self._ceilings = prior_ceilings
        self._debounce = debounce_s
        self._refresh = refresh_s
        self._campaigns: dict[str, tuple[dict, int]] = {}
        self._prior_ctrs: dict[str, float] = {}  # every stored creative's, capped (``prior_of``)
        self._cvr_counts: dict[str, Counts] = {}  # CPA campaigns' clicks and conversions (``set_conversion_counts``)
        self._cvr_version = 0  # bumped when they change: the next snapshot is built
        self._key_of: dict[str, str] = {}  # campaign id -> KV key
        self._postback: dict[str, list[str]] = {}  # advertiser id -> live postback token hashes
        self._dirty = asyncio.Event()
        self._initial_done = asyncio.Event()
        self.stats = BuilderStats()

    async def _watch(self) -> None:
        """Follow the campaign and advertiser stores. The first snapshot waits for both whole replays
        (``replay``, counted: nats-py's end-of-replay marker can come early): a snapshot short of campaigns
        would make every edge forget their state until the next one, and one short of an advertiser's
        postback token hashes would refuse its postbacks at every edge. A replay that stalls is built from as
        far as it got, with a warning, rather than never, unless it stalled before its first entry
        (``_replay``). In a task group: if either watch fails or ends, the other stops too and the failure
        surfaces (``run``, as an ExceptionGroup), and a restarted ``run`` (``control_plane.state.supervise``)
        waits for its own replays before it builds again (``run`` clears ``_initial_done``)."""
        stores = ((S.CAMPAIGNS_BUCKET, self._apply), (S.ADVERTISERS_BUCKET, self._apply_advertiser))
        watchers: list[tuple[str, KeyValue.KeyWatcher, Callable[[KeyValue.Entry], bool]]] = []
        try:
            for bucket, apply in stores:
                watchers.append((bucket, await (await self._js.key_value(bucket)).watchall(), apply))
            async with asyncio.TaskGroup() as replays:
                for bucket, watcher, apply in watchers:
                    replays.create_task(self._replay(bucket, watcher, apply))
            self._initial_done.set()
            self._dirty.set()
            async with asyncio.TaskGroup() as follows:
                for bucket, watcher, apply in watchers:
                    follows.create_task(self._follow(bucket, watcher, apply))
        finally:
            for _, watcher, _ in watchers:  # a restarted run watches anew: unsubscribe these
                with contextlib.suppress(Exception):
                    await watcher.stop()

    @staticmethod
    async def _replay(bucket: str, watcher: KeyValue.KeyWatcher, apply: Callable[[KeyValue.Entry], bool]) -> None:
        applied = 0
        try:
            async for entry in replay(watcher):
                apply(entry)
                applied += 1
        except NatsTimeoutError:
            if not applied:
                # Nothing read, perhaps not even the replay's size (``replay`` asks the consumer first): a
                # snapshot built now could hold no campaigns, and every edge would drop what it serves.
                # Failing instead keeps the edges on the last snapshot while ``run`` is restarted.
                raise
            log.warning("the %s store's replay stalled after %d entries; building from as far as it got", bucket,
                        applied)

    async def _follow(self, bucket: str, watcher: KeyValue.KeyWatcher,
                      apply: Callable[[KeyValue.Entry], bool]) -> None:
        async for entry in watcher:
            if entry is not None and apply(entry):
                self._dirty.set()
        # nats-py ends a watch only when it is stopped: snapshots built without it would go stale unseen.
        raise RuntimeError(f"the {bucket} store's watch ended")

    def _apply(self, entry: KeyValue.Entry) -> bool:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._campaigns.pop(entry.key, None)
        else:
            value = json.loads(entry.value)
            self._campaigns[entry.key] = (value, entry.revision or 0)
            self._key_of[value["id"]] = entry.key
            for k in value.get("creatives", ()):  # kept after a campaign ends: its last impressions are learned
                self._prior_ctrs[k["id"]] = declared_ctr(k, self._ceilings)
        return True

    def _apply_advertiser(self, entry: KeyValue.Entry) -> bool:
        """Postback token hashes travel in the snapshot, so a rotated token works at every PoP within one
        rebuild, and a deleted advertiser's stop working. Whether its hashes changed."""
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            return self._postback.pop(entry.key, None) is not None
        hashes = list(json.loads(entry.value).get("postback_token_sha256s", []))
        if self._postback.get(entry.key) == hashes:
            return False
        self._postback[entry.key] = hashes
        return True

    def servable_ids(self) -> list[str]:
        now = self._clock.now()
        return sorted(value["id"] for value, _ in self._campaigns.values() if is_servable(value, now))

    def timezone_of(self, campaign_id: str) -> str | None:
        """The campaign's timezone, if the builder knows the campaign (servable or not)."""
        found = self._campaigns.get(self._key_of.get(campaign_id, ""))
        return found[0]["timezone"] if found else None

    @property
    def traffic_shape(self) -> tuple[float, ...]:
        return self._traffic_shape

    def prior_of(self, creative_id: str) -> float:
        """A creative's declared prior CTR, capped as the snapshots serve it (its latest; NaN for one never
        stored): the click trainer learns each impression with it."""
        return self._prior_ctrs.get(creative_id, math.nan)

    async def replayed(self) -> None:
        """Until the campaign and advertiser stores have been read whole (what the first snapshot waits for)."""
        await self._initial_done.wait()

    def set_conversion_counts(self, counts: dict[str, Counts]) -> None:
        """CPA campaigns' clicks and billed conversions (``control_plane.conversion_learner``): the next snapshot
        carries each CPA campaign's learned rate (``_learned_cvr``) as its ``prior_cvr``."""
        if counts != self._cvr_counts:
            self._cvr_counts = counts
            self._cvr_version += 1
            self._dirty.set()

    def _learned_cvrs(self) -> Callable[[dict], float | None]:
        """Per stored campaign record, its learned conversion rate (``control_plane.cvr.conversion_rate``): CPA
        campaigns' only (no other bid prices with one), shrunk towards their advertiser's counts (over every
        campaign the store has, ended ones too) and their declared prior; None for the others."""
        advertisers = by_advertiser(self._cvr_counts,
                                    {value["id"]: value["advertiser_id"] for value, _ in self._campaigns.values()})

        def learned(value: dict) -> float | None:
            if value["bid_type"] != "cpa":
                return None
            return conversion_rate(self._cvr_counts.get(value["id"], NO_COUNTS),
                                   advertisers.get(value["advertiser_id"], NO_COUNTS),
                                   declared_cvr(value, self._ceilings))
        return learned

    def set_click_model(self, model: ClickModel) -> None:
        """A newly trained click model (control_plane.click_trainer): the next snapshot carries it."""
        self._click_model = model
        self._dirty.set()

    @property
    def click_model(self) -> ClickModel | None:
        return self._click_model

    def set_traffic_shape(self, weights: tuple[float, ...]) -> None:
        """A new pacing shape (control_plane.traffic): the next snapshot carries it to every edge."""
        if weights != self._traffic_shape:
            self._traffic_shape = weights
            self._dirty.set()

    def terms(self, campaign_id: str) -> BudgetTerms | None:
        """Budget terms of a servable campaign, for the grant service; None when it must not spend."""
        found = self._campaigns.get(self._key_of.get(campaign_id, ""))
        if found is None or not is_servable(found[0], self._clock.now()):
            return None
        c = found[0]
        return BudgetTerms(
            daily_budget_micros=c["daily_budget_micros"],
            total_budget_micros=c["total_budget_micros"],
            timezone=c["timezone"],
            unit_ceiling_micros=unit_cost_ceiling(c["bid_type"], c["max_bid_micros"]),
            unit_floor_micros=self._unit_floor,
        )

    async def build_and_publish(self) -> None:
        now = self._clock.now()
        started = time.perf_counter()
        learned_cvr = self._learned_cvrs()
        servable = [
            to_snapshot_campaign(value, revision, self._ceilings, learned_cvr(value))
            for value, revision in self._campaigns.values()
            if is_servable(value, now)
        ]
        # The periodic wake-up exists for schedules (a campaign starting or ending changes the servable set);
        # when nothing an edge serves from changed, publishing again would only make every edge decode the
        # same snapshot (seconds at 100,000 campaigns).
        content = (tuple(sorted((c.campaign_id, c.revision) for c in servable)), self._traffic_shape,
                   id(self._click_model), self._cvr_version,
                   tuple(sorted((a, tuple(h)) for a, h in self._postback.items() if h)))
        if content == self._published and self.stats.builds:
            return
        # Versions only grow, even if the clock steps back: an edge ignores anything not newer.
        version = max(self.stats.version + 1, int(now * 1000))
        snapshot = build_snapshot(servable, version=version, created_ms=int(now * 1000),
                                  reserve_cpm_micros=self._reserve,
                                  postback_keys={a: h for a, h in self._postback.items() if h},
                                  traffic_shape=self._traffic_shape,
                                  click_model=_with_arms_of(self._click_model, servable),
                                  admin_key=self._admin_key, placement_reserves=self._placement_reserves,
                                  min_ctr=self._min_ctr)
        data = encode_snapshot(snapshot)
        for region in self._regions:
            await publish_snapshot(self._js, region, version, data)
        self.stats.version = version
        self.stats.builds += 1
        self._published = content
        self.stats.campaigns = len(servable)
        self.stats.last_size = len(data)
        self.stats.last_build_ms = (time.perf_counter() - started) * 1000

    async def _resume_version(self) -> None:
        """Continue from the newest version already published: a restarted builder on a host whose clock is
        behind must still publish versions the edges accept (they ignore anything not newer)."""
        for region in self._regions:
            with contextlib.suppress(Exception):  # nothing published yet for this region
                last = await self._js.get_last_msg(S.SNAPSHOT_STREAM, S.snapshot_subject(region))
                version = int((last.headers or {}).get("Snap-Version", "0"))
                self.stats.version = max(self.stats.version, version)

    async def run(self) -> None:
        await self._resume_version()
        # Cleared here, not in the watch task: a restart must not build from the last run's state even for the
        # turn of the loop before that task first runs.
        self._initial_done.clear()
        watch = asyncio.create_task(self._watch())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), timeout=self._refresh)
                if watch.done():  # also while the first replay is on: it may never end otherwise
                    watch.result()  # surface a dead watcher instead of serving stale snapshots silently
                if not self._initial_done.is_set():
                    continue
                await asyncio.sleep(self._debounce)  # let a burst of writes land in one snapshot
                self._dirty.clear()
                try:
                    await self.build_and_publish()
                except Exception:
                    log.exception("snapshot build failed; will retry")
                    await asyncio.sleep(0.5)
                    self._dirty.set()
        finally:
            watch.cancel()


def _with_arms_of(model: ClickModel | None, servable: list[SnapshotCampaign]) -> ClickModel | None:
    """The model with only the variant arms of creatives this snapshot serves: the trainer keeps every
    creative it has learned about, and a finished campaign's arms would otherwise ride in every snapshot."""
    if model is None or not model.arms:
        return model
    live = {k.creative_id for c in servable for k in c.creatives}
    if live.issuperset(model.arms):
        return model
    return dataclasses.replace(model, arms={cid: arms for cid, arms in model.arms.items() if cid in live})
