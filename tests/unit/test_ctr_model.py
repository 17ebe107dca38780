"""The click model: hashing the same on both sides, FTRL learning, the sparse wire form in the snapshot, the
edge's vectorized scoring against the scalar one, the auction ranking and pricing with it, and the ground-truth
benchmark on a small run."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adserver.bench_pctr import bench_pctr
from edge.auction import AdRequest, Reason, ecpm_micros, expected_cost, run_auction
from edge.ctr import PRIOR_IMPRESSIONS, blend, model_inputs, predicted_ctr_and_ecpm, predicted_ctr_one
from replication.ctr_model import (
    BIAS,
    MAX_CALIBRATION,
    MODEL_SEGMENTS,
    PRIOR,
    ClickModel,
    Ftrl,
    Impression,
    context_hashes,
    cross_hash,
    cross_hash_array,
    feature_indexes,
    fit_intercept,
    impression_indexes,
    index_of,
    segment_hash,
    sigmoid,
    token_hash,
)
from replication.snapshot import SnapshotDecodeError, build_snapshot, decode_snapshot, encode_snapshot

NOW = 1_705_320_000.0  # 12:00 UTC


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_cross_hash_is_the_same_on_python_ints_and_numpy_arrays(ads, context):
    got = cross_hash_array(np.array(ads, dtype=np.uint64), context)
    assert got.tolist() == [cross_hash(a, context) for a in ads]


def _imp(creative: str, placement: str) -> Impression:
    return Impression("c-" + creative, creative, "adv", placement, "US", "mobile", 12)


def test_ftrl_learns_which_creative_clicks_where_and_leaves_unseen_features_at_zero():
    rng = random.Random(7)
    model = Ftrl(bits=16)
    truth = {("good", "p1"): 0.20, ("good", "p2"): 0.02, ("bad", "p1"): 0.02, ("bad", "p2"): 0.02}
    for _ in range(20_000):
        (creative, placement), p = rng.choice(list(truth.items()))
        model.learn(impression_indexes(_imp(creative, placement), model.bits), rng.random() < p)
    shipped = model.export(1, {})
    predicted = {cell: shipped.predict(_imp(*cell)) for cell in truth}
    # Online learning's last iterate is noisy (0.16 to 0.28 for the 0.20 cell over seeds), so: the right
    # order by a wide margin, the right scale, and the creative's good placement told from its bad one.
    assert 0.12 < predicted[("good", "p1")] < 0.32
    assert all(0.008 < predicted[cell] < 0.045 for cell in truth if cell != ("good", "p1"))
    assert predicted[("good", "p1")] > 4 * max(predicted[("good", "p2")], predicted[("bad", "p1")])
    # L1: coordinates no impression touched stay exactly zero (the shipped model is sparse).
    assert (shipped.weights != 0).sum() < 40


def test_the_model_travels_sparse_in_the_snapshot_and_bad_weights_are_refused(make_campaign):
    model = ClickModel.from_sparse(3, 12, [5, 77, 4000], [0.5, -1.25, 2.0], {"k": 10})
    s = build_snapshot([make_campaign("a")], version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    decoded = decode_snapshot(encode_snapshot(s)).click_model
    assert decoded is not None and decoded.version == 3 and decoded.impressions == {"k": 10}
    assert decoded.weights.tolist() == model.weights.tolist()
    with pytest.raises(ValueError, match="finite"):
        ClickModel.from_sparse(1, 12, [1], [float("nan")], {})
    with pytest.raises(ValueError, match="range"):
        ClickModel.from_sparse(1, 12, [1 << 12], [1.0], {})
    s_bad = dataclasses.replace(s, click_model=dataclasses.replace(model, bits=30))
    with pytest.raises(SnapshotDecodeError, match="click_model"):
        decode_snapshot(encode_snapshot(s_bad))


def _model_for(*pairs: tuple[Impression, float], seen: dict[str, int], bits: int = 16) -> ClickModel:
    """A hand-set model: each impression's creative x placement cross gets the given weight."""
    weights = np.zeros(1 << bits, dtype=np.float32)
    for imp, w in pairs:
        ad = imp.ad_hashes()
        ctx = context_hashes(imp.placement, imp.country, imp.device, imp.hour)
        weights[index_of(cross_hash(ad["cr"], ctx["pl"]), bits)] = w
    weights.flags.writeable = False
    return ClickModel(1, bits, weights, seen)


