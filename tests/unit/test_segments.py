"""Real-time audiences, the pure half: segment names and ownership, which keyword segments are recorded,
which stored segments are fresh, the pixel's parameters and consent, and the snapshot's segments in use."""

from __future__ import annotations

import pytest

from control_plane.models import to_snapshot_campaign
from edge.adrequest import PixelHit, parse_ad_request, parse_pixel
from edge.audiences import SEGMENT_TTL_S, fresh_segments, keyword_segments, segment_field, to_record
from edge.tcf import encode
from replication.segments import owned_interest, retargeting_segment
from replication.snapshot import build_snapshot

NOW = 1_705_320_000.0


def test_a_campaigns_retargeting_interest_names_its_own_advertisers_list():
    assert owned_interest("adv1", "rt-cart") == retargeting_segment("adv1", "cart") == "rt-adv1-cart"
    assert owned_interest("adv1", "kw-marathon") == "kw-marathon"
    assert owned_interest("adv1", "sports") == "sports"
    record = {"id": "c", "advertiser_id": "adv9", "bid_type": "cpm", "max_bid_micros": 1, "daily_budget_micros": 1,
              "total_budget_micros": 1, "start": None, "end": None, "timezone": "UTC",
              "targeting": {"interests": ["rt-cart", "sports"]}}
    assert to_snapshot_campaign(record, 1).interests == {"rt-adv9-cart", "sports"}


def test_only_keyword_segments_some_campaign_targets_are_recorded():
    assert keyword_segments(["marathon", "news", "shoes"], frozenset({"kw-marathon", "kw-shoes", "rt-a-x"})) == [
        "kw-marathon", "kw-shoes"]
    assert keyword_segments(["news"], frozenset()) == []


def test_fresh_segments_are_the_recent_ones_freshest_first():
    history = {segment_field("kw-old"): [NOW - SEGMENT_TTL_S - 1], segment_field("kw-a"): [NOW - 100],
               segment_field("rt-x-cart"): [NOW - 5], "c:campaign": [NOW], segment_field("kw-empty"): []}
    assert fresh_segments(history, NOW) == ("rt-x-cart", "kw-a")


def test_segments_are_recorded_with_one_time_kept_for_their_ttl():
    assert to_record(["kw-a"]) == [(segment_field("kw-a"), 1, SEGMENT_TTL_S)]


def test_the_pixel_parses_and_drops_the_user_without_consent():
    assert parse_pixel({"adv": "adv1", "seg": " Cart ", "user": "u1"}) == PixelHit("adv1", "cart", "u1")
    assert parse_pixel({"adv": "adv1", "seg": "cart", "user": "u1", "gpc": "1"}) == PixelHit("adv1", "cart", "")
    assert parse_pixel({"adv": "adv1", "seg": "cart", "user": "u1", "gdpr": "1"}).user == ""
    consenting = {"adv": "adv1", "seg": "cart", "user": "u1", "gdpr": "1", "gdpr_consent": encode([1, 3, 4])}
    assert parse_pixel(consenting).user == "u1"
    assert parse_pixel({**consenting, "gdpr_consent": encode([1, 3])}).user == ""  # no purpose 4


@pytest.mark.parametrize(("params", "field"), [
    ({"seg": "cart", "user": "u"}, "adv"),
    ({"adv": "a/1", "seg": "cart", "user": "u"}, "adv"),
    ({"adv": "a1", "seg": "", "user": "u"}, "seg"),
    ({"adv": "a1", "seg": "cart", "user": "u" * 129}, "user"),
    ({"adv": "a1", "seg": "cart", "user": "u", "x": "1"}, "x"),
])
def test_a_bad_pixel_names_the_parameter(params, field):
    errors = parse_pixel(params)
    assert isinstance(errors, list) and field in {e.field for e in errors}


def test_the_snapshot_knows_which_segments_campaigns_target(make_campaign):
    s = build_snapshot([make_campaign("a", interests=["kw-run", "sports"]), make_campaign("b", interests=["rt-x-c"]),
                        make_campaign("c")], version=1, created_ms=0, reserve_cpm_micros=0)
    assert s.segments_in_use == {"kw-run", "rt-x-c"}


def test_a_publisher_cannot_claim_behavioural_segments_in_the_request():
    parsed = parse_ad_request({"placement": "p", "format": "300x250", "interests": "sports,rt-adv1-cart,kw-run"}, 6)
    assert parsed.interests == ("sports",)
