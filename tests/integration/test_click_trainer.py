"""The click model's training path against a real embedded chdb: labelled impressions come out of the event
store once each, clicked or not, without invalid traffic; the trainer learns them in rounds behind a watermark
and hands each new model to the snapshot builder, whose snapshot carries it to the edges."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from typing import Any

import pytest
from test_storage import HOUR, T0, make_event  # the sibling module: pytest puts this directory on sys.path

from control_plane.click_trainer import ClickTrainer
from control_plane.conversion_learner import ConversionLearner
from control_plane.cvr import Counts
from control_plane.storage import EVENTS_TABLE, ChdbStore
from replication.ctr_model import ClickModel, Impression
from replication.events import BidType, EventType, InvalidReason

pytestmark = pytest.mark.integration
MINUTE = 60_000


def impression_and_click(ts_ms: int, creative: str, clicked: bool, **kw: Any) -> list:
    imp = make_event(EventType.IMPRESSION, ts_ms, creative_id=creative, **kw)
    if not clicked:
        return [imp]
    click = dataclasses.replace(imp, event_id="cli:" + imp.impression_id, type=EventType.CLICK, ts_ms=ts_ms + 5_000)
    return [imp, click]


def test_labelled_impressions_are_unique_valid_and_labelled(store: ChdbStore) -> None:
    events = impression_and_click(T0, "k1", True) + impression_and_click(T0 + 1, "k2", False)
    bot = impression_and_click(T0 + 2, "k3", True, invalid_reason=InvalidReason.KNOWN_BOT)
    store.insert_events(events + bot, "b1")
    store.insert_events([dataclasses.replace(events[0])], "b2")  # a stored duplicate of the first impression
    rows = store.labelled_impressions(T0, T0 + MINUTE, limit=100)
    assert [(r.creative_id, r.clicked) for r in rows] == [("k1", True), ("k2", False)]
    assert rows[0].placement == "top-banner" and rows[0].device == "mobile" and rows[0].ts_ms == T0
    assert store.labelled_impressions(T0, T0 + MINUTE, limit=1)[0].creative_id == "k1"  # oldest first


def test_an_impressions_site_and_segments_come_from_its_decision_event(store: ChdbStore) -> None:
    """The signed impression token carries neither: the decision event of the same impression does, written
    before it (earlier than the training window, within the token's life), and may be missing (decision events
    off or shed), which leaves them empty. Segments are kept 30 days (a column TTL), like the edge's profiles."""
    def served(t0: int, creative: str, clicked: bool, decided: int, **decision: Any) -> list:
        events = impression_and_click(t0, creative, clicked)
        return [*events, dataclasses.replace(events[0], event_id="dec:" + events[0].impression_id,
                                             type=EventType.DECISION, ts_ms=decided, **decision)]

    now = int(time.time() * 1000) // MINUTE * MINUTE
    store.insert_events([
        *served(now + 10, "k1", True, now - 30 * MINUTE, site="blog.example", segments="kw-running,kw-shoes"),
        *impression_and_click(now + 20, "k2", False),  # its decision event never arrived
        *served(now + 30, "k3", False, now - 2 * HOUR, site="late.example"),  # decided before the token's life
        *served(T0 + 10, "old", False, T0 - MINUTE, site="old.example", segments="kw-running"),
    ], "b1")
    rows = store.labelled_impressions(now, now + MINUTE, limit=100)
    assert [(r.creative_id, r.clicked, r.site, r.segments) for r in rows] == [
        ("k1", True, "blog.example", ("kw-running", "kw-shoes")), ("k2", False, "", ()), ("k3", False, "", ())]
    store._exec(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")  # a TTL is applied when parts merge: merge them now
    (old,) = store.labelled_impressions(T0, T0 + MINUTE, limit=100)
    assert (old.site, old.segments) == ("old.example", ())  # more than 30 days old: its segments are gone


def test_click_conversions_count_a_cpa_campaigns_clicks_and_billed_conversions(store: ChdbStore) -> None:
    """Per CPA campaign, over its impressions served in the window: valid clicks, each once, and the billed
    conversions credited to those impressions, each once: several for one click, and view-through ones."""
    def served(ts_ms: int, campaign: str, bid_type: BidType = BidType.CPA, **kw: Any) -> Any:
        return make_event(EventType.IMPRESSION, ts_ms, campaign_id=campaign, bid_type=bid_type, **kw)

    def then(imp: Any, kind: EventType, ts_ms: int, tag: str = "", **kw: Any) -> Any:
        return dataclasses.replace(imp, event_id=f"{kind.value[:3]}:{imp.impression_id}{tag}", type=kind,
                                   ts_ms=ts_ms, **kw)

    a1, a2, a3, seen = served(T0, "a"), served(T0 + 1, "a"), served(T0 + 2, "a"), served(T0 + 3, "a")
    bot = served(T0 + 4, "a", invalid_reason=InvalidReason.KNOWN_BOT)
    cpc = served(T0 + 5, "c", bid_type=BidType.CPC)
    late = served(T0 + 2 * MINUTE, "a")  # served after the window
    clicks = [then(i, EventType.CLICK, T0 + 10_000) for i in (a1, a2, a3, bot, cpc, late)]
    billed = {"cost_micros": 1_000_000}
    conversions = [
        then(a1, EventType.CONVERSION, T0 + 5 * MINUTE, ":order-1", **billed),
        then(a1, EventType.CONVERSION, T0 + 6 * MINUTE, ":order-2", **billed),  # a second order of the click
        then(seen, EventType.CONVERSION, T0 + 6 * MINUTE, ":view", **billed),  # credited to a view
        then(a2, EventType.CONVERSION, T0 + 7 * MINUTE, ":bot", invalid_reason=InvalidReason.KNOWN_BOT, **billed),
        then(a3, EventType.CONVERSION, T0 + 7 * MINUTE, ":free"),  # not billed
        then(bot, EventType.CONVERSION, T0 + 7 * MINUTE, ":x", **billed),
        then(cpc, EventType.CONVERSION, T0 + 7 * MINUTE, ":cpc"),  # a CPC campaign's: costs it nothing
    ]
    store.insert_events([a1, a2, a3, seen, bot, cpc, late, *clicks, dataclasses.replace(clicks[0])], "b1")
    store.insert_events([*conversions, dataclasses.replace(conversions[0])], "b2")  # one stored twice
    assert store.click_conversions(T0, T0 + MINUTE) == {"a": Counts(3, 3)}


def test_the_conversion_learner_hands_the_counts_to_the_builder(store: ChdbStore) -> None:
    imp = make_event(EventType.IMPRESSION, T0, campaign_id="a", bid_type=BidType.CPA)
    store.insert_events([imp, dataclasses.replace(imp, event_id="cli:x", type=EventType.CLICK, ts_ms=T0 + 1)],
                        "b1")

    class Counting:
        counts: dict = {}

        def set_conversion_counts(self, counts: dict) -> None:
            self.counts = counts

    async def run_storage(fn: Any, *args: Any) -> Any:
        return fn(*args)

    builder = Counting()
    learner = ConversionLearner(store, builder, FakeClock(T0 / 1000 + 3_600), run_storage,  # type: ignore[arg-type]
                                every_s=60, label_delay_s=600, history_s=86_400)
    assert asyncio.run(learner.refresh()) == {"a": Counts(1, 0)} == builder.counts
    assert (learner.clicks, learner.conversions, learner.campaigns) == (1, 0, 1)
    young = ConversionLearner(store, builder, FakeClock(T0 / 1000 + 60), run_storage,  # type: ignore[arg-type]
                              every_s=60, label_delay_s=600, history_s=86_400)
    assert asyncio.run(young.refresh()) == {}  # the impression is younger than the label delay


class FakeClock:
    def __init__(self, now_s: float) -> None:
        self.t = now_s

    def now(self) -> float:
        return self.t


class Builder:
    def __init__(self) -> None:
        self.models: list[ClickModel] = []

    def set_click_model(self, model: ClickModel) -> None:
        self.models.append(model)


def test_the_trainer_learns_each_labelled_impression_once_and_ships_the_model(store: ChdbStore) -> None:
    rng = random.Random(5)
    events = []
    for i in range(3_000):
        creative = "good" if i % 2 else "bad"
        events += impression_and_click(T0 + i * 100, creative, rng.random() < (0.3 if creative == "good" else 0.02),
                                       campaign_id=f"c-{creative}")
    store.insert_events(events, "b1")
    clock = FakeClock((T0 + 3_000 * 100) / 1000 + 600 + 1)  # everything is past the label delay
    builder = Builder()

    async def run_storage(fn: Any, *args: Any) -> Any:
        return fn(*args)

    priors = {"good": 0.05, "bad": 0.01}
    # A model is not shipped before it has learned from min_impressions: the edges keep ranking on the priors.
    waiting = Builder()
    held = ClickTrainer(store, waiting, clock, run_storage, every_s=60, label_delay_s=600, history_s=86_400,
                        min_impressions=4_000)
    assert asyncio.run(held.refresh()) == 3_000 and held.version == 0 and waiting.models == []
    trainer = ClickTrainer(store, builder, clock, run_storage, every_s=60, label_delay_s=600, history_s=86_400,
                           batch=700, prior_of=lambda k: priors.get(k, math.nan),  # several full batches a round
                           min_impressions=1_000)
    assert asyncio.run(trainer.refresh()) == 3_000
    assert trainer.impressions == {"good": 1_500, "bad": 1_500}
    model = builder.models[-1]
    good = model.predict(Impression("c-good", "good", "adv-1", "top-banner", "NL", "mobile", 10, prior_ctr=0.05))
    bad = model.predict(Impression("c-bad", "bad", "adv-1", "top-banner", "NL", "mobile", 10, prior_ctr=0.01))
    assert good > 5 * bad and 0.15 < good < 0.45
    # The next round starts at the watermark: nothing new, nothing learned again, no new model.
    clock.t += 60
    assert asyncio.run(trainer.refresh()) == 0 and len(builder.models) == 1
    # An impression served after the watermark is learned once the label delay has passed over it.
    store.insert_events(impression_and_click(trainer.watermark_ms + 10, "good", True, campaign_id="c-good"), "b2")
    clock.t += 60
    assert asyncio.run(trainer.refresh()) == 1 and trainer.impressions["good"] == 1_501
    assert builder.models[-1].version == 2 and builder.models[-1].impressions["good"] == 1_501