def test_vectorized_edge_scoring_equals_the_scalar_one(make_campaign, make_creative):
    campaigns = [make_campaign(f"c{i}", bid_type="cpc", creatives=[make_creative(f"c{i}-k1", prior_ctr=0.01 * (i + 1))])
                 for i in range(6)]
    rng = random.Random(3)
    weights = np.array([rng.gauss(0, 0.5) for _ in range(1 << 12)], dtype=np.float32)
    model = ClickModel(1, 12, weights, {"c1-k1": 50, "c3-k1": 5_000})
    s = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    positions = np.arange(len(campaigns))
    for site, segments in (("", ()), ("blog.example", ("kw-a", "rt-adv-x", "kw-b", "kw-c", "kw-d"))):
        means, scores = predicted_ctr_and_ecpm(s, positions, "300x250", "home", "US", "mobile", NOW, site, segments)
        for pos in positions:
            c = s.campaigns[pos]
            mean, ranking = predicted_ctr_one(model, c, c.creatives[0], "home", "US", "mobile", NOW, site, segments)
            assert means[pos] == pytest.approx(mean, rel=1e-5)
            assert scores[pos] == pytest.approx(ecpm_micros(c, ranking), rel=1e-5)  # ranked with the bonus
            assert ranking > mean
            # What the edge serves is what the trainer's model predicts for the same impression: the same
            # features, the declared prior among them, on both sides.
            k = c.creatives[0]
            trained = model.predict(Impression(c.campaign_id, k.creative_id, c.advertiser_id, "home", "US", "mobile",
                                               12, site, segments, k.prior_ctr))
            assert mean == pytest.approx(trained, rel=1e-5)


def test_each_campaigns_model_record_is_one_cache_line(make_campaign):
    s = build_snapshot([make_campaign(f"c{i}") for i in range(37)], version=1, created_ms=0, reserve_cpm_micros=0,
                       click_model=ClickModel.from_sparse(1, 12, [], [], {}))
    records = model_inputs(s, "300x250", "home", "US", "mobile", NOW)[0]
    assert records.strides == (64, 8) and records.ctypes.data % 64 == 0  # one prefetch brings a whole record


def test_the_model_learns_how_far_to_believe_the_declared_priors():
    """The prior is a feature: where advertisers declare their creatives' CTRs truly, its weight grows towards
    1 (a creative the model has never seen is predicted near its prior); where their claims are unrelated to
    the clicks, it stays near 0 (such a creative is predicted at the average)."""
    def train(honest: bool) -> ClickModel:
        rng = random.Random(11)
        model = Ftrl(bits=16)
        for _ in range(60_000):
            creative = rng.randrange(400)
            true = 0.004 * (1 + creative % 10)  # 0.4% to 4%
            declared = true if honest else 0.004 * (1 + rng.randrange(10))
            imp = Impression(f"c{creative}", f"k{creative}", "adv", "p", "US", "mobile", 12, prior_ctr=declared)
            model.learn_impression(imp, rng.random() < true)
        return model.export(1, {})

    def unseen(model: ClickModel, declared: float) -> float:
        return model.predict(Impression("new", "new", "new-adv", "p", "US", "mobile", 12, prior_ctr=declared))

    honest, liars = train(True), train(False)
    # Seen here: 0.63 and 0.06 (the creatives' own weights explain part of what the honest priors say), and an
    # unseen creative 3.0x and 1.1x as likely clicked at a declared 3.6% as at 0.6%.
    assert float(honest.weights[index_of(PRIOR, 16)]) > 0.45
    assert abs(float(liars.weights[index_of(PRIOR, 16)])) < 0.15
    assert unseen(honest, 0.036) > 2.2 * unseen(honest, 0.006)
    assert unseen(liars, 0.036) < 1.3 * unseen(liars, 0.006)


