"""``adserver bench --only pctr``: the click model against ground truth.

Traffic comes from ``loadtest.ground_truth``, whose hidden click model the learner never sees. The model
(``replication.ctr_model``: hashed features, FTRL-Proximal) learns online from impressions shown by a random
logging policy, as the control plane would from the event stream, and is then judged on fresh impressions:

- ``pctr_logloss_ratio``: its log loss over the best constant CTR's (the training set's mean, known in
  hindsight), on the same held-out impressions (target ≤ 0.9);
- ``pctr_calibration``: predicted clicks / clicked, on those impressions (target within 5%);
- ``oracle_logloss_ratio``: the same ratio for the true probabilities, the floor no model can beat: the
  ground truth's effects are sized so that it sits near 0.8, the normalized entropy good production click
  models report;
- revenue per thousand requests and CTR when one slot is filled by eCPM with the model's pCTR, against a
  random pick and against the highest bid, with the revenue and clicks each would bring under the true model
  (CPM pays its bid per thousand, CPC its bid per click).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.ground_truth import Ad, Context, TrueClickModel
from replication.ctr_model import ClickModel, Ftrl, Impression, impression_indexes, log_loss

TRAIN = 200_000
EVAL = 40_000


def _impression(ad: Ad, ctx: Context) -> Impression:
    return Impression(ad.campaign_id, ad.creative_id, ad.advertiser_id, ctx.placement, ctx.country, ctx.device,
                      ctx.hour)


def _value(ad: Ad, ctr: float) -> float:
    """Expected revenue of one impression, micros."""
    return ad.bid_micros / 1000 if ad.bid_type == "cpm" else ad.bid_micros * ctr


def train(truth: TrueClickModel, n: int, seed: int, say: Callable[[str], None]) -> tuple[Ftrl, float]:
    rng = random.Random(seed)
    model = Ftrl()
    clicks = 0
    for i in range(n):
        ctx = truth.context(rng)
        ad = rng.choice(truth.candidates(rng))
        clicked = rng.random() < truth.ctr(ad, ctx)
        clicks += clicked
        model.learn(impression_indexes(_impression(ad, ctx), model.bits), clicked)
        if (i + 1) % 50_000 == 0:
            say(f"pctr: trained on {i + 1:,} impressions")
    return model, clicks / n


def evaluate(truth: TrueClickModel, model: ClickModel, constant: float, n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    loss_model = loss_const = loss_oracle = predicted = clicked_total = 0.0
    revenue = {"model": 0.0, "random": 0.0, "highest_bid": 0.0}
    ctr = {"model": 0.0, "random": 0.0, "highest_bid": 0.0}
    for _ in range(n):
        ctx = truth.context(rng)
        candidates = truth.candidates(rng)
        # Held-out impression from the logging policy: the loss and calibration sample.
        shown = rng.choice(candidates)
        p = model.predict(_impression(shown, ctx))
        true_p = truth.ctr(shown, ctx)
        clicked = rng.random() < true_p
        loss_model += log_loss(p, clicked)
        loss_oracle += log_loss(true_p, clicked)  # the best any model could do: the headroom below 1
        loss_const += log_loss(constant, clicked)
        predicted += p
        clicked_total += clicked
        # The three selection policies on the same request.
        by_model = max(candidates, key=lambda a: _value(a, model.predict(_impression(a, ctx))))
        picks = {"model": by_model, "random": rng.choice(candidates),
                 "highest_bid": max(candidates, key=lambda a: a.bid_micros)}
        for name, ad in picks.items():
            true_ctr = truth.ctr(ad, ctx)
            revenue[name] += _value(ad, true_ctr)
            ctr[name] += true_ctr
    return {
        "pctr_logloss": loss_model / n, "const_logloss": loss_const / n,
        "pctr_logloss_ratio": (loss_model / n) / (loss_const / n),
        "oracle_logloss_ratio": (loss_oracle / n) / (loss_const / n),
        "pctr_calibration": predicted / max(clicked_total, 1.0),
        **{f"rpm_{k}": v / n for k, v in revenue.items()},  # micros per impression x 1000 / 1000
        **{f"ctr_{k}": v / n for k, v in ctr.items()},
    }


def bench_pctr(*, rounds: int, say: Callable[[str], None], workdir: Path, train_n: int = TRAIN,
               eval_n: int = EVAL, **_: Any) -> dict[str, Any]:
    runs = []
    for r in range(max(1, rounds)):
        truth = TrueClickModel(seed=100 + r)
        ftrl, mean_ctr = train(truth, train_n, seed=200 + r, say=say)
        shipped = ftrl.export(1, impressions={})
        result = evaluate(truth, shipped, mean_ctr, eval_n, seed=300 + r)
        result["nonzero_weights"] = int((shipped.weights != 0).sum())
        say(f"pctr round {r + 1}: log loss {result['pctr_logloss']:.4f} vs constant {result['const_logloss']:.4f} "
            f"({result['pctr_logloss_ratio']:.3f}x), calibration {result['pctr_calibration']:.3f}, "
            f"RPM {result['rpm_model']:,.0f} vs random {result['rpm_random']:,.0f}, "
            f"highest bid {result['rpm_highest_bid']:,.0f}")
        runs.append(result)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 4)

    return {
        "pctr_logloss_ratio": med("pctr_logloss_ratio"),
        "oracle_logloss_ratio": med("oracle_logloss_ratio"),
        "pctr_calibration": med("pctr_calibration"),
        "pctr_calibration_error": round(statistics.median(abs(r["pctr_calibration"] - 1) for r in runs), 4),
        "rpm_ratio_vs_random": round(statistics.median(r["rpm_model"] / r["rpm_random"] for r in runs), 3),
        "rpm_ratio_vs_highest_bid": round(statistics.median(r["rpm_model"] / r["rpm_highest_bid"] for r in runs), 3),
        "ctr_ratio_vs_random": round(statistics.median(r["ctr_model"] / r["ctr_random"] for r in runs), 3),
        "ctr_ratio_vs_highest_bid": round(statistics.median(r["ctr_model"] / r["ctr_highest_bid"] for r in runs), 3),
        "runs": runs,
    }
