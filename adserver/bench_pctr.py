"""``adserver bench --only pctr``: the click model against ground truth.

Traffic comes from ``loadtest.ground_truth``, whose hidden click model the learner never sees. The model
(``replication.ctr_model``: hashed features, FTRL-Proximal) learns online from impressions shown by a random
logging policy, as the control plane would from the event stream, and is then judged on fresh impressions:

- ``pctr_logloss_ratio``: the log loss of the CTR the edge serves (``edge.ctr.blend``'s mean: the model's
  prediction, the advertiser's declared prior CTR one of its features) over the best constant CTR's (the
  training set's mean, known in hindsight), on the same held-out impressions (target ≤ 0.9);
- ``prior_logloss_ratio``: the same for the declared priors taken at their word, what the edge ranks on before
  a model is trained;
- ``pctr_calibration``: served predicted clicks / clicked, on those impressions (target within 5%; 40,000
  impressions hold about 900 clicks, so this reads about 3% either side of the truth);
  ``pctr_calibration_exact``: over the clicks the true model expects instead, without that noise;
- ``oracle_logloss_ratio``: the same ratio for the true probabilities, the floor no model can beat: the
  ground truth's effects are sized so that it sits near 0.8, the normalized entropy good production click
  models report;
- ``pcvr_gap_left``: CPA conversion rates (``control_plane.cvr``) learned from simulated clicks and
  conversions (``loadtest.ground_truth.TrueConversionModel``), judged on fresh clicks by log loss: the share
  of the gap between the advertisers' declared rates and the true ones that the learned rates leave (0: as
  good as the truth, 1: no better than declared); ``pcvr_calibration`` their mean over the true mean;
- revenue per thousand requests and CTR when one slot is filled by eCPM as the edge ranks (the served CTR
  plus its exploration bonus), against a random pick and against the highest bid, with the revenue and
  clicks each would bring under the true model (CPM pays its bid per thousand, CPC its bid per click).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.cvr import Counts, by_advertiser, conversion_rate
from edge.ctr import blend
from loadtest.ground_truth import Ad, Context, TrueClickModel, TrueConversionModel
from replication.ctr_model import ClickModel, Ftrl, Impression, log_loss

TRAIN = 200_000
EVAL = 40_000


def _impression(truth: TrueClickModel, ad: Ad, ctx: Context) -> Impression:
    return Impression(ad.campaign_id, ad.creative_id, ad.advertiser_id, ctx.placement, ctx.country, ctx.device,
                      ctx.hour, ctx.site, ctx.segments, truth.declared_prior(ad))


def _value(ad: Ad, ctr: float) -> float:
    """Expected revenue of one impression, micros."""
    return ad.bid_micros / 1000 if ad.bid_type == "cpm" else ad.bid_micros * ctr


def train(truth: TrueClickModel, n: int, seed: int,
          say: Callable[[str], None]) -> tuple[Ftrl, float, dict[str, int]]:
    """The model after ``n`` impressions, their mean CTR, and impressions per creative (what the control plane
    ships with the model, ``control_plane.click_trainer``)."""
    rng = random.Random(seed)
    model = Ftrl()
    clicks = 0
    seen: dict[str, int] = {}
    for i in range(n):
        ctx = truth.context(rng)
        ad = rng.choice(truth.candidates(rng))
        clicked = rng.random() < truth.ctr(ad, ctx)
        clicks += clicked
        seen[ad.creative_id] = seen.get(ad.creative_id, 0) + 1
        model.learn_impression(_impression(truth, ad, ctx), clicked)
        if (i + 1) % 50_000 == 0:
            say(f"pctr: trained on {i + 1:,} impressions")
    return model, clicks / n, seen


def served(truth: TrueClickModel, model: ClickModel, ad: Ad, ctx: Context) -> tuple[float, float]:
    """(the CTR the edge serves, the CTR it ranks on): ``edge.ctr.blend`` of the model's prediction, as
    ``edge.ctr.score_one`` computes it per candidate."""
    p = model.predict(_impression(truth, ad, ctx))
    mean, ranking = blend(np.array([p]), np.array([float(model.impressions.get(ad.creative_id, 0))]))
    return float(mean[0]), float(ranking[0])


def evaluate(truth: TrueClickModel, model: ClickModel, constant: float, n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    loss_served = loss_prior = loss_const = loss_oracle = predicted = clicked_total = expected = 0.0
    revenue = {"model": 0.0, "random": 0.0, "highest_bid": 0.0}
    ctr = {"model": 0.0, "random": 0.0, "highest_bid": 0.0}
    for _ in range(n):
        ctx = truth.context(rng)
        candidates = truth.candidates(rng)
        # Held-out impression from the logging policy: the loss and calibration sample.
        shown = rng.choice(candidates)
        mean, _ = served(truth, model, shown, ctx)
        true_p = truth.ctr(shown, ctx)
        clicked = rng.random() < true_p
        loss_served += log_loss(mean, clicked)
        loss_prior += log_loss(truth.declared_prior(shown), clicked)
        loss_oracle += log_loss(true_p, clicked)  # the best any model could do: the headroom below 1
        loss_const += log_loss(constant, clicked)
        predicted += mean
        clicked_total += clicked
        expected += true_p
        # The three selection policies on the same request.
        by_model = max(candidates, key=lambda a: _value(a, served(truth, model, a, ctx)[1]))
        picks = {"model": by_model, "random": rng.choice(candidates),
                 "highest_bid": max(candidates, key=lambda a: a.bid_micros)}
        for name, ad in picks.items():
            true_ctr = truth.ctr(ad, ctx)
            revenue[name] += _value(ad, true_ctr)
            ctr[name] += true_ctr
    return {
        "pctr_logloss": loss_served / n, "const_logloss": loss_const / n,
        "pctr_logloss_ratio": loss_served / loss_const, "prior_logloss_ratio": loss_prior / loss_const,
        "oracle_logloss_ratio": (loss_oracle / n) / (loss_const / n),
        "pctr_calibration": predicted / max(clicked_total, 1.0),
        "pctr_calibration_exact": predicted / expected,
        **{f"rpm_{k}": v / n for k, v in revenue.items()},  # micros per impression x 1000 / 1000
        **{f"ctr_{k}": v / n for k, v in ctr.items()},
    }


def evaluate_cvr(world: TrueConversionModel, rng: random.Random, fresh_per_campaign: int) -> dict[str, float]:
    counts = {cid: Counts(n, sum(world.converted(rng, cid, n))) for cid, n in world.clicks.items()}
    advertisers = by_advertiser(counts, world.advertiser_of)
    learned = {cid: conversion_rate(counts[cid], advertisers[world.advertiser_of[cid]], prior)
               for cid, prior in world.declared.items()}
    fresh = {cid: world.converted(rng, cid, fresh_per_campaign) for cid in world.truth}

    def loss(rates: dict[str, float]) -> float:
        return sum(log_loss(rates[cid], c) for cid, outcomes in fresh.items() for c in outcomes) / (
            len(fresh) * fresh_per_campaign)

    true_mean = sum(world.truth.values()) / len(world.truth)
    return {"pcvr_gap_left": (loss(learned) - loss(world.truth)) / (loss(world.declared) - loss(world.truth)),
            "pcvr_calibration": sum(learned.values()) / len(learned) / true_mean,
            "declared_cvr_calibration": sum(world.declared.values()) / len(world.declared) / true_mean}


def bench_pctr(*, rounds: int, say: Callable[[str], None], workdir: Path, train_n: int = TRAIN,
               eval_n: int = EVAL, **_: Any) -> dict[str, Any]:
    runs = []
    for r in range(max(1, rounds)):
        truth = TrueClickModel(seed=100 + r)
        ftrl, mean_ctr, seen = train(truth, train_n, seed=200 + r, say=say)
        shipped = ftrl.export(1, impressions=seen)
        result = evaluate(truth, shipped, mean_ctr, eval_n, seed=300 + r)
        result["nonzero_weights"] = int((shipped.weights != 0).sum())
        say(f"pctr round {r + 1}: served log loss {result['pctr_logloss']:.4f} vs constant "
            f"{result['const_logloss']:.4f} ({result['pctr_logloss_ratio']:.3f}x; the declared priors "
            f"{result['prior_logloss_ratio']:.3f}x), calibration {result['pctr_calibration']:.3f} "
            f"(against the expected clicks {result['pctr_calibration_exact']:.3f}), "
            f"RPM {result['rpm_model']:,.0f} vs random {result['rpm_random']:,.0f}, "
            f"highest bid {result['rpm_highest_bid']:,.0f}")
        result.update(evaluate_cvr(TrueConversionModel(seed=400 + r), random.Random(500 + r), 400))
        say(f"pcvr round {r + 1}: learned rates leave {result['pcvr_gap_left']:.2f} of the declared rates' log "
            f"loss gap to the truth, mean {result['pcvr_calibration']:.3f} of the true one (declared "
            f"{result['declared_cvr_calibration']:.2f})")
        runs.append(result)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 4)

    return {
        "pctr_logloss_ratio": med("pctr_logloss_ratio"),
        "prior_logloss_ratio": med("prior_logloss_ratio"),
        "oracle_logloss_ratio": med("oracle_logloss_ratio"),
        "pctr_calibration": med("pctr_calibration"),
        "pctr_calibration_exact": med("pctr_calibration_exact"),
        "pctr_calibration_error": round(statistics.median(abs(r["pctr_calibration"] - 1) for r in runs), 4),
        "pcvr_gap_left": med("pcvr_gap_left"),
        "pcvr_calibration": med("pcvr_calibration"),
        "declared_cvr_calibration": med("declared_cvr_calibration"),
        "rpm_ratio_vs_random": round(statistics.median(r["rpm_model"] / r["rpm_random"] for r in runs), 3),
        "rpm_ratio_vs_highest_bid": round(statistics.median(r["rpm_model"] / r["rpm_highest_bid"] for r in runs), 3),
        "ctr_ratio_vs_random": round(statistics.median(r["ctr_model"] / r["ctr_random"] for r in runs), 3),
        "ctr_ratio_vs_highest_bid": round(statistics.median(r["ctr_model"] / r["ctr_highest_bid"] for r in runs), 3),
        "runs": runs,
    }