def test_the_shipped_model_is_calibrated_on_impressions_it_has_not_learned():
    """Every HOLDOUT_EVERY-th impression waits, unlearned, in the held-out queue; the shipped model's bias is
    moved so that its mean prediction over that queue equals the recent click rate."""
    model = Ftrl(bits=12, holdout_size=2_000)
    rng = random.Random(2)
    for i in range(30_000):
        imp = Impression("c", f"k{i % 50}", "adv", f"p{i % 7}", "US", "mobile", 12)
        model.learn_impression(imp, rng.random() < 0.03)
    assert model.seen == 30_000 and len(model.held_out) == 2_000
    assert model.trained == 30_000 - 2_000  # the queue's are learned only once they leave it
    raw = model.weights()
    b = model.calibration(raw)
    shipped = model.export(1, {})
    assert float(shipped.weights[index_of(BIAS, 12)]) == pytest.approx(float(raw[index_of(BIAS, 12)]) + b, abs=1e-6)
    rate = float(model.recent_clicks[:30_000].mean())  # the window (100,000) is not full yet
    held = [sigmoid(sum(float(shipped.weights[i]) * x for i, x in zip(idx, xs, strict=True)))
            for idx, xs, _ in model.held_out]
    assert sum(held) / len(held) == pytest.approx(rate, rel=1e-4)


def test_the_intercept_fit_matches_the_rate_and_refuses_to_guess():
    logits = np.random.default_rng(5).normal(-3.5, 1.0, 5_000)
    b = fit_intercept(logits, 0.05, 100_000)
    assert float((1 / (1 + np.exp(-(logits + b)))).mean()) == pytest.approx(0.05, rel=1e-6)
    assert fit_intercept(logits, 0.05, 1_000) == 0.0  # 50 clicks: the rate is too noisy to calibrate to
    assert fit_intercept(logits, 0.9, 100_000) == MAX_CALIBRATION  # a huge correction is capped



def test_the_exploration_bonus_fades_with_impressions():
    p = np.array([0.02, 0.02])
    means, ranking = blend(p, np.array([0.0, 1e6]))
    fresh, known = ranking
    assert fresh > known > 0.02
    assert known == pytest.approx(0.02, rel=0.01)
    assert means.tolist() == pytest.approx([0.02, 0.02])  # the bonus ranks; the model's CTR prices
    # A creative the model has never seen ranks one standard error of PRIOR_IMPRESSIONS impressions higher.
    assert fresh == pytest.approx(0.02 + (0.02 * 0.98 / PRIOR_IMPRESSIONS) ** 0.5)


