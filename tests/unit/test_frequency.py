"""Frequency caps, the pure half (edge/frequency.py) and how the auction applies them: sliding windows of
impression times, campaign and creative scopes, the auction's fallback to a campaign's next creative, and
the campaign API's validation of caps."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.models import ValidationFailed, to_snapshot_campaign, validate_frequency_caps
from edge.auction import AdRequest, Reason, ecpm_micros, run_auction
from edge.frequency import (
    NOTHING_CAPPED,
    Capped,
    all_capped,
    appended,
    campaign_field,
    capped,
    creative_field,
    fields_to_record,
)
from replication.snapshot import FrequencyCap, build_snapshot, decode_snapshot, encode_snapshot

NOW = 1_705_320_000.0
DAY = FrequencyCap("campaign", 3, 86_400)
HOUR_PER_CREATIVE = FrequencyCap("creative", 1, 3_600)


def test_a_campaign_is_capped_once_the_window_holds_max_impressions():
    caps = {"c": (DAY,)}
    seen_twice = {campaign_field("c"): [NOW - 7_200, NOW - 60]}
    assert capped(seen_twice, caps, NOW) == NOTHING_CAPPED
    seen_thrice = {campaign_field("c"): [NOW - 80_000, NOW - 7_200, NOW - 60]}
    assert capped(seen_thrice, caps, NOW).campaigns == {"c"}


def test_the_window_slides_rather_than_resetting():
    caps = {"c": (DAY,)}
    history = {campaign_field("c"): [NOW - 86_400, NOW - 7_200, NOW - 60]}  # the oldest just left the window
    assert capped(history, caps, NOW) == NOTHING_CAPPED
    assert capped(history, caps, NOW - 1).campaigns == {"c"}


def test_creative_caps_name_the_creative_and_its_campaign():
    caps = {"c": (HOUR_PER_CREATIVE,)}
    history = {creative_field("c", "k1"): [NOW - 100], creative_field("c", "k2"): [NOW - 4_000]}
    result = capped(history, caps, NOW)
    assert result.campaigns == frozenset()
    assert dict(result.creatives) == {"c": {"k1"}}


def test_history_of_uncapped_campaigns_and_unknown_fields_is_ignored():
    history = {campaign_field("gone"): [NOW] * 5, "x:future-format": [NOW], creative_field("c", "k"): [NOW]}
    assert capped(history, {"c": (DAY,)}, NOW) == NOTHING_CAPPED  # c caps per campaign, not per creative


def test_the_strictest_of_several_caps_decides():
    caps = {"c": (FrequencyCap("campaign", 10, 86_400), FrequencyCap("campaign", 2, 600))}
    assert capped({campaign_field("c"): [NOW - 300, NOW - 10]}, caps, NOW).campaigns == {"c"}
    assert capped({campaign_field("c"): [NOW - 900, NOW - 10]}, caps, NOW) == NOTHING_CAPPED


def test_fields_to_record_keep_enough_times_for_the_largest_cap_and_live_for_the_longest_window():
    caps = (FrequencyCap("campaign", 2, 600), FrequencyCap("campaign", 5, 86_400), HOUR_PER_CREATIVE)
    assert fields_to_record("c", "k", caps) == [(campaign_field("c"), 5, 86_400), (creative_field("c", "k"), 1, 3_600)]
    assert fields_to_record("c", "k", (DAY,)) == [(campaign_field("c"), 3, 86_400)]


@given(st.lists(st.floats(0, 1e6), max_size=30), st.floats(0, 1e6), st.integers(1, 10))
def test_appended_keeps_the_newest_times_in_order(times, now, keep):
    out = appended(sorted(times), now, keep)
    assert out == sorted([*times, now])[-keep:]
    assert len(out) == min(keep, len(times) + 1)


def test_fail_closed_caps_every_campaign_that_has_caps():
    assert all_capped({"a": (DAY,), "b": (HOUR_PER_CREATIVE,)}).campaigns == {"a", "b"}
    assert all_capped({}) == NOTHING_CAPPED


# --- the auction ---------------------------------------------------------------------------------------------


def _auction(snapshot, capped_now: Capped, slots: int = 1):
    allowance = {c.campaign_id: 10**12 for c in snapshot.campaigns}
    return run_auction(snapshot, AdRequest(placement="home", slots=slots, format="300x250"), now_s=NOW,
                       rng=random.Random(1), allowance=allowance, capped=capped_now, explain=True)


def test_a_capped_campaign_sits_out_and_the_next_one_wins(make_campaign):
    s = build_snapshot([make_campaign("a", max_bid_micros=5_000_000), make_campaign("b", max_bid_micros=3_000_000)],
                       version=1, created_ms=0, reserve_cpm_micros=100_000)
    result = _auction(s, Capped(frozenset({"a"})))
    assert [w.campaign.campaign_id for w in result.wins] == ["b"]
    assert result.reasons == {"a": Reason.FREQUENCY_CAP}
    # The capped campaign does not set b's price either: b pays the reserve.
    assert result.wins[0].price_micros == 100


def test_a_capped_creative_gives_way_to_the_campaigns_next_best_at_its_lower_ecpm(make_campaign, make_creative):
    best, second = make_creative("best", prior_ctr=0.05), make_creative("second", prior_ctr=0.01)
    cpc = make_campaign("cpc", bid_type="cpc", max_bid_micros=1_000_000, creatives=[best, second])
    cpm = make_campaign("cpm", max_bid_micros=20_000_000)  # 20,000 eCPM: between the two creatives' 50,000 and 10,000
    s = build_snapshot([cpc, cpm], version=1, created_ms=0, reserve_cpm_micros=100_000)
    assert [w.creative.creative_id for w in _auction(s, NOTHING_CAPPED).wins] == ["best"]
    result = _auction(s, Capped(creatives={"cpc": frozenset({"best"})}), slots=2)
    got = [(w.campaign.campaign_id, w.creative.creative_id) for w in result.wins]
    assert got == [("cpm", "cpm-k1"), ("cpc", "second")]
    assert result.wins[1].ecpm_micros == round(ecpm_micros(cpc, second.prior_ctr))


def test_a_campaign_whose_every_fitting_creative_is_capped_sits_out(make_campaign, make_creative):
    c = make_campaign("c", creatives=[make_creative("k1"), make_creative("k2", format="728x90")])
    s = build_snapshot([c], version=1, created_ms=0, reserve_cpm_micros=0)
    result = _auction(s, Capped(creatives={"c": frozenset({"k1"})}))
    assert result.wins == ()
    assert result.reasons == {"c": Reason.FREQUENCY_CAP}


def test_caps_of_campaigns_outside_the_candidates_change_nothing(make_campaign):
    s = build_snapshot([make_campaign("a")], version=1, created_ms=0, reserve_cpm_micros=0)
    result = _auction(s, Capped(frozenset({"zzz"}), {"yyy": frozenset({"k"})}))
    assert [w.campaign.campaign_id for w in result.wins] == ["a"]


# --- the snapshot and the API --------------------------------------------------------------------------------


def test_caps_travel_in_the_snapshot_and_are_indexed_by_campaign(make_campaign):
    capped_campaign = dataclasses.replace(make_campaign("a"), frequency_caps=(DAY, HOUR_PER_CREATIVE))
    s = build_snapshot([capped_campaign, make_campaign("b")], version=1, created_ms=0, reserve_cpm_micros=0)
    decoded = decode_snapshot(encode_snapshot(s))
    assert decoded.campaign("a").frequency_caps == (DAY, HOUR_PER_CREATIVE)
    assert dict(decoded.caps_of) == {"a": (DAY, HOUR_PER_CREATIVE)}


def _validate(raw):
    errors: list = []
    out = validate_frequency_caps(raw, errors)
    if errors:
        raise ValidationFailed(errors)
    return out


def test_valid_caps_are_normalised_with_campaign_scope_by_default():
    assert _validate(None) == []
    assert _validate([{"max_impressions": 3, "window_minutes": 1440}]) == [
        {"scope": "campaign", "max_impressions": 3, "window_minutes": 1440}]


@pytest.mark.parametrize(("raw", "field"), [
    ({"max_impressions": 3}, "frequency_caps"),
    ([{"max_impressions": 0, "window_minutes": 60}], "frequency_caps[0].max_impressions"),
    ([{"max_impressions": 101, "window_minutes": 60}], "frequency_caps[0].max_impressions"),
    ([{"max_impressions": 1, "window_minutes": 0}], "frequency_caps[0].window_minutes"),
    ([{"max_impressions": 1, "window_minutes": 60, "scope": "advertiser"}], "frequency_caps[0].scope"),
    ([{"max_impressions": True, "window_minutes": 60}], "frequency_caps[0].max_impressions"),
    ([{"max_impressions": 1, "window_minutes": 60, "per": "day"}], "frequency_caps[0].per"),
    ([{"max_impressions": 1, "window_minutes": 60}] * 5, "frequency_caps"),
    (["3 per day"], "frequency_caps[0]"),
])
def test_bad_caps_name_the_field(raw, field):
    with pytest.raises(ValidationFailed) as failed:
        _validate(raw)
    assert field in {e.field for e in failed.value.errors}


def test_caps_reach_the_snapshot_campaign_in_seconds():
    record = {"id": "c", "advertiser_id": "a", "bid_type": "cpm", "max_bid_micros": 1, "daily_budget_micros": 1,
              "total_budget_micros": 1, "start": None, "end": None, "timezone": "UTC",
              "targeting": {}, "frequency_caps": [{"scope": "creative", "max_impressions": 2, "window_minutes": 30}]}
    assert to_snapshot_campaign(record, 1).frequency_caps == (FrequencyCap("creative", 2, 1_800),)
    record.pop("frequency_caps")  # a record from before caps existed
    assert to_snapshot_campaign(record, 1).frequency_caps == ()
