"""Trains the click model from the event store and hands it to the snapshot builder: the adapter around
``replication.ctr_model``.

Every ``every_s`` it reads the valid impressions served since its watermark that are at least
``label_delay_s`` old (a click comes seconds to minutes after its impression; waiting that long before
calling an impression unclicked keeps late clicks from being learned as misses), each labelled by whether a
valid click on it is stored and with the page's site and the user's segments from its decision event,
learns from them in time order (FTRL-Proximal, online: each impression once; and the creative variants'
impressions and clicks per segment, for the edge's Thompson sampling), and gives the builder the new weights,
which the next snapshot carries to every edge. On start it learns from the last ``history_s`` of
impressions, so a restarted control plane serves a trained model again within one round. Training runs in a
worker thread: the event loop keeps answering the API.

A model ships once it has been given ``min_impressions`` impressions (the default, 10,000, is what its
calibration needs: ``replication.ctr_model.MIN_HELD_OUT`` held out, one in ten): before, an untrained
model's 0.5 for every ad, or a model of a handful of impressions, would rank worse than the advertisers'
declared priors, which the edge ranks on while a snapshot carries no model. Each impression is learned with
its creative's declared prior CTR, capped (``SnapshotBuilder.prior_of``: the latest of every campaign the
control plane stores, so a campaign that has ended still has its last impressions learned with it; a feature
the model learns to weigh), and the first round waits until the builder has read the campaigns.

Known limit: the watermark is on the time an impression was served. One stored more than ``label_delay_s``
after that (the backlog of a region cut off from the hub for longer) is behind the watermark when it lands,
and is not learned; billing and reports still count it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from control_plane.builder import SnapshotBuilder
from control_plane.learning import StoreLearner
from control_plane.periodic import every
from control_plane.storage import EventStore, LabelledImpression
from replication.clock import Clock
from replication.ctr_model import Ftrl, Impression, country_of, utc_hour
from replication.variants import Tally


class ClickTrainer(StoreLearner):
    def __init__(self, reports: EventStore, builder: SnapshotBuilder, clock: Clock,
                 run_storage: Callable[..., Awaitable[Any]], *, every_s: float, label_delay_s: float,
                 history_s: float, batch: int = 200_000, model: Ftrl | None = None, min_impressions: int = 10_000,
                 prior_of: Callable[[str], float] = lambda _: math.nan, decision_lookback_s: float = 3_600) -> None:
        super().__init__(reports, builder, clock, run_storage, every_s=every_s, label_delay_s=label_delay_s,
                         history_s=history_s)
        self.batch = batch
        self.min_impressions = min_impressions
        self.decision_lookback_ms = int(decision_lookback_s * 1000)
        self._prior_of = prior_of
        self.model = model or Ftrl()
        self.impressions: dict[str, int] = {}  # creative id -> impressions learned from
        self.variants = Tally()  # per creative, segment and variant of its components: the edge's bandit arms
        self.watermark_ms: int | None = None
        self.version = 0  # of the last model shipped; 0 before the first
        self.clicks = 0
        # Impressions learned with a site, and with segments: zero while decision events are off or lost.
        self.with_site = 0
        self.with_segments = 0

    def learn(self, rows: Sequence[LabelledImpression]) -> None:
        for r in rows:
            imp = Impression(r.campaign_id, r.creative_id, r.advertiser_id, r.placement, country_of(r.geo),
                             r.device, utc_hour(r.ts_ms // 1000), r.site, r.segments, self._prior_of(r.creative_id))
            self.model.learn_impression(imp, r.clicked)
            self.impressions[r.creative_id] = self.impressions.get(r.creative_id, 0) + 1
            self.clicks += r.clicked
            self.with_site += bool(r.site)
            self.with_segments += bool(r.segments)
            self.variants.add(r.creative_id, r.device, r.variant, r.clicked, r.ts_ms)

    async def refresh(self) -> int:
        """One round: learn what is newly labelled; returns how many impressions that was."""
        now_ms = int(self._clock.now() * 1000)
        end_ms = now_ms - int(self.label_delay_s * 1000)
        start_ms = self.watermark_ms if self.watermark_ms is not None else end_ms - int(self.history_s * 1000)
        learned = 0
        while start_ms < end_ms:
            rows = await self._run_storage(self._reports.labelled_impressions, start_ms, end_ms, self.batch,
                                           self.decision_lookback_ms)
            await asyncio.to_thread(self.learn, rows)
            learned += len(rows)
            if len(rows) < self.batch:
                break
            # A full batch: go on after its last millisecond (other impressions of that very millisecond past
            # the limit are skipped rather than learned twice; one batch holds 200,000). The watermark moves
            # with each batch learned, so a later batch failing does not make the next round learn this again.
            start_ms = self.watermark_ms = rows[-1].ts_ms + 1
        self.watermark_ms = end_ms
        if learned and self.model.seen >= self.min_impressions:
            self.version += 1
            # Exported in a worker thread too: copying the weights and the tally takes a while at scale.
            model = await asyncio.to_thread(
                lambda: self.model.export(self.version, self.impressions, self.variants.export()))
            self._builder.set_click_model(model)
        return learned

    async def run(self) -> None:
        # The creatives' priors come from the builder's campaigns: a first round before it has read them would
        # learn a day of impressions as if nobody had declared anything.
        await self._builder.replayed()
        await every(self.every_s, self.refresh, "training the click model failed; keeping the current one")
