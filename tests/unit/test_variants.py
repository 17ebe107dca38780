"""Creative optimization's pure core: variants of a creative, Thompson sampling per segment, the trainer's tally,
and the contract around them (validation, review, snapshot and event codecs)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from control_plane.models import ValidationFailed, review_creative, validate_creative
from replication.events import BidType, Event, EventDecodeError, EventType, decode_event, encode_event
from replication.snapshot import SnapshotCreative, _arms_from_wire, _creative_from_wire
from replication.variants import ALL_SEGMENTS, HALF_LIFE_S, Tally, choose, pick, posterior, segment_of, variants

CREATIVE = SnapshotCreative("k1", "300x250", "Run faster", "https://img/a.png", "https://shop", "Buy", 0.02,
                            alternatives=(("Run further", "Run lighter"), ("https://img/b.png",), ()))


def test_variants_are_every_combination_with_the_creative_itself_first() -> None:
    vs = variants(CREATIVE)
    assert len(vs) == 3 * 2 * 1
    assert vs[0].key == "0.0.0" and (vs[0].headline, vs[0].image_url, vs[0].cta) == ("Run faster",
                                                                                       "https://img/a.png", "Buy")
    assert {v.key for v in vs} == {f"{h}.{i}.0" for h in range(3) for i in range(2)}
    assert next(v for v in vs if v.key == "2.1.0").headline == "Run lighter"


def test_a_creative_without_alternatives_has_no_variant_to_pick() -> None:
    plain = SnapshotCreative("k2", "300x250", "H", "https://i", "https://l", "Go", 0.02)
    assert pick(plain, {}, "mobile", np.random.default_rng(1), {}) is None


def test_pick_computes_a_posterior_once_per_creative_and_segment() -> None:
    cache: dict = {}
    cells = {v.key: (1000.0, 100.0 if v.key == "1.0.0" else 10.0) for v in variants(CREATIVE)}
    arms = {"k1": {"mobile": cells, ALL_SEGMENTS: cells}}
    rng = np.random.default_rng(2)
    shown = [pick(CREATIVE, arms, "mobile", rng, cache) for _ in range(200)]
    assert set(cache) == {("k1", "mobile")}
    assert sum(v is not None and v.key == "1.0.0" for v in shown) > 190


def _shown(arms: dict, segment: str, n: int = 2000, seed: int = 7) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    opts = variants(CREATIVE)
    counts: dict[str, int] = {}
    for _ in range(n):
        key = choose(CREATIVE, opts, arms, segment, rng).key
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_thompson_sampling_shows_each_segment_its_own_winner() -> None:
    # Desktop clicks "1.0.0" (5%) far more than the rest (1%); mobile clicks "1.1.0". 5,000 impressions each.
    arms: dict[str, dict[str, tuple[float, float]]] = {"desktop": {}, "mobile": {}, ALL_SEGMENTS: {}}
    for v in variants(CREATIVE):
        for seg, best in (("desktop", "1.0.0"), ("mobile", "1.1.0")):
            cell = (5000.0, 250.0 if v.key == best else 50.0)
            arms[seg][v.key] = cell
            pooled = arms[ALL_SEGMENTS].get(v.key, (0.0, 0.0))
            arms[ALL_SEGMENTS][v.key] = (pooled[0] + cell[0], pooled[1] + cell[1])
    desktop, mobile = _shown(arms, "desktop"), _shown(arms, "mobile")
    assert desktop.get("1.0.0", 0) > 0.95 * 2000, desktop
    assert mobile.get("1.1.0", 0) > 0.95 * 2000, mobile
    # A segment with no data of its own starts from the others' evidence: headline 1 won on both, so it is
    # shown mostly with headline 1 (a third of the variants have it), and its own clicks decide from there.
    tablet = _shown(arms, "tablet")
    assert tablet.get("1.0.0", 0) + tablet.get("1.1.0", 0) > 0.7 * 2000, tablet


def test_a_part_is_judged_on_every_variant_that_shares_it() -> None:
    """Headline 2 was clicked well with image 0; with image 1 it was never shown. The factorized prior
    still expects "2.1.0" to do better than the variants with headline 0, which did badly everywhere."""
    seg = {"0.0.0": (2000.0, 10.0), "0.1.0": (2000.0, 12.0), "1.0.0": (2000.0, 20.0), "1.1.0": (2000.0, 22.0),
           "2.0.0": (2000.0, 80.0)}
    alpha, beta = posterior(CREATIVE, variants(CREATIVE), {"desktop": seg, ALL_SEGMENTS: seg}, "desktop")
    mean = dict(zip((v.key for v in variants(CREATIVE)), alpha / (alpha + beta), strict=True))
    assert mean["2.1.0"] > 2 * max(mean["0.0.0"], mean["0.1.0"]), mean
    assert mean["2.0.0"] == max(mean.values())


def test_without_evidence_every_variant_gets_tried() -> None:
    counts = _shown({}, "desktop", n=3000)
    assert set(counts) == {v.key for v in variants(CREATIVE)}
    assert min(counts.values()) > 3000 / 6 * 0.6, counts


def test_learning_from_a_hidden_click_model_beats_showing_variants_at_random() -> None:
    """The loop the product runs, in miniature: show, observe clicks from a hidden truth, tally, refresh the
    arms every 500 impressions (the trainer's rounds). Thompson must find the best variant per segment."""
    truth_rng = np.random.default_rng(3)
    opts = variants(CREATIVE)
    true_ctr = {(seg, v.key): float(truth_rng.uniform(0.005, 0.04)) for seg in ("desktop", "mobile") for v in opts}
    rng = np.random.default_rng(11)
    tally = Tally()
    arms: dict = {}
    clicks = {"thompson": 0, "random": 0}
    n = 20_000
    for t in range(n):
        seg = "desktop" if t % 2 else "mobile"
        shown = choose(CREATIVE, opts, arms.get("k1", {}), seg, rng)
        clicked = bool(rng.random() < true_ctr[(seg, shown.key)])
        clicks["thompson"] += clicked
        tally.add("k1", seg, shown.key, clicked, ts_ms=t * 10)
        at_random = opts[int(rng.integers(len(opts)))]
        clicks["random"] += bool(rng.random() < true_ctr[(seg, at_random.key)])
        if t % 500 == 499:
            arms = tally.export()
    best = sum(max(true_ctr[(seg, v.key)] for v in opts) for seg in ("desktop", "mobile")) / 2
    mean = sum(true_ctr.values()) / len(true_ctr)
    assert clicks["thompson"] / n > mean + 0.6 * (best - mean), (clicks, mean, best)
    assert clicks["thompson"] > 1.3 * clicks["random"], clicks


def test_tally_counts_per_segment_and_pooled_and_forgets_with_its_half_life() -> None:
    tally = Tally()
    tally.add("k1", "mobile", "1.0.0", True, ts_ms=0)
    tally.add("k1", "", "1.0.0", False, ts_ms=0)
    tally.add("k1", "mobile", "", True, ts_ms=0)  # a plain creative's impression is not a variant's
    arms = tally.export()["k1"]
    assert arms["mobile"]["1.0.0"] == (1.0, 1.0)
    assert arms[segment_of("")]["1.0.0"] == (1.0, 0.0)
    assert arms[ALL_SEGMENTS]["1.0.0"] == (2.0, 1.0)
    tally.add("k1", "mobile", "1.0.0", False, ts_ms=int(HALF_LIFE_S * 1000))
    assert tally.export()["k1"]["mobile"]["1.0.0"] == pytest.approx((1.5, 0.5))


def test_tally_decay_is_not_lost_to_many_small_gaps() -> None:
    tally = Tally(half_life_s=100.0)
    for ms in range(0, 100_001, 50):  # 2,001 impressions 50 ms apart: each gap alone decays < 0.1%
        tally.add("k1", "desktop", "0.0.0", False, ts_ms=ms)
    imps = tally.export()["k1"]["desktop"]["0.0.0"][0]
    # The geometric sum of 2,001 impressions over one half-life: far fewer than 2,001 survive.
    assert 1300 < imps < 1500, imps


def test_creative_alternatives_are_validated_reviewed_and_merged() -> None:
    base = {"headline": "Run", "image_url": "https://img/a.png", "landing_url": "https://shop", "size": "300x250"}
    ok = validate_creative({**base, "alternatives": {"headline": ["Run far", " Run far ", "Run"], "cta": ["Go"]}})
    assert ok["alternatives"] == {"headline": ["Run far"], "image_url": [], "cta": ["Go"]}
    with pytest.raises(ValidationFailed) as bad:
        validate_creative({**base, "alternatives": {"headline": ["a", "b", "c", "d"], "colour": ["red"],
                                                    "image_url": ["not a url"]}})
    fields = {e.field for e in bad.value.errors}
    assert fields == {"alternatives.headline", "alternatives.colour", "alternatives.image_url[0]"}
    with pytest.raises(ValidationFailed) as bad:
        validate_creative({**base, "alternatives": ["Run far"]})
    assert bad.value.errors[0].field == "alternatives"
    flagged = review_creative({**ok, "landing_url": "https://shop", "cta": "Buy",
                               "alternatives": {"headline": ["a miracle cure"], "image_url": ["http://img/b.png"],
                                                "cta": []}})
    assert any("banned" in r for r in flagged) and "every alternative image_url must use https" in flagged
    # A banned pair stays banned when alternatives are added (any headline may be shown beside any CTA), and
    # two texts that no ad shows side by side do not make one.
    pair = {**ok, "headline": "Get rich", "cta": "quick cash", "landing_url": "https://shop"}
    assert review_creative({**pair, "alternatives": {"headline": ["Hello"], "image_url": [], "cta": []}})
    apart = {**ok, "headline": "Get free", "cta": "Buy", "landing_url": "https://shop",
             "alternatives": {"headline": ["Money back"], "image_url": [], "cta": []}}
    assert review_creative(apart) == []


def test_snapshot_codec_carries_alternatives_and_refuses_bad_arms() -> None:
    wire = ["k1", "300x250", "H", "https://i", "https://l", "Go", 0.02, [["H2"], [], ["Buy"]]]
    assert _creative_from_wire(wire).alternatives == (("H2",), (), ("Buy",))
    assert _creative_from_wire(wire[:7]).alternatives == ((), (), ())  # an older builder's snapshot
    from replication.snapshot import SnapshotDecodeError
    with pytest.raises(SnapshotDecodeError):
        _creative_from_wire([*wire[:7], [["a", "b", "c", "d"], [], []]])
    assert _arms_from_wire({"k1": {"mobile": {"0.0.0": [10, 2]}}}) == {"k1": {"mobile": {"0.0.0": (10.0, 2.0)}}}
    for bad in ({"k1": {"mobile": {"0.0.0": [2, 10]}}}, {"k1": {"mobile": {"0.0.0": [1]}}}, {"k1": []},
                {"k1": {"mobile": {"0.0.0": [True, 0]}}}):
        with pytest.raises(SnapshotDecodeError):
            _arms_from_wire(bad)


def test_events_carry_the_variant_and_refuse_a_forged_one() -> None:
    event = Event("imp:a-0", EventType.IMPRESSION, 1, "eu", "p", "a", "a-0", "c1", "k1", "adv", "plc", BidType.CPM,
                  10, 10, variant="2.1.0")
    assert decode_event(encode_event(event)).variant == "2.1.0"
    version, values = msgpack.unpackb(encode_event(event))
    values[-1] = "9" * 40
    with pytest.raises(EventDecodeError, match="variant"):
        decode_event(msgpack.packb([version, values]))
    older = msgpack.packb([version, values[:-1]])  # an edge from before variants
    assert decode_event(older).variant == ""


def test_tally_forgets_a_creative_no_longer_shown() -> None:
    tally = Tally(half_life_s=10.0)
    tally.add("old", "mobile", "0.0.0", True, ts_ms=0)
    tally.add("new", "mobile", "0.0.0", False, ts_ms=200_000)  # 20 half-lives later: "old" is down to 1e-6
    assert set(tally.export()) == {"new"}


def test_a_snapshot_carries_only_the_arms_of_creatives_it_serves(make_campaign) -> None:
    from control_plane.builder import _with_arms_of
    from replication.ctr_model import Ftrl

    served = make_campaign("c1")
    live = served.creatives[0].creative_id
    model = Ftrl(bits=8).export(1, {}, arms={live: {"*": {"0.0.0": (1.0, 0.0)}}, "gone": {"*": {"0.0.0": (9.0, 1.0)}}})
    shipped = _with_arms_of(model, [served])
    assert shipped is not None and set(shipped.arms) == {live} and set(model.arms) == {live, "gone"}
    assert shipped.weights is model.weights  # the weights are shared, not copied