def test_the_auction_ranks_and_prices_with_the_models_ctr_per_placement(make_campaign, make_creative):
    a = make_campaign("a", bid_type="cpc", max_bid_micros=1_000_000, creatives=[make_creative("ka", prior_ctr=0.02)])
    b = make_campaign("b", bid_type="cpc", max_bid_micros=1_000_000, creatives=[make_creative("kb", prior_ctr=0.02)])
    # The model learned that b clicks well on "sports" and a on "news" (both seen a lot, so no prior pull).
    model = _model_for((Impression("b", "kb", "adv-b", "sports", "", "", 12), 2.0),
                       (Impression("a", "ka", "adv-a", "news", "", "", 12), 2.0), seen={"ka": 10**6, "kb": 10**6})
    s = build_snapshot([a, b], version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    rich = {"a": 10**12, "b": 10**12}

    def auction(placement: str):
        return run_auction(s, AdRequest(placement=placement, slots=1, format="300x250"), now_s=NOW,
                           rng=random.Random(1), allowance=rich)

    sports, news = auction("sports"), auction("news")
    assert [w.campaign.campaign_id for w in sports.wins] == ["b"]
    assert [w.campaign.campaign_id for w in news.wins] == ["a"]
    win = sports.wins[0]
    assert win.ctr > 0.02 * 3  # a logit of 2 above an untrained 0.5
    # GSP in its own unit: b pays, per click, what keeps its eCPM above a's, at its own predicted CTR.
    runner_up_ecpm = 1_000_000 * 0.5 * 1000  # a's CTR on sports: sigmoid(0) = 0.5, before the tiny bonus
    assert win.price_micros == pytest.approx(runner_up_ecpm / (win.ctr * 1000), rel=0.01)
    assert win.reserve_micros == expected_cost(win.campaign, win.ctr, win.price_micros)


def test_a_users_segment_and_the_pages_site_move_the_ranking(make_campaign, make_creative):
    """An advertiser whose ads the readers of a segment click (advertiser x segment) wins those readers; a site
    whose readers click more raises every CTR there, so a CPC bid outranks a CPM one it loses to elsewhere."""
    a = make_campaign("a", advertiser_id="adv-a", bid_type="cpc", max_bid_micros=1_000_000,
                      creatives=[make_creative("ka", prior_ctr=0.01)])
    b = make_campaign("b", advertiser_id="adv-b", bid_type="cpc", max_bid_micros=900_000,
                      creatives=[make_creative("kb", prior_ctr=0.01)])
    flat = make_campaign("flat", advertiser_id="adv-f", bid_type="cpm", max_bid_micros=15_000_000)
    bits = 16
    weights = np.zeros(1 << bits, dtype=np.float32)
    weights[index_of(BIAS, bits)] = math.log(0.01 / 0.99)
    weights[index_of(cross_hash(token_hash("adv", "adv-b"), segment_hash("kw-run")), bits)] = 1.5
    weights[index_of(context_hashes("p", "", "", 12, "clicky.example")["pub"], bits)] = 1.0
    weights.flags.writeable = False
    s = build_snapshot([a, b, flat], version=1, created_ms=0, reserve_cpm_micros=0,
                       click_model=ClickModel(1, bits, weights, {"ka": 10**6, "kb": 10**6}))

    def winner(**request: object) -> str:
        result = run_auction(s, AdRequest(placement="p", slots=1, format="300x250", **request), now_s=NOW,
                             rng=random.Random(1), allowance={"a": 10**12, "b": 10**12, "flat": 10**12})
        return result.wins[0].campaign.campaign_id

    assert winner() == "flat"  # 1% x 1,000,000 a click = 10,000,000 a mille, under flat's 15,000,000
    assert winner(site="clicky.example") == "a"  # 2.7% there: 26,700,000 and 24,000,000
    assert winner(site="clicky.example", segments=("kw-run",)) == "b"  # its readers click b 11.0%: 98,600,000
    assert winner(site="clicky.example", segments=("kw-other",)) == "a"


# A model that knows only that ads are clicked 2% of the time (its bias), and has seen no creative.
FRESH = ClickModel.from_sparse(1, 12, [index_of(BIAS, 12)], [math.log(0.02 / 0.98)], {})


def _new_cpc_creative(make_campaign, make_creative):
    """b: CPC at 100,000 a click, a creative that the model has never seen (predicted at its 2% for all), so it
    ranks with the largest exploration bonus."""
    return make_campaign("b", advertiser_id="adv-b", bid_type="cpc", max_bid_micros=100_000,
                         creatives=[make_creative("kb", prior_ctr=0.02)])


def test_a_winner_pays_the_runner_ups_mean_ecpm_not_its_exploration_bonus(make_campaign, make_creative):
    # b's creative is new to the model (no impressions): it ranks on its predicted CTR plus a bonus of about half
    # of it, worth 3,000,000 per mille where its clicks are expected to be worth 2,000,000. a outbids both.
    a = make_campaign("a", advertiser_id="adv-a", bid_type="cpm", max_bid_micros=5_000_000)
    b = _new_cpc_creative(make_campaign, make_creative)
    s = build_snapshot([a, b], version=1, created_ms=0, reserve_cpm_micros=0, click_model=FRESH)
    request = AdRequest(placement="home", slots=2, format="300x250")
    result = run_auction(s, request, now_s=NOW, rng=random.Random(1), allowance={"a": 10**12, "b": 10**12})
    first, second = result.wins
    assert second.campaign.campaign_id == "b" and second.ctr == pytest.approx(0.02)
    assert second.ecpm_micros > 1.4 * ecpm_micros(b, 0.02)  # ranked with the bonus
    assert first.price_micros == pytest.approx(ecpm_micros(b, 0.02) / 1000, abs=1)  # 2,000 per impression


def test_the_reserve_holds_against_the_mean_ecpm_not_the_exploration_bonus(make_campaign, make_creative):
    # b's new creative ranks at about 3,000,000 per mille with its bonus, but its clicks are expected to be
    # worth 2,000,000: under a reserve of 2,500,000 it is not shown, where the bonus alone would clear it.
    b = _new_cpc_creative(make_campaign, make_creative)
    request = AdRequest(placement="home", slots=1, format="300x250")
    for reserve, fate in ((2_500_000, Reason.BELOW_RESERVE), (1_500_000, None)):
        s = build_snapshot([b], version=1, created_ms=0, reserve_cpm_micros=reserve, click_model=FRESH)
        result = run_auction(s, request, now_s=NOW, rng=random.Random(1), allowance={"b": 10**12}, explain=True)
        assert result.reasons.get("b") == fate
        if fate is None:  # it pays the reserve per click at its mean CTR: 1,500,000 / (0.02 * 1000)
            assert result.wins[0].price_micros == 75_000


def test_without_a_model_the_priors_rank_as_before(make_campaign, make_creative):
    a = make_campaign("a", bid_type="cpc", creatives=[make_creative("ka", prior_ctr=0.05)])
    b = make_campaign("b", bid_type="cpc", creatives=[make_creative("kb", prior_ctr=0.01)])
    s = build_snapshot([a, b], version=1, created_ms=0, reserve_cpm_micros=0)
    result = run_auction(s, AdRequest(placement="x", slots=1, format="300x250"), now_s=NOW, rng=random.Random(1),
                         allowance={"a": 10**12, "b": 10**12})
    assert [(w.campaign.campaign_id, w.ctr) for w in result.wins] == [("a", 0.05)]


def test_feature_indexes_cover_bias_tokens_crosses_and_the_freshest_segments():
    ad = {"cm": token_hash("cm", "c"), "cr": token_hash("cr", "k"), "adv": token_hash("adv", "a")}
    context = context_hashes("p", "US", "mobile", 3, "news.example")
    assert len(feature_indexes(ad, context, 18)) == 1 + 3 + 5 + 3
    assert len(feature_indexes(ad, context_hashes("p", "US", "mobile", 3), 18)) == 1 + 3 + 4 + 3  # no site
    # Each keyword segment on its own and crossed with the advertiser, only the freshest MODEL_SEGMENTS of
    # them; an advertiser's retargeting lists are its own, not the shared model's.
    segments = ("rt-adv-1-cart", *(f"kw-{i}" for i in range(MODEL_SEGMENTS + 3)))
    indexes = feature_indexes(ad, context, 18, segments)
    assert len(indexes) == 1 + 3 + 5 + 3 + 2 * MODEL_SEGMENTS
    assert indexes == feature_indexes(ad, context, 18, segments[1:MODEL_SEGMENTS + 1])


def test_the_ground_truth_benchmark_beats_the_constant_and_random_on_a_small_run(tmp_path: Path):
    out = bench_pctr(rounds=1, say=lambda _: None, workdir=tmp_path, train_n=30_000, eval_n=4_000)
    assert out["oracle_logloss_ratio"] < out["pctr_logloss_ratio"] < 1.0
    assert out["rpm_ratio_vs_random"] > 1.5 and out["ctr_ratio_vs_random"] > 1.0
    assert abs(out["pctr_calibration"] - 1) < 0.15


def test_with_a_model_a_campaign_without_a_creative_of_the_format_is_not_served(make_campaign, make_creative):
    tall = make_campaign("tall", bid_type="cpc", creatives=[make_creative("kt", format="160x600")],
                         max_bid_micros=9_000_000)
    empty = make_campaign("empty", bid_type="cpc", creatives=[], max_bid_micros=9_000_000)  # unrestricted
    fits = make_campaign("fits", bid_type="cpc", creatives=[make_creative("kf", prior_ctr=0.01)])
    model = ClickModel.from_sparse(1, 12, [1], [0.5], {"kt": 10, "kf": 10})
    s = build_snapshot([tall, empty, fits], version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    result = run_auction(s, AdRequest(placement="x", slots=3, format="300x250"), now_s=NOW, rng=random.Random(1),
                         allowance={c: 10**12 for c in ("tall", "empty", "fits")}, explain=True)
    assert [w.campaign.campaign_id for w in result.wins] == ["fits"]
    assert result.reasons == {"empty": Reason.FORMAT}  # (tall is not even retrieved for 300x250)


def test_negative_impression_counts_are_refused_on_the_wire(make_campaign):
    model = ClickModel.from_sparse(1, 12, [1], [0.5], {"k": -300})
    s = build_snapshot([make_campaign("a")], version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    with pytest.raises(SnapshotDecodeError, match="at least 0"):
        decode_snapshot(encode_snapshot(s))


def test_formats_no_campaign_has_share_one_memo_entry(make_campaign):
    s = build_snapshot([make_campaign("a", creatives=[])], version=1, created_ms=0, reserve_cpm_micros=0,
                       click_model=ClickModel.from_sparse(1, 12, [], [], {}))
    for i in range(200):  # a caller cycling through format strings must not grow the edge's memory
        run_auction(s, AdRequest(placement="x", slots=1, format=f"{i + 10}x{i + 10}"), now_s=NOW,
                    rng=random.Random(1), allowance={"a": 10**12})
    assert len(s.columns.memo) < 10
