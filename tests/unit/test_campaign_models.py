"""Campaign and creative validation, rule-based review, lifecycle transitions and the snapshot projection."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.models import (
    MAX_AUTO_CPA_MICROS,
    MAX_AUTO_CPC_MICROS,
    MAX_AUTO_CPM_MICROS,
    MAX_MICROS,
    REQUIRED_CAMPAIGN_FIELDS,
    PriorCeilings,
    Status,
    TransitionRefused,
    ValidationFailed,
    apply_action,
    is_servable,
    review,
    to_snapshot_campaign,
    validate_campaign,
    validate_creative,
)

VALID = {
    "name": "Spring sale",
    "bid_type": "cpm",
    "max_bid_micros": 2_000_000,
    "daily_budget_micros": 10_000_000,
    "total_budget_micros": 100_000_000,
    "start": "2026-03-01T00:00:00",
    "timezone": "America/New_York",
}

VALID_CREATIVE = {
    "headline": "Shoes for running",
    "image_url": "https://cdn.example.com/shoe.png",
    "landing_url": "https://shop.example.com/shoes",
    "size": "300x250",
}


def errors_of(data, **kw) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        validate_campaign(data, **kw)
    return [(e.field, e.message) for e in info.value.errors]


def fields_of(data, **kw) -> list[str]:
    return [f for f, _ in errors_of(data, **kw)]


def creative_errors(data, prefix="") -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        validate_creative(data, prefix)
    return [e.field for e in info.value.errors]


def stored_creative(creative_id="k1", status="active", **kw):
    return {**validate_creative({**VALID_CREATIVE, **kw}), "id": creative_id, "status": status}


def stored_campaign(status="draft", creatives=None, **kw):
    campaign = validate_campaign({**VALID, **kw})
    campaign.update(id="cmp1", advertiser_id="adv1", status=status, review=None,
                    creatives=[stored_creative()] if creatives is None else creatives)
    return campaign


# --- validate_campaign: creates ------------------------------------------------------------------------------


def test_valid_create_is_normalized_with_defaults():
    out = validate_campaign(VALID)
    assert out["name"] == "Spring sale"
    assert out["objective"] == "traffic"
    assert out["pacing"] == "even"
    assert out["prior_cvr"] == 0.02
    assert out["end"] is None
    assert out["targeting"] == {k: [] for k in ("countries", "devices", "geos", "hours", "interests", "keywords",
                                                "placements")}


def test_naive_start_is_read_in_the_campaign_timezone():
    assert validate_campaign(VALID)["start"] == "2026-03-01T00:00:00-05:00"
    assert validate_campaign({**VALID, "timezone": "UTC"})["start"] == "2026-03-01T00:00:00+00:00"


def test_explicit_offset_is_kept():
    out = validate_campaign({**VALID, "start": "2026-03-01T00:00:00+02:00"})
    assert out["start"] == "2026-03-01T00:00:00+02:00"


@pytest.mark.parametrize("missing", REQUIRED_CAMPAIGN_FIELDS)
def test_each_required_field_is_named(missing):
    data = {k: v for k, v in VALID.items() if k != missing}
    assert errors_of(data) == [(missing, "is required")]


def test_all_missing_required_fields_are_reported_together():
    assert sorted(fields_of({})) == sorted(REQUIRED_CAMPAIGN_FIELDS)


def test_three_bad_fields_give_three_errors():
    data = {**VALID, "bid_type": "cpx", "max_bid_micros": -1, "timezone": "Mars/Olympus_Mons"}
    assert sorted(fields_of(data)) == ["bid_type", "max_bid_micros", "timezone"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "   "),
        ("name", "x" * 201),
        ("name", "bad\x00name"),
        ("name", 5),
        ("objective", "sales"),
        ("bid_type", "CPM"),
        ("max_bid_micros", 0),
        ("max_bid_micros", -5),
        ("max_bid_micros", 1.5),
        ("max_bid_micros", True),
        ("max_bid_micros", "1000"),
        ("max_bid_micros", MAX_MICROS + 1),
        ("daily_budget_micros", None),
        ("timezone", "Not/AZone"),
        ("timezone", ""),
        ("timezone", 3),
        ("timezone", "../../etc/passwd"),
        ("start", "yesterday"),
        ("start", 1_700_000_000),
        ("end", "2026-13-01"),
        ("pacing", "fast"),
        ("prior_cvr", 0),
        ("prior_cvr", 1.01),
        ("prior_cvr", True),
        ("prior_cvr", "0.1"),
        ("prior_cvr", float("nan")),
        ("targeting", ["US"]),
    ],
)
def test_each_bad_value_is_named(field, value):
    assert fields_of({**VALID, field: value}) == [field]


@pytest.mark.parametrize("field", ["status", "id", "advertiser_id", "review", "created_at", "revision"])
def test_read_only_and_unknown_fields_are_refused(field):
    assert errors_of({**VALID, field: "x"}) == [(field, "unknown or read-only field")]


def test_total_budget_below_daily_is_refused():
    assert fields_of({**VALID, "total_budget_micros": 9_999_999}) == ["total_budget_micros"]
    assert validate_campaign({**VALID, "total_budget_micros": 10_000_000})["total_budget_micros"] == 10_000_000


@pytest.mark.parametrize("end", ["2026-03-01T00:00:00", "2026-02-28T23:59:59"])
def test_end_not_after_start_is_refused(end):
    assert fields_of({**VALID, "end": end}) == ["end"]


def test_end_is_compared_in_absolute_time():
    # Naive start is midnight New York = 05:00 UTC; an end of 04:00 UTC the same day is before it.
    assert fields_of({**VALID, "end": "2026-03-01T04:00:00+00:00"}) == ["end"]
    out = validate_campaign({**VALID, "end": "2026-03-01T06:00:00+00:00"})
    assert out["end"] == "2026-03-01T06:00:00+00:00"


def test_naive_end_is_read_in_the_campaign_timezone():
    assert validate_campaign({**VALID, "end": "2026-04-01T00:00:00"})["end"] == "2026-04-01T00:00:00-04:00"


def test_body_must_be_an_object():
    assert errors_of([VALID]) == [("body", "must be a JSON object")]


def test_creatives_are_allowed_in_a_create():
    assert validate_campaign({**VALID, "creatives": []})["name"] == "Spring sale"


def test_missing_and_bad_fields_are_reported_together():
    data = {k: v for k, v in VALID.items() if k != "name"}
    data.update(max_bid_micros=-1, status="active")
    assert sorted(fields_of(data)) == ["max_bid_micros", "name", "status"]


@pytest.mark.parametrize("tz", ["Europe", "America", "a" * 300])
def test_timezone_that_is_a_directory_or_too_long_is_a_field_error(tz):
    assert fields_of({**VALID, "timezone": tz}) == ["timezone"]


# --- targeting -----------------------------------------------------------------------------------------------


def test_targeting_is_normalized():
    out = validate_campaign({**VALID, "targeting": {
        "countries": ["US", "DE", "US"], "geos": ["US-CA"], "devices": ["mobile", "desktop"],
        "keywords": [" Shoes ", "boots", "shoes"], "interests": ["Running"], "placements": ["home.top"],
        "hours": [9, 8, 9],
    }})
    t = out["targeting"]
    assert t["countries"] == ["DE", "US"]
    assert t["keywords"] == ["boots", "shoes"]
    assert t["interests"] == ["running"]
    assert t["devices"] == ["desktop", "mobile"]
    assert t["hours"] == [8, 9]
    assert t["placements"] == ["home.top"]


@pytest.mark.parametrize(
    ("targeting", "field"),
    [
        ({"regions": ["x"]}, "targeting.regions"),
        ({"countries": ["US", "usa"]}, "targeting.countries[1]"),
        ({"countries": "US"}, "targeting.countries"),
        ({"countries": [1]}, "targeting.countries[0]"),
        ({"geos": ["CA"]}, "targeting.geos[0]"),
        ({"keywords": ["-bad"]}, "targeting.keywords[0]"),
        ({"placements": ["has space"]}, "targeting.placements[0]"),
        ({"devices": ["watch"]}, "targeting.devices"),
        ({"hours": [24]}, "targeting.hours"),
        ({"hours": [-1]}, "targeting.hours"),
        ({"hours": [True]}, "targeting.hours"),
        ({"hours": "9"}, "targeting.hours"),
    ],
)
def test_bad_targeting_is_named(targeting, field):
    assert fields_of({**VALID, "targeting": targeting}) == [field]


def test_several_bad_targeting_entries_are_reported_together():
    data = {**VALID, "targeting": {"countries": ["usa"], "devices": ["watch"], "hours": [25]}}
    assert sorted(fields_of(data)) == ["targeting.countries[0]", "targeting.devices", "targeting.hours"]


# --- validate_campaign: updates ------------------------------------------------------------------------------


def test_partial_update_is_merged_onto_existing():
    existing = stored_campaign()
    out = validate_campaign({"max_bid_micros": 3_000_000, "targeting": {"devices": ["mobile"]}}, existing=existing)
    assert out["max_bid_micros"] == 3_000_000
    assert out["targeting"]["devices"] == ["mobile"]
    assert out["name"] == existing["name"]
    assert out["start"] == existing["start"]
    assert "status" not in out and "id" not in out


def test_update_needs_no_required_fields():
    assert validate_campaign({}, existing=stored_campaign())["name"] == "Spring sale"


def test_update_is_validated_against_the_merged_campaign():
    assert fields_of({"total_budget_micros": 5_000_000}, existing=stored_campaign()) == ["total_budget_micros"]


def test_update_cannot_set_status_or_creatives():
    assert sorted(fields_of({"status": "active", "creatives": []}, existing=stored_campaign())) == [
        "creatives", "status"]


# --- validate_creative ---------------------------------------------------------------------------------------


def test_valid_creative_has_defaults():
    out = validate_creative(VALID_CREATIVE)
    assert out["cta"] == "Learn more"
    assert out["prior_ctr"] == 0.01
    assert out["size"] == "300x250"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("headline", "x" * 91),
        ("headline", ""),
        ("image_url", "not a url"),
        ("image_url", None),
        ("landing_url", "ftp://example.com/x"),
        ("landing_url", "javascript:alert(1)"),
        ("landing_url", "https://"),
        ("cta", "x" * 31),
        ("size", "1x1"),
        ("size", "300X250"),
        ("prior_ctr", 0),
        ("prior_ctr", 1),
        ("prior_ctr", True),
        ("status", "active"),
        ("id", "k9"),
    ],
)
def test_each_bad_creative_field_is_named(field, value):
    assert creative_errors({**VALID_CREATIVE, field: value}) == [field]


def test_creative_errors_are_all_reported_with_the_prefix():
    bad = {"headline": "", "image_url": "x", "landing_url": "y", "size": "1x1"}
    assert sorted(creative_errors(bad, "creatives[2].")) == [
        "creatives[2].headline", "creatives[2].image_url", "creatives[2].landing_url", "creatives[2].size"]


def test_creative_must_be_an_object():
    assert creative_errors("nope", "creatives[0]") == ["creatives[0]"]


# --- review --------------------------------------------------------------------------------------------------


def test_clean_campaign_is_approved():
    assert review(stored_campaign()) == []


def test_campaign_without_live_creatives_is_rejected():
    assert review(stored_campaign(creatives=[])) == ["campaign has no creatives"]
    reasons = review(stored_campaign(creatives=[stored_creative(status="rejected")]))
    assert "campaign has no creatives" in reasons


def test_banned_phrase_is_caught_case_insensitively():
    campaign = stored_campaign(creatives=[stored_creative(headline="Free MONEY today")])
    assert review(campaign) == ["creative k1: contains banned phrase 'free money'"]


def test_banned_phrase_in_the_cta_is_caught():
    campaign = stored_campaign(creatives=[stored_creative(cta="Get rich quick")])
    assert review(campaign) == ["creative k1: contains banned phrase 'get rich quick'"]


def test_plain_http_urls_are_rejected():
    campaign = stored_campaign(creatives=[stored_creative(landing_url="http://shop.example.com",
                                                          image_url="http://cdn.example.com/a.png")])
    assert review(campaign) == ["creative k1: landing_url must use https", "creative k1: image_url must use https"]


@pytest.mark.parametrize(
    ("bid_type", "ceiling"),
    [("cpm", MAX_AUTO_CPM_MICROS), ("cpc", MAX_AUTO_CPC_MICROS), ("cpa", MAX_AUTO_CPA_MICROS)],
)
def test_bid_above_the_automatic_ceiling_is_rejected(bid_type, ceiling):
    at = stored_campaign(bid_type=bid_type, max_bid_micros=ceiling)
    assert review(at) == []
    above = stored_campaign(bid_type=bid_type, max_bid_micros=ceiling + 1)
    assert review(above) == [f"max_bid_micros above the automatic-approval ceiling for {bid_type}"]


# --- lifecycle -----------------------------------------------------------------------------------------------


def test_submit_clean_draft_goes_active():
    out = apply_action(stored_campaign(status="draft"), "submit")
    assert out["status"] == Status.ACTIVE.value
    assert out["review"] == {"approved": True, "reasons": []}


def test_submit_with_problems_is_rejected_with_reasons():
    out = apply_action(stored_campaign(status="draft", creatives=[]), "submit")
    assert out["status"] == Status.REJECTED.value
    assert out["review"] == {"approved": False, "reasons": ["campaign has no creatives"]}


def test_rejected_campaign_can_be_resubmitted():
    fixed = stored_campaign(status="rejected")
    assert apply_action(fixed, "submit")["status"] == "active"


def test_apply_action_does_not_mutate_its_input():
    campaign = stored_campaign(status="draft")
    apply_action(campaign, "submit")
    assert campaign["status"] == "draft"
    assert campaign["review"] is None


@pytest.mark.parametrize(
    ("status", "action", "after"),
    [("active", "pause", "paused"), ("paused", "resume", "active"), ("active", "complete", "completed"),
     ("paused", "complete", "completed")],
)
def test_allowed_transitions(status, action, after):
    assert apply_action(stored_campaign(status=status), action)["status"] == after


@pytest.mark.parametrize(
    ("status", "action"),
    [("draft", "pause"), ("active", "resume"), ("active", "submit"), ("paused", "submit"), ("draft", "complete"),
     ("completed", "resume"), ("rejected", "pause"), ("pending_review", "submit"), ("active", "delete")],
)
def test_refused_transitions(status, action):
    with pytest.raises(TransitionRefused):
        apply_action(stored_campaign(status=status), action)


# --- snapshot projection and servability ---------------------------------------------------------------------


def test_to_snapshot_campaign_includes_only_active_creatives():
    campaign = stored_campaign(
        status="active",
        creatives=[stored_creative("k1"), stored_creative("k2", status="rejected"),
                   stored_creative("k3", status="paused", size="728x90")],
    )
    snap = to_snapshot_campaign(campaign, revision=4)
    assert [k.creative_id for k in snap.creatives] == ["k1"]
    assert snap.creatives[0].format == "300x250"


def test_to_snapshot_campaign_copies_terms_and_targeting():
    campaign = stored_campaign(status="active", end="2026-04-01T00:00:00",
                               targeting={"countries": ["US"], "hours": [9], "keywords": ["Shoes"]})
    snap = to_snapshot_campaign(campaign, revision=4)
    assert (snap.campaign_id, snap.advertiser_id, snap.revision) == ("cmp1", "adv1", 4)
    assert snap.start_s == int(datetime(2026, 3, 1, 5, tzinfo=UTC).timestamp())
    assert snap.end_s == int(datetime(2026, 4, 1, 4, tzinfo=UTC).timestamp())
    assert snap.countries == frozenset({"US"})
    assert snap.keywords == frozenset({"shoes"})
    assert snap.hours == frozenset({9})
    assert snap.devices == frozenset()
    assert snap.timezone == "America/New_York"
    assert snap.prior_cvr == 0.02


def test_open_ended_campaign_has_zero_end():
    assert to_snapshot_campaign(stored_campaign(status="active"), revision=1).end_s == 0


def test_is_servable_only_when_active_and_not_ended():
    end_s = int(datetime(2026, 4, 1, 4, tzinfo=UTC).timestamp())
    active = stored_campaign(status="active", end="2026-04-01T00:00:00")
    assert is_servable(active, end_s - 1)
    assert not is_servable(active, end_s)
    assert is_servable(stored_campaign(status="active"), 4_000_000_000)
    for status in ("draft", "pending_review", "paused", "completed", "rejected"):
        assert not is_servable(stored_campaign(status=status), 0)


def test_declared_priors_count_for_no_more_than_the_platforms_ceilings():
    record = {"id": "c", "advertiser_id": "a", "bid_type": "cpa", "max_bid_micros": 1, "daily_budget_micros": 1,
              "total_budget_micros": 1, "start": None, "end": None, "timezone": "UTC", "targeting": {},
              "prior_cvr": 0.9, "creatives": [
                  {"id": "k1", "size": "300x250", "headline": "h", "image_url": "https://i.example/a.png",
                   "landing_url": "https://l.example/", "cta": "Go", "prior_ctr": 0.99, "status": "active"},
                  {"id": "k2", "size": "300x250", "headline": "h", "image_url": "https://i.example/a.png",
                   "landing_url": "https://l.example/", "cta": "Go", "prior_ctr": 0.004, "status": "active"}]}
    capped = to_snapshot_campaign(record, 1, PriorCeilings(ctr=0.05, cvr=0.2))
    assert [k.prior_ctr for k in capped.creatives] == [0.05, 0.004] and capped.prior_cvr == 0.2
    declared = to_snapshot_campaign(record, 1)  # no ceilings: as declared
    assert [k.prior_ctr for k in declared.creatives] == [0.99, 0.004] and declared.prior_cvr == 0.9
