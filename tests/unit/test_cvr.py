"""Learned conversion rates (``control_plane.cvr``): a campaign's rate is shrunk towards its advertiser's and
that towards the declared prior, and on simulated traffic the learned rates predict conversions better than
what advertisers declare."""

from __future__ import annotations

import random

import pytest

from adserver.bench_pctr import evaluate_cvr
from control_plane.cvr import NONE, PRIOR_CLICKS, Counts, by_advertiser, conversion_rate
from loadtest.ground_truth import TrueConversionModel


def test_a_campaign_is_shrunk_towards_its_advertiser_and_the_advertiser_towards_the_declared_prior():
    counts = {"a1": Counts(clicks=1_000, conversions=10), "old": Counts(clicks=200, conversions=2)}
    advertisers = by_advertiser(counts, {"a1": "adv-a", "old": "adv-a", "stranger": "adv-x"})
    assert advertisers == {"adv-a": Counts(1_200, 12)}
    level = (12 + PRIOR_CLICKS * 0.2) / (1_200 + PRIOR_CLICKS)  # the advertiser's 1% pulled a little to 20%
    rate = conversion_rate(counts["a1"], advertisers["adv-a"], 0.2)
    assert rate == pytest.approx((10 + PRIOR_CLICKS * level) / (1_000 + PRIOR_CLICKS))
    assert 0.01 < rate < 0.02
    assert conversion_rate(NONE, advertisers["adv-a"], 0.2) == pytest.approx(level)  # a new campaign: its level
    assert conversion_rate(NONE, NONE, 0.2) == 0.2  # an advertiser nobody has clicked: what it declares
    # A handful of clicks barely moves a campaign off its level; several conversions per click count each.
    assert 0.2 < conversion_rate(Counts(4, 4), Counts(4, 4), 0.2) < 0.35
    assert conversion_rate(Counts(400, 800), Counts(400, 800), 0.2) > 1.5


def test_learned_rates_predict_conversions_better_than_the_declared_ones():
    """On simulated CPA traffic (``loadtest.ground_truth.TrueConversionModel``), judged on fresh clicks by log
    loss: of what separates the declared rates from the true ones, the learned ones close most (seen here: 85%),
    and their mean is near the true mean where the declared ones are nearly double."""
    world = TrueConversionModel(seed=4)
    out = evaluate_cvr(world, random.Random(5), fresh_per_campaign=400)
    assert out["pcvr_gap_left"] < 0.4
    assert out["pcvr_calibration"] == pytest.approx(1.0, abs=0.15)
    assert out["declared_cvr_calibration"] > 1.5
