"""The auction as a pure function: retrieval, filters with reasons, eCPM, GSP pricing, slots, determinism."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import edge.auction as auction_module
from edge.auction import AdRequest, NoFill, Reason, ecpm_micros, expected_cost, retrieve, run_auction
from edge.frequency import NOTHING_CAPPED, Capped
from replication.snapshot import build_snapshot, unit_cost_ceiling

# 2024-01-15 12:00:00 UTC, which is 07:00 in America/New_York (EST, UTC-5).
NOW = 1_705_320_000
RICH = 10**12  # an allowance that never limits


def snap(*campaigns, reserve=100_000):
    return build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=reserve)


def req(**kw):
    kw.setdefault("placement", "home")
    kw.setdefault("slots", 1)
    kw.setdefault("format", "300x250")
    return AdRequest(**kw)


def ids(snapshot, positions):
    return {snapshot.campaigns[p].campaign_id for p in positions}


def rich(*campaign_ids):
    return dict.fromkeys(campaign_ids, RICH)


def auction(snapshot, request, *, allowance=None, seed=1, reserve=None):
    if allowance is None:
        allowance = rich(*(c.campaign_id for c in snapshot.campaigns))
    return run_auction(snapshot, request, now_s=NOW, rng=random.Random(seed), allowance=allowance,
                       reserve_cpm_micros=reserve, explain=True)


def winners(result):
    return [w.campaign.campaign_id for w in result.wins]


# --- retrieval -----------------------------------------------------------------------------------------------


def test_retrieve_by_placement_includes_unrestricted(make_campaign):
    s = snap(make_campaign("home", placements=["home"]), make_campaign("sports", placements=["sports"]),
             make_campaign("any"))
    assert ids(s, retrieve(s, req(placement="home"))) == {"home", "any"}
    assert ids(s, retrieve(s, req(placement="news"))) == {"any"}


def test_retrieve_by_format_uses_creative_sizes(make_campaign, make_creative):
    s = snap(make_campaign("rect", creatives=[make_creative("r", format="300x250")]),
             make_campaign("leader", creatives=[make_creative("l", format="728x90")]),
             make_campaign("both", creatives=[make_creative("b1", format="300x250"),
                                              make_creative("b2", format="728x90")]))
    assert ids(s, retrieve(s, req(format="728x90"))) == {"leader", "both"}
    assert ids(s, retrieve(s, req(format="160x600"))) == set()


def test_retrieve_campaign_without_creatives_is_unrestricted_in_format(make_campaign):
    s = snap(make_campaign("empty", creatives=[]))
    assert ids(s, retrieve(s, req(format="160x600"))) == {"empty"}


def test_retrieve_derives_country_from_geo(make_campaign):
    s = snap(make_campaign("us", countries=["US"]), make_campaign("de", countries=["DE"]), make_campaign("any"))
    assert ids(s, retrieve(s, req(geo="US-CA"))) == {"us", "any"}
    assert ids(s, retrieve(s, req(geo="US"))) == {"us", "any"}
    assert ids(s, retrieve(s, req(geo=""))) == {"any"}


def test_retrieve_by_region_geo(make_campaign):
    s = snap(make_campaign("ca", geos=["US-CA"]), make_campaign("ny", geos=["US-NY"]), make_campaign("any"))
    assert ids(s, retrieve(s, req(geo="US-CA"))) == {"ca", "any"}
    # A country-only request does not match a campaign that wants one region of it.
    assert ids(s, retrieve(s, req(geo="US"))) == {"any"}


def test_retrieve_by_device(make_campaign):
    s = snap(make_campaign("mob", devices=["mobile", "tablet"]), make_campaign("desk", devices=["desktop"]),
             make_campaign("any"))
    assert ids(s, retrieve(s, req(device="tablet"))) == {"mob", "any"}
    assert ids(s, retrieve(s, req(device=""))) == {"any"}


def test_retrieve_by_keywords_matches_any_requested_keyword(make_campaign):
    s = snap(make_campaign("shoes", keywords=["shoes"]), make_campaign("hats", keywords=["hats"]),
             make_campaign("any"))
    assert ids(s, retrieve(s, req(keywords=("boots", "shoes")))) == {"shoes", "any"}
    assert ids(s, retrieve(s, req(keywords=("shoes", "hats")))) == {"shoes", "hats", "any"}
    assert ids(s, retrieve(s, req(keywords=()))) == {"any"}


def test_retrieve_by_interests(make_campaign):
    s = snap(make_campaign("golf", interests=["golf"]), make_campaign("any"))
    assert ids(s, retrieve(s, req(interests=("golf",)))) == {"golf", "any"}
    assert ids(s, retrieve(s, req(interests=("chess",)))) == {"any"}


def test_retrieve_intersects_dimensions(make_campaign):
    s = snap(make_campaign("both", placements=["home"], devices=["mobile"]),
             make_campaign("wrong-device", placements=["home"], devices=["desktop"]))
    assert ids(s, retrieve(s, req(placement="home", device="mobile"))) == {"both"}


# --- filters and reasons -------------------------------------------------------------------------------------


def test_no_candidates_is_a_no_fill_value(make_campaign):
    result = auction(snap(make_campaign("c", placements=["other"])), req())
    assert result.wins == ()
    assert result.no_fill is NoFill.NO_CANDIDATES
    assert result.candidates == 0


def test_campaign_before_its_start_is_filtered_by_schedule(make_campaign):
    result = auction(snap(make_campaign("c", start_s=NOW + 1)), req())
    assert result.reasons == {"c": Reason.SCHEDULE}
    assert result.no_fill is NoFill.ALL_FILTERED
    assert result.candidates == 1


def test_campaign_at_its_start_is_live(make_campaign):
    assert winners(auction(snap(make_campaign("c", start_s=NOW)), req())) == ["c"]


def test_campaign_at_or_after_its_end_is_filtered_by_schedule(make_campaign):
    assert auction(snap(make_campaign("c", end_s=NOW)), req()).reasons == {"c": Reason.SCHEDULE}
    assert winners(auction(snap(make_campaign("c", end_s=NOW + 1)), req())) == ["c"]


def test_open_ended_campaign_is_live(make_campaign):
    assert winners(auction(snap(make_campaign("c", start_s=NOW - 10**6, end_s=0)), req())) == ["c"]


def test_hour_of_day_is_read_in_the_campaign_timezone(make_campaign):
    # NOW is 12:00 UTC = 07:00 in New York.
    s = snap(make_campaign("ny7", timezone="America/New_York", hours=[7], advertiser_id="a"),
             make_campaign("ny12", timezone="America/New_York", hours=[12], advertiser_id="b"),
             make_campaign("utc12", timezone="UTC", hours=[12], advertiser_id="c"),
             make_campaign("utc7", timezone="UTC", hours=[7], advertiser_id="d"))
    result = auction(s, req(slots=4))
    assert set(winners(result)) == {"ny7", "utc12"}
    assert result.reasons == {"ny12": Reason.HOUR, "utc7": Reason.HOUR}


def test_a_campaign_turns_live_and_ends_on_time_while_one_snapshot_serves(make_campaign):
    """The verdicts are kept from second to second and recomputed only when one can turn: the same snapshot
    must still let a campaign in at its start second and out at its end second."""
    s = snap(make_campaign("c", start_s=NOW + 5, end_s=NOW + 30))

    def fate(second: float) -> set[str]:
        return set(run_auction(s, req(), now_s=second, rng=random.Random(1), allowance=rich("c"),
                               explain=True).reasons.values())

    off, live = {Reason.SCHEDULE}, set()
    # Back in time too (3 after 6, 29 after 31): a request's clock can be read before it awaits Redis.
    walk = (0, 3, 4.9, 5, 6, 3, 6, 29, 29.99, 30, 31, 29, 31)
    assert [fate(NOW + t) for t in walk] == [off, off, off, live, live, off, live, live, live, off, off, live, off]


def test_hour_targeting_turns_at_the_hour_in_the_campaign_timezone_while_one_snapshot_serves(make_campaign):
    # NOW is 12:00 UTC, 17:30 in Kolkata (UTC+5:30): its hours turn on the half hour UTC.
    s = snap(make_campaign("utc12", hours=[12], advertiser_id="a"),
             make_campaign("kol17", timezone="Asia/Kolkata", hours=[17], advertiser_id="b"))
    position = {c.campaign_id: p for p, c in enumerate(s.campaigns)}
    live, hour = auction_module._PASSED, auction_module._FATES.index(Reason.HOUR)
    walk = {}
    for t in (0, 1_799, 1_800, 3_599, 3_600):
        fate = auction_module._checks(s.columns, "300x250", 100_000, NOW + t).fate
        walk[t] = (fate[position["utc12"]], fate[position["kol17"]])
    assert walk == {0: (live, live), 1_799: (live, live), 1_800: (live, hour), 3_599: (live, hour),
                    3_600: (hour, hour)}


def test_verdicts_are_kept_while_nothing_can_turn(make_campaign):
    """No schedule edge and no quarter hour between two seconds: the same verdicts, not recomputed (at
    100,000 campaigns that took 2 ms per format every second)."""
    s = snap(make_campaign("c", start_s=NOW + 10, end_s=NOW + 20), make_campaign("d", hours=[12]))
    first = auction_module._checks(s.columns, "300x250", 100_000, NOW + 10).fate  # at an edge itself
    for t in (11, 15, 19):
        assert auction_module._checks(s.columns, "300x250", 100_000, NOW + t).fate is first
    assert auction_module._checks(s.columns, "300x250", 100_000, NOW + 20).fate is not first  # c ended


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedules=st.lists(st.tuples(st.integers(-2_000, 4_000), st.integers(-2_000, 4_000),
                                    st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
                                    st.sampled_from([(), (12,), (7, 8), (12, 13)])), min_size=1, max_size=8),
       steps=st.lists(st.sampled_from([0, 1, 1, 2, 17, 299, 900, 1_801, -1, -3, -600]), min_size=1, max_size=20))
def test_verdicts_kept_between_seconds_equal_fresh_ones(make_campaign, schedules, steps):
    """Walking the clock through schedule edges and quarter hours (Asia/Kolkata is UTC+5:30), mostly forward
    and sometimes back (a request whose clock was read before it awaited Redis), the kept verdicts equal ones
    computed afresh for that second in a snapshot that never kept any."""
    campaigns = [make_campaign(f"c{i}", start_s=max(0, NOW + a), end_s=0 if b < -1_000 else NOW + b,
                               timezone=tz, hours=hours) for i, (a, b, tz, hours) in enumerate(schedules)]
    kept, fresh = snap(*campaigns), snap(*campaigns)
    second = NOW - 1_000
    for step in steps:
        second += step
        fresh.columns.memo.clear()
        expected = auction_module._checks(fresh.columns, "300x250", 100_000, second).fate
        got = auction_module._checks(kept.columns, "300x250", 100_000, second)
        assert got.second == second
        assert got.fate.tolist() == expected.tolist(), second - NOW


def test_allowance_covering_the_unit_cost_ceiling_wins(make_campaign):
    # CPM 2,000,000 micros per mille: one impression costs at most 2,000 micros.
    s = snap(make_campaign("c", bid_type="cpm", max_bid_micros=2_000_000))
    assert winners(auction(s, req(), allowance={"c": 2_000})) == ["c"]


def test_empty_allowance_is_filtered_by_budget(make_campaign):
    assert auction(snap(make_campaign("c")), req(), allowance={"c": 0}).reasons == {"c": Reason.BUDGET}


def test_allowance_below_the_clearing_price_is_filtered_by_budget(make_campaign):
    # Sole bidder: the clearing price is the reserve, 100,000 per mille = 100 micros per impression.
    s = snap(make_campaign("c", bid_type="cpm", max_bid_micros=2_000_000), reserve=100_000)
    assert auction(s, req(), allowance={"c": 99}).reasons == {"c": Reason.BUDGET}


def test_cpc_allowance_must_cover_a_whole_click(make_campaign):
    s = snap(make_campaign("c", bid_type="cpc", max_bid_micros=500_000), reserve=5_000_000)
    # eCPM 500,000 * 0.01 * 1000 = 5,000,000 = the reserve, so the click price is the whole bid.
    assert auction(s, req(), allowance={"c": 499_999}).reasons == {"c": Reason.BUDGET}
    win = auction(s, req(), allowance={"c": 500_000}).wins[0]
    assert win.price_micros == 500_000


def test_campaign_that_cannot_pay_gives_its_slot_to_the_next(make_campaign):
    s = snap(make_campaign("a", max_bid_micros=5_000_000), make_campaign("b", max_bid_micros=4_000_000),
             make_campaign("c", max_bid_micros=3_000_000))
    result = auction(s, req(slots=2), allowance={"a": 10, "b": RICH, "c": RICH})
    assert winners(result) == ["b", "c"]
    assert [w.slot for w in result.wins] == [0, 1]
    assert result.reasons == {"a": Reason.BUDGET}
    assert [w.price_micros for w in result.wins] == [3_000, 100]


def test_campaign_missing_from_allowance_has_no_budget(make_campaign):
    assert auction(snap(make_campaign("c")), req(), allowance={}).reasons == {"c": Reason.BUDGET}


def test_campaign_without_a_fitting_creative_is_filtered_by_format(make_campaign):
    assert auction(snap(make_campaign("c", creatives=[])), req()).reasons == {"c": Reason.FORMAT}


def test_bid_below_reserve_is_filtered(make_campaign):
    s = snap(make_campaign("low", max_bid_micros=99_999, advertiser_id="a"),
             make_campaign("at", max_bid_micros=100_000, advertiser_id="b"), reserve=100_000)
    result = auction(s, req(slots=2))
    assert winners(result) == ["at"]
    assert result.reasons == {"low": Reason.BELOW_RESERVE}


def test_reserve_argument_overrides_the_snapshot_reserve(make_campaign):
    s = snap(make_campaign("c", max_bid_micros=1_000_000), reserve=0)
    assert auction(s, req(), reserve=2_000_000).reasons == {"c": Reason.BELOW_RESERVE}


def test_zero_ecpm_never_wins_even_without_reserve(make_campaign):
    s = snap(make_campaign("c", max_bid_micros=0), reserve=0)
    assert auction(s, req()).reasons == {"c": Reason.BELOW_RESERVE}


def test_filters_apply_in_order_schedule_before_budget(make_campaign):
    result = auction(snap(make_campaign("c", start_s=NOW + 1)), req(), allowance={})
    assert result.reasons == {"c": Reason.SCHEDULE}


# --- eCPM ----------------------------------------------------------------------------------------------------


def test_ecpm_cpm_is_the_bid(make_campaign, make_creative):
    c = make_campaign(bid_type="cpm", max_bid_micros=3_000_000)
    assert ecpm_micros(c, 0.5) == 3_000_000


def test_ecpm_cpc_is_bid_times_ctr_per_mille(make_campaign, make_creative):
    c = make_campaign(bid_type="cpc", max_bid_micros=500_000)
    assert ecpm_micros(c, 0.02) == pytest.approx(10_000_000)


def test_ecpm_cpa_is_bid_times_ctr_times_cvr_per_mille(make_campaign, make_creative):
    c = make_campaign(bid_type="cpa", max_bid_micros=10_000_000, prior_cvr=0.05)
    assert ecpm_micros(c, 0.01) == pytest.approx(5_000_000)


def test_best_creative_by_ctr_is_chosen(make_campaign, make_creative):
    c = make_campaign("c", bid_type="cpc", creatives=[make_creative("lo", prior_ctr=0.01),
                                                      make_creative("hi", prior_ctr=0.03),
                                                      make_creative("other-size", format="728x90", prior_ctr=0.9)])
    result = auction(snap(c, reserve=0), req())
    assert result.wins[0].creative.creative_id == "hi"


def test_creatives_tied_on_ctr_share_the_slot_and_a_capped_one_gives_way(make_campaign, make_creative):
    c = make_campaign("c", bid_type="cpc", creatives=[make_creative("a", prior_ctr=0.03),
                                                      make_creative("lo", prior_ctr=0.01),
                                                      make_creative("b", prior_ctr=0.03),
                                                      make_creative("c", prior_ctr=0.03)])
    s = snap(c, reserve=0)

    def served(capped: Capped) -> Counter:
        return Counter(run_auction(s, req(), now_s=NOW, rng=random.Random(seed), allowance=rich("c"),
                                   capped=capped).wins[0].creative.creative_id for seed in range(200))

    assert set(served(NOTHING_CAPPED)) == {"a", "b", "c"}
    assert set(served(Capped(frozenset(), {"c": frozenset({"a"})}))) == {"b", "c"}
    assert set(served(Capped(frozenset(), {"c": frozenset({"a", "b", "c"})}))) == {"lo"}


def test_cpc_outranks_cpm_when_its_ecpm_is_higher(make_campaign, make_creative):
    s = snap(make_campaign("cpc", bid_type="cpc", max_bid_micros=1_000_000,
                           creatives=[make_creative("k", prior_ctr=0.01)]),  # eCPM 10,000,000
             make_campaign("cpm", bid_type="cpm", max_bid_micros=9_000_000))
    assert winners(auction(s, req())) == ["cpc"]


# --- generalized second price --------------------------------------------------------------------------------


def test_cpm_winner_pays_runner_up_per_impression(make_campaign):
    s = snap(make_campaign("a", max_bid_micros=3_000_000), make_campaign("b", max_bid_micros=2_000_000))
    win = auction(s, req()).wins[0]
    assert win.campaign.campaign_id == "a"
    assert win.ecpm_micros == 3_000_000
    assert win.price_micros == 2_000  # 2,000,000 per mille
    assert win.reserve_micros == 2_000


def test_sole_bidder_pays_the_reserve(make_campaign):
    win = auction(snap(make_campaign("a", max_bid_micros=3_000_000), reserve=500_000), req()).wins[0]
    assert win.price_micros == 500


def test_price_is_at_least_one_micro(make_campaign):
    win = auction(snap(make_campaign("a", max_bid_micros=3_000_000), reserve=0), req()).wins[0]
    assert win.price_micros == 1


def test_cpm_price_rounds_up_but_never_above_the_unit_ceiling(make_campaign):
    s = snap(make_campaign("a", max_bid_micros=2_500_500), make_campaign("b", max_bid_micros=2_500_400))
    win = auction(s, req()).wins[0]
    assert win.price_micros == 2_501
    assert win.price_micros <= unit_cost_ceiling("cpm", 2_500_500)


def test_cpc_winner_pays_runner_up_converted_to_a_click_price(make_campaign, make_creative):
    s = snap(make_campaign("cpc", bid_type="cpc", max_bid_micros=1_000_000,
                           creatives=[make_creative("k", prior_ctr=0.01)]),  # eCPM 10,000,000
             make_campaign("cpm", bid_type="cpm", max_bid_micros=4_000_000))
    win = auction(s, req()).wins[0]
    assert win.campaign.campaign_id == "cpc"
    assert win.price_micros == 400_000  # 4,000,000 per mille / (0.01 clicks per impression * 1000)
    assert win.reserve_micros == 12_000  # expected click cost: 400,000 x 1% CTR x margin 3, settled on the click


def test_cpa_winner_pays_runner_up_converted_to_an_action_price(make_campaign, make_creative):
    s = snap(make_campaign("cpa", bid_type="cpa", max_bid_micros=20_000_000, prior_cvr=0.05,
                           creatives=[make_creative("k", prior_ctr=0.01)]),  # eCPM 10,000,000
             make_campaign("cpm", bid_type="cpm", max_bid_micros=5_000_000))
    win = auction(s, req()).wins[0]
    assert win.campaign.campaign_id == "cpa"
    assert win.price_micros == 10_000_000
    assert win.reserve_micros == 15_000  # 10,000,000 x 1% x 5% x margin 3


def test_tied_bids_pay_exactly_their_bid(make_campaign):
    s = snap(make_campaign("a", max_bid_micros=2_000_000), make_campaign("b", max_bid_micros=2_000_000))
    win = auction(s, req()).wins[0]
    assert win.price_micros == 2_000


def test_cpc_price_never_exceeds_the_bid(make_campaign, make_creative):
    # The runner-up's eCPM equals the winner's own: the converted price must not exceed the bid.
    s = snap(make_campaign("cpc", bid_type="cpc", max_bid_micros=333_333,
                           creatives=[make_creative("k", prior_ctr=0.07)]),
             make_campaign("cpm", bid_type="cpm", max_bid_micros=round(333_333 * 0.07 * 1000)))
    for w in auction(s, req(slots=2)).wins:
        assert w.price_micros <= w.campaign.max_bid_micros


# --- slots ---------------------------------------------------------------------------------------------------


def test_several_slots_each_pay_the_next_rank(make_campaign):
    s = snap(make_campaign("a", max_bid_micros=5_000_000), make_campaign("b", max_bid_micros=4_000_000),
             make_campaign("c", max_bid_micros=3_000_000))
    result = auction(s, req(slots=2))
    assert [(w.slot, w.campaign.campaign_id, w.price_micros) for w in result.wins] == [
        (0, "a", 4_000), (1, "b", 3_000)]
    assert result.reasons == {"c": Reason.OUTRANKED}


def test_without_explain_the_walk_stops_at_the_last_win_s_runner_up(make_campaign):
    # "c" cannot pay and "d" is paced out, but a one-slot auction needs no more than "a" and its runner-up
    # "b": without explain they are counted as outranked, unchecked, and the pacing draw for "d" is not made.
    s = snap(*(make_campaign(cid, max_bid_micros=bid) for cid, bid in
               (("a", 5_000_000), ("b", 4_000_000), ("c", 3_000_000), ("d", 2_000_000))))
    allowance = {"a": RICH, "b": RICH, "c": 0, "d": RICH}
    rng = random.Random(7)
    result = run_auction(s, req(), now_s=NOW, rng=rng, allowance=allowance, throttle={"d": 0.5})
    assert winners(result) == ["a"] and result.wins[0].price_micros == 4_000
    assert result.reason_counts == {Reason.OUTRANKED: 3}
    assert rng.getstate() == random.Random(7).getstate()
    explained = run_auction(s, req(), now_s=NOW, rng=random.Random(7), allowance=allowance, throttle={"d": 0.0},
                            explain=True)
    assert explained.reasons == {"b": Reason.OUTRANKED, "c": Reason.BUDGET, "d": Reason.PACING}


def test_one_advertiser_wins_at_most_one_slot(make_campaign):
    s = snap(make_campaign("x1", advertiser_id="x", max_bid_micros=5_000_000),
             make_campaign("x2", advertiser_id="x", max_bid_micros=4_000_000),
             make_campaign("y1", advertiser_id="y", max_bid_micros=3_000_000))
    result = auction(s, req(slots=3))
    assert winners(result) == ["x1", "y1"]
    assert result.reasons == {"x2": Reason.SAME_ADVERTISER}
    # The excluded sibling does not set the price: x1 pays y1's bid, y1 pays the reserve.
    assert [w.price_micros for w in result.wins] == [3_000, 100]


def test_an_advertiser_whose_entry_cannot_pay_its_price_keeps_its_next_campaign_in_the_running(make_campaign):
    # x1 ranks first but can afford only 2,000 of the 3,000 that y1's bid sets; x2 was passed over while x1
    # waited for its runner-up. x1 out for its budget, x2 (4,000,000) outbids y1 and pays y1's 3,000.
    s = snap(make_campaign("x1", advertiser_id="x", max_bid_micros=5_000_000),
             make_campaign("x2", advertiser_id="x", max_bid_micros=4_000_000),
             make_campaign("y1", advertiser_id="y", max_bid_micros=3_000_000))
    allowance = {"x1": 2_000, "x2": RICH, "y1": RICH}
    result = auction(s, req(slots=1), allowance=allowance)
    assert [(w.campaign.campaign_id, w.price_micros) for w in result.wins] == [("x2", 3_000)]
    assert result.reason_counts == {Reason.BUDGET: 1, Reason.OUTRANKED: 1}
    explained = run_auction(s, req(slots=1), now_s=NOW, rng=random.Random(1), allowance=allowance, explain=True)
    assert explained.reasons == {"x1": Reason.BUDGET, "y1": Reason.OUTRANKED}
    # x2 cannot pay either: x has no slot, and y1 takes it at the reserve.
    poorer = auction(s, req(slots=1), allowance={**allowance, "x2": 2_000})
    assert [(w.campaign.campaign_id, w.price_micros) for w in poorer.wins] == [("y1", 100)]
    assert poorer.reason_counts == {Reason.BUDGET: 2}
    # And an advertiser without a slot competes with its campaigns further down: x3, below y1, takes the second.
    s = snap(make_campaign("x1", advertiser_id="x", max_bid_micros=5_000_000),
             make_campaign("y1", advertiser_id="y", max_bid_micros=3_000_000),
             make_campaign("x3", advertiser_id="x", max_bid_micros=1_000_000))
    result = auction(s, req(slots=2), allowance={"x1": 2_000, "y1": RICH, "x3": RICH})
    assert [(w.campaign.campaign_id, w.price_micros) for w in result.wins] == [("y1", 1_000), ("x3", 100)]


def test_the_quality_floor_keeps_out_ads_predicted_to_be_clicked_too_rarely(make_campaign, make_creative):
    # "rare" bids the most per click but is predicted at 0.05% clicks: its eCPM of 5,000,000 tops the ranking.
    # Under a floor of 0.1% it is not shown, and "dull" (CPM, 0.05% too) does not set b's price either.
    s = snap(make_campaign("rare", bid_type="cpc", max_bid_micros=10_000_000,
                           creatives=[make_creative("kr", prior_ctr=0.0005)]),
             make_campaign("b", bid_type="cpc", max_bid_micros=100_000,
                           creatives=[make_creative("kb", prior_ctr=0.02)]),
             make_campaign("dull", max_bid_micros=1_500_000, creatives=[make_creative("kd", prior_ctr=0.0005)]))
    assert winners(auction(s, req())) == ["rare"]
    floored = dataclasses.replace(s, min_ctr=0.001)
    result = auction(floored, req())
    # b pays the reserve per click, 100,000 / (0.02 * 1000); with dull as its runner-up it would pay 75,000.
    assert winners(result) == ["b"] and result.wins[0].price_micros == 5_000
    assert result.reasons == {"rare": Reason.BELOW_QUALITY, "dull": Reason.BELOW_QUALITY}


def test_a_placement_with_a_reserve_of_its_own(make_campaign):
    s = dataclasses.replace(snap(make_campaign("a", max_bid_micros=2_000_000)),
                            placement_reserves={"premium": 3_000_000, "cheap": 10_000})
    assert auction(s, req(placement="premium")).reason_counts == {Reason.BELOW_RESERVE: 1}
    assert [w.price_micros for w in auction(s, req(placement="cheap")).wins] == [10]  # 10,000 per mille
    assert [w.price_micros for w in auction(s, req(placement="home")).wins] == [100]  # the snapshot's 100,000
    # An explicit reserve still overrides both.
    assert [w.price_micros for w in auction(s, req(placement="premium"), reserve=0).wins] == [1]


def test_zero_slots_still_fills_one(make_campaign):
    assert winners(auction(snap(make_campaign("a")), req(slots=0))) == ["a"]


# --- determinism ---------------------------------------------------------------------------------------------


def _tied_snapshot(make_campaign):
    return snap(*(make_campaign(f"c{i}", max_bid_micros=2_000_000) for i in range(5)))


def test_same_seed_gives_the_same_result(make_campaign):
    s = _tied_snapshot(make_campaign)
    assert auction(s, req(slots=3), seed=42) == auction(s, req(slots=3), seed=42)


def test_ties_rotate_across_seeds(make_campaign):
    s = _tied_snapshot(make_campaign)
    seen = {winners(auction(s, req(), seed=seed))[0] for seed in range(60)}
    assert seen == {f"c{i}" for i in range(5)}


# --- properties ----------------------------------------------------------------------------------------------

_campaign_specs = st.lists(
    st.tuples(
        st.sampled_from(["cpm", "cpc", "cpa"]),
        st.integers(0, 20_000_000),  # max bid
        st.sampled_from(["a", "b", "c", "d"]),  # advertiser
        st.floats(0.0005, 0.5),  # prior ctr
        st.floats(0.001, 1.0),  # prior cvr
        st.sampled_from(["zero", "small", "below", "exact", "rich"]),  # allowance, relative to the unit ceiling
        st.integers(1, 3_000),  # a small allowance
        st.sampled_from(["300x250", "728x90"]),
    ),
    min_size=0,
    max_size=12,
)


def _price_as_ecpm(win) -> float:
    c, k = win.campaign, win.creative
    if c.bid_type == "cpm":
        return win.price_micros * 1000
    if c.bid_type == "cpc":
        return win.price_micros * k.prior_ctr * 1000
    return win.price_micros * k.prior_ctr * c.prior_cvr * 1000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_campaign_specs, slots=st.integers(1, 4), reserve=st.integers(0, 3_000_000),
       seed=st.integers(0, 2**32))
def test_auction_invariants(make_campaign, make_creative, specs, slots, reserve, seed):
    campaigns, allowance = [], {}
    for i, (bid_type, bid, adv, ctr, cvr, kind, small, fmt) in enumerate(specs):
        cid = f"c{i}"
        campaigns.append(make_campaign(cid, advertiser_id=adv, bid_type=bid_type, max_bid_micros=bid,
                                       prior_cvr=cvr, creatives=[make_creative(f"{cid}-k", format=fmt,
                                                                               prior_ctr=ctr)]))
        ceiling = unit_cost_ceiling(bid_type, bid)
        allowance[cid] = {"zero": 0, "small": small, "below": max(0, ceiling - 1), "exact": ceiling,
                          "rich": RICH}[kind]
    s = snap(*campaigns, reserve=reserve)
    request = req(slots=slots)
    result = run_auction(s, request, now_s=NOW, rng=random.Random(seed), allowance=allowance)
    event(f"wins={len(result.wins)}")
    event(f"reasons={sorted(set(result.reasons.values()))}")

    assert len(result.wins) <= slots
    for w in result.wins:
        c = w.campaign
        assert 1 <= w.price_micros <= unit_cost_ceiling(c.bid_type, c.max_bid_micros)
        # Never wins a unit it cannot pay for out of this process's allowance.
        assert allowance[c.campaign_id] >= w.price_micros
        assert w.ecpm_micros >= reserve
        assert w.creative.format == request.format
        assert w.reserve_micros == expected_cost(c, w.ctr, w.price_micros)
        assert 0 < w.reserve_micros <= w.price_micros
    ecpms = [w.ecpm_micros for w in result.wins]
    assert ecpms == sorted(ecpms, reverse=True)
    # Second price: nobody pays less than the reserve or than the eCPM of the winner ranked below it.
    for i, w in enumerate(result.wins):
        floor = max(reserve, result.wins[i + 1].ecpm_micros if i + 1 < len(result.wins) else 0)
        assert _price_as_ecpm(w) >= floor * (1 - 1e-9) - 1
    advertisers = [w.campaign.advertiser_id for w in result.wins]
    assert len(advertisers) == len(set(advertisers))
    assert [w.slot for w in result.wins] == list(range(len(result.wins)))
    # Explained, every retrieved candidate either wins or has exactly one reason, and the counts agree.
    explained = run_auction(s, request, now_s=NOW, rng=random.Random(seed), allowance=allowance, explain=True)
    won = {w.campaign.campaign_id for w in explained.wins}
    assert won.isdisjoint(explained.reasons)
    assert won | set(explained.reasons) == ids(s, retrieve(s, request))
    assert explained.reason_counts == Counter(explained.reasons.values())
    # One slot per advertiser keeps out only the campaigns of an advertiser that won one (or, past the slots,
    # was outranked): not those of one whose campaign could not pay its price.
    holders = won | {cid for cid, reason in explained.reasons.items() if reason == Reason.OUTRANKED}
    holding = {c.advertiser_id for c in s.campaigns if c.campaign_id in holders}
    assert all(s.campaign(cid).advertiser_id in holding
               for cid, reason in explained.reasons.items() if reason == Reason.SAME_ADVERTISER)
    # Explaining changes no outcome; without it every candidate is still counted once.
    assert explained.wins == result.wins
    assert sum(result.reason_counts.values()) + len(result.wins) == result.candidates == explained.candidates
    # Same inputs, same auction.
    assert result == run_auction(s, request, now_s=NOW, rng=random.Random(seed), allowance=allowance)


def _sift(*args):
    """``_sift`` in a workspace of its own, filled with garbage first (nothing may rely on what it held) and
    used twice (the second answer, from what the first left there, must be the same): the workspace and
    ``_sift``'s three numbers."""
    m = args[0].shape[0]
    ints = np.full(auction_module._CODES + 6 * m + 3, -7, dtype=np.int64)
    floats = np.full(6 * m + 3, np.nan)
    once = auction_module._sift(*args, ints, floats)
    used = ints.copy(), floats.copy()
    assert auction_module._sift(*args, ints, floats) == once
    assert np.array_equal(ints, used[0]) and np.array_equal(floats, used[1], equal_nan=True)
    assert (ints[-3:] == -7).all() and np.isnan(floats[-3:]).all()  # nothing written past what it may use
    return ints, floats, *once


def _sifted(*args):
    """``_sift``'s results taken apart: (count per fate code, live positions, explain's rows, scores and CTRs,
    how many are sorted)."""
    ints, floats, live, first, front = _sift(*args)
    ranked = auction_module._layout(ints, floats, args[0].shape[0], live, args[9])[3]
    # What the walk reads first: the best FIRST (or all that are sorted, if fewer) and their ties, no more.
    scores, least = ranked[0].tolist(), min(auction_module.FIRST, front)
    assert least <= first <= front
    assert first == front or scores[first] != scores[first - 1]  # no run of ties straddles the cut
    assert first == least or scores[first - 1] == scores[least - 1]
    return (*auction_module._layout(ints, floats, args[0].shape[0], live, args[9]), front)


def _sift_reference(positions, fate_of, scores, ctrs, caps, reserve, head):
    """``_sift`` written plainly: each candidate's first failed check, then the survivors by one stable sort
    on descending score, of which the best ``head`` and their ties count as sorted."""
    out, over, over_ctr, over_score = caps
    rescored = {int(p): (c, s) for p, c, s in zip(over.tolist(), over_ctr.tolist(), over_score.tolist(), strict=True)}
    fates, live = [], []
    for pos in positions.tolist():
        fate, score, ctr = int(fate_of[pos]), 0.0, 0.0
        if fate in (auction_module._RESERVE, auction_module._PASSED):
            if pos in out.tolist():
                fate = auction_module._CAPPED
            else:
                ctr, score = rescored.get(pos, (ctrs[pos], scores[pos]))
                fate = auction_module._PASSED if score >= reserve and score > 0 else auction_module._RESERVE
        fates.append(fate)
        if fate == auction_module._PASSED:
            live.append((pos, float(score), float(ctr)))
    ranked = sorted(live, key=lambda entry: -entry[1])
    cut = ranked[head - 1][1] if len(ranked) > head else -math.inf
    sorted_part = [entry for entry in ranked if entry[1] >= cut]
    return fates, sorted_part, sorted(set(live) - set(sorted_part))


@pytest.mark.parametrize("seed", range(40))
def test_sift_matches_a_plain_python_reference(seed):
    """The compiled pass between retrieval and the ranking walk, against the same rules written plainly, on
    random candidates: every check's verdict in its order (a campaign-level failure first, then the user's
    caps, then the reserve on this request's score), capped campaigns and rescored ones among the
    candidates and not, NaN scores, runs of equal scores (also across the head's cut, and every candidate
    tied), and heads larger than the list."""
    from edge.ctr import NO_MODEL

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    fate_of = rng.choice(auction_module._PASSED + 1, n, p=[.05, .05, .05, 0, .1, .75]).astype(np.uint8)
    tied = rng.random() < 0.2
    scores = np.full(n, 5.0) if tied else rng.choice([1.0, 2.0, 3.0, *rng.random(20) * 10], n)
    scores[rng.random(n) < 0.05] = np.nan
    ctrs = rng.random(n)
    positions = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False)).astype(np.int64)
    reserve = float(rng.choice([0.0, 2.0]))
    caps = auction_module._NO_CAPS
    if rng.random() < 0.5:
        out = np.sort(rng.choice(n, int(rng.integers(0, 6)), replace=False)).astype(np.int64)
        over = np.setdiff1d(rng.choice(n, int(rng.integers(0, 6)), replace=False), out).astype(np.int64)
        caps = (out, over, rng.random(len(over)), rng.choice([1.0, 2.0, 3.0, np.nan], len(over)))
    head = int(rng.choice([1, 3, 32, 1000]))
    for array in (fate_of, scores, ctrs):  # read-only, as the auction passes them: the compiled version it uses
        array.flags.writeable = False
    by_fate, live, explained, ranked, front = _sifted(
        positions, fate_of, scores, ctrs, scores, NO_MODEL, caps, reserve, head, True)
    want_fates, want_sorted, want_rest = _sift_reference(positions, fate_of, scores, ctrs, caps, reserve, head)
    assert explained.tolist() == [positions.tolist(), want_fates]
    assert by_fate == [want_fates.count(code) for code in range(auction_module._PASSED + 1)]
    got = list(zip(live.tolist(), *ranked.tolist(), strict=True))
    assert front == len(want_sorted)
    assert got[:front] == want_sorted
    assert sorted(got[front:]) == want_rest
    assert all(score < got[front - 1][1] for _, score, _ in got[front:])  # no run of ties straddles the cut
    # Without explain the same, and no per-candidate list.
    quiet = _sifted(positions, fate_of, scores, ctrs, scores, NO_MODEL, caps, reserve, head, False)
    assert quiet[2].size == 0
    assert (quiet[0], quiet[1].tolist(), quiet[3].tolist(), quiet[4]) == \
        (by_fate, live.tolist(), ranked.tolist(), front)


def test_an_auction_with_more_candidates_than_the_workspace_holds_grows_it_and_runs_the_same(make_campaign,
                                                                                             monkeypatch):
    """``_select`` answers in a workspace kept between auctions; one too small for the candidates is grown and
    the auction run again, with the same outcome as in one large enough from the start: the wins, every
    candidate's fate, and the walk past what it reads first (most campaigns out of budget), which reads the
    workspace after the kernel returned."""
    campaigns = [make_campaign(f"c{i}", advertiser_id=f"a{i % 40}", max_bid_micros=1_000_000 + 1000 * (i // 2))
                 for i in range(600)]  # pairs of equal bids: ties to shuffle
    s = snap(*campaigns)
    assert s.index.size > auction_module.SMALL_INVENTORY  # the kernel's path, not the few-candidates one
    allowance = {c.campaign_id: RICH if i < 100 else 0 for i, c in enumerate(campaigns)}  # the lowest bids

    def outcomes():
        return [run_auction(s, req(slots=3), now_s=NOW, rng=random.Random(seed), allowance=allowance,
                            explain=explain) for seed in range(3) for explain in (False, True)]

    large = auction_module._Workspace()
    monkeypatch.setattr(auction_module, "_WORK", large)
    want = outcomes()
    assert large.ints.shape[0] == 4096  # it held them
    assert all(r.candidates == 600 and len(r.wins) == 3 for r in want)
    assert want[0].reason_counts[Reason.BUDGET] == 500  # the walk went past what it read first, and the head
    small = auction_module._Workspace()
    small.ints, small.floats = small.ints[:1], small.floats[:1]
    monkeypatch.setattr(auction_module, "_WORK", small)
    assert outcomes() == want
    assert small.ints.shape[0] >= auction_module._CODES + 6 * 600 and small.floats.shape[0] >= 6 * 600
    # Past what a workspace keeps, an auction works in buffers of its own, and the kept ones stay as they were.
    monkeypatch.setattr(auction_module, "WORKSPACE_KEPT", 1000)
    capped = auction_module._Workspace()
    capped.ints, capped.floats = capped.ints[:100], capped.floats[:100]
    monkeypatch.setattr(auction_module, "_WORK", capped)
    assert outcomes() == want
    assert capped.ints.shape[0] == capped.floats.shape[0] == 100


@pytest.mark.parametrize("seed", range(30))
def test_sifting_a_few_candidates_in_python_matches_the_kernel(seed):
    """Up to SIFT_IN_PYTHON candidates of a small inventory scored per campaign, ``_sift_few`` reads them one by
    one instead of calling the kernel: the same survivors in the same order (ties in position order) and the
    same counts, with the campaign-level reserve verdicts the kernel judges again on the same scores."""
    from edge.ctr import NO_MODEL

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 13))
    fate_of = rng.choice([0, 2, auction_module._PASSED, auction_module._PASSED], n).astype(np.uint8)
    scores = rng.choice([1.0, 2.0, 3.0], n)
    fate_of[(fate_of == auction_module._PASSED) & (scores < 2.0)] = auction_module._RESERVE  # as ``_checks`` does
    ctrs = rng.random(n)
    positions = np.sort(rng.choice(n, int(rng.integers(0, min(n, auction_module.SIFT_IN_PYTHON) + 1)),
                                   replace=False)).astype(np.int64)
    for array in (fate_of, scores, ctrs):
        array.flags.writeable = False
    (live, live_scores, live_ctrs), counts = auction_module._sift_few(positions, fate_of, scores, ctrs)
    by_fate, k_live, _, k_ranked, front = _sifted(
        positions, fate_of, scores, ctrs, scores, NO_MODEL, auction_module._NO_CAPS, 2.0, auction_module.HEAD,
        False)
    assert front == len(k_live)  # a handful: all sorted
    assert (live, live_scores, live_ctrs) == (k_live.tolist(), *k_ranked.tolist())
    assert counts == {auction_module._FATES[code]: n for code, n in enumerate(by_fate[:-1]) if n}


def test_the_auction_kernel_scores_with_the_click_model_as_predicted_ctr_and_ecpm(make_campaign, make_creative):
    """With a click model the kernel scores each candidate itself (``score_one``): the same CTRs and scores,
    bit for bit, as the vectorized ``predicted_ctr_and_ecpm``, and only those that pass the campaign checks."""
    from edge.ctr import model_inputs, predicted_ctr_and_ecpm
    from replication.ctr_model import ClickModel

    campaigns = [make_campaign(f"c{i}", advertiser_id=f"a{i}", bid_type=("cpm", "cpc", "cpa")[i % 3],
                               max_bid_micros=1_000_000 + 1000 * i,
                               creatives=[make_creative(f"k{i}", prior_ctr=0.001 * (i + 1))]) for i in range(30)]
    model = ClickModel.from_sparse(1, 18, list(range(0, 1 << 18, 97)), [0.01 * (i % 50 - 25) for i in range(2703)],
                                   {"k3": 400, "k4": 50})
    s = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    positions = np.arange(30, dtype=np.int64)
    fate_of = np.full(30, auction_module._PASSED, dtype=np.uint8)
    fate_of[5] = auction_module._FATES.index(Reason.SCHEDULE)
    fate_of.flags.writeable = False
    own = auction_module.ecpm_scores(s.columns, "300x250")
    inputs = model_inputs(s, "300x250", "home", "US", "mobile", NOW)
    ctrs, scores = predicted_ctr_and_ecpm(s, positions, "300x250", "home", "US", "mobile", NOW)
    for head in (1000, 3):
        ints, floats, n, first, front = _sift(
            positions, fate_of, own, s.columns.formats["300x250"].ctr, auction_module.cpm_bids(s.columns, "300x250"),
            inputs, auction_module._NO_CAPS, 0.0, head, False)
        by_fate, live, _, ranked = auction_module._layout(ints, floats, 30, n, False)
        assert 5 not in live.tolist() and sorted(live.tolist()) == [p for p in range(30) if p != 5]
        assert by_fate[auction_module._FATES.index(Reason.SCHEDULE)] == 1 and by_fate[auction_module._PASSED] == 29
        order = live.tolist()
        assert ranked[0].tolist() == scores[order].tolist()
        assert ranked[0].tolist() != own[order].tolist()  # the model, not the priors, scored them
        # The CTRs of what the walk reads first all predicted; past that, a CPM campaign's (ranked on its bid)
        # only when asked for.
        assert front == (29 if head == 1000 else 3) and first == min(auction_module.FIRST, front)
        assert ranked[1, :first].tolist() == ctrs[order[:first]].tolist()
        cpm = [i for i in range(first, 29) if s.campaigns[order[i]].bid_type == "cpm"]
        assert cpm and all(np.isnan(ranked[1, i]) for i in cpm)
        auction_module.fill_ctrs(live[first:], ranked[1, first:], inputs)
        assert ranked[1].tolist() == ctrs[order].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_sorting_only_the_head_changes_no_outcome(make_campaign, monkeypatch, seed):
    """The ranking sorts the best 32 candidates (and their ties) up front and the rest only when the walk gets
    there. Against a walk over one full sort, with the same rng: the same wins, reasons and counts, also when
    ties straddle the 32nd place, the top of the ranking cannot pay, or explain walks every candidate."""
    import edge.auction as auction_module

    rng = random.Random(seed)
    bids = (500_000, 700_000, 900_000)  # many ties, one run of them across the 32nd place
    campaigns = [make_campaign(f"c{i:03d}", advertiser_id=f"a{rng.randrange(40)}",
                               max_bid_micros=rng.choice((*bids, rng.randrange(200_000, 2_000_000))))
                 for i in range(120)]
    snapshot = snap(*campaigns)
    # The best-paying third cannot afford a unit: the walk must get past the head to fill the slots.
    broke = {c.campaign_id for c in sorted(campaigns, key=lambda c: -c.max_bid_micros)[:40]}
    allowance = {c.campaign_id: (0 if c.campaign_id in broke else RICH) for c in campaigns}

    def run(head: int, explain: bool):
        monkeypatch.setattr(auction_module, "HEAD", head)
        return run_auction(snapshot, req(slots=6), now_s=NOW, rng=random.Random(seed), allowance=allowance,
                           explain=explain)

    for explain in (False, True):
        full, partial = run(10**9, explain), run(32, explain)
        assert [(w.campaign.campaign_id, w.price_micros) for w in partial.wins] == \
               [(w.campaign.campaign_id, w.price_micros) for w in full.wins]
        assert (partial.reasons, partial.reason_counts) == (full.reasons, full.reason_counts)
    assert len(full.wins) == 6


def test_creative_caps_rescore_only_candidates(make_campaign, make_creative, monkeypatch):
    """A capped best creative is rescored on the campaign's next best one with the click model's Python
    (``predicted_ctr_one``, tens of microseconds): only for a campaign this request retrieved, however many
    other campaigns the user has capped creatives of."""
    from edge.frequency import Capped
    from replication.ctr_model import ClickModel

    campaigns = [make_campaign(f"c{i}", advertiser_id=f"a{i}", placements=["home"] if i < 2 else ["news"],
                               creatives=[make_creative(f"c{i}-a", prior_ctr=0.02), make_creative(f"c{i}-b")])
                 for i in range(8)]
    s = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=0,
                       click_model=ClickModel.from_sparse(1, 18, [1], [0.1], {}))
    rescored = []
    real = auction_module.predicted_ctr_one
    monkeypatch.setattr(auction_module, "predicted_ctr_one",
                        lambda model, campaign, *rest: rescored.append(campaign.campaign_id) or real(model, campaign,
                                                                                                     *rest))
    capped = Capped(creatives={f"c{i}": frozenset({f"c{i}-a"}) for i in range(8)})
    result = run_auction(s, req(slots=2, placement="home"), now_s=NOW, rng=random.Random(1),
                         allowance=rich(*(c.campaign_id for c in campaigns)), capped=capped)
    assert sorted(rescored) == ["c0", "c1"]  # the candidates; c2..c7 target another placement
    assert {w.creative.creative_id for w in result.wins} == {"c0-b", "c1-b"}


@pytest.mark.parametrize("head", [1, 32])
def test_a_winner_from_past_the_head_is_priced_with_its_predicted_ctr(make_campaign, make_creative, monkeypatch,
                                                                       head):
    """With a click model a CPM campaign ranks on its bid and its CTR is predicted only if the walk reaches it:
    among the FIRST the walk reads at once, further on when the walk gets there (the rest of the sorted
    head, or the others, sorted then). A CPM winner from past those (the campaigns above it cannot pay)
    still carries the model's CTR, never NaN."""
    from edge.ctr import predicted_ctr_and_ecpm
    from replication.ctr_model import ClickModel

    n = auction_module.FIRST + 6
    campaigns = [make_campaign(f"c{i}", advertiser_id=f"a{i}", bid_type="cpm", max_bid_micros=1_000_000 + 1000 * i,
                               creatives=[make_creative(f"k{i}")]) for i in range(n)]
    model = ClickModel.from_sparse(1, 18, list(range(0, 1 << 18, 89)), [0.02] * 2946, {"k2": 300})
    s = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=0, click_model=model)
    auction_module.warm_up(s)
    monkeypatch.setattr(auction_module, "HEAD", head)
    broke = {f"c{i}" for i in range(4, n)}  # the best cannot pay, more of them than FIRST: the winners come after
    allowance = {c.campaign_id: 0 if c.campaign_id in broke else RICH for c in campaigns}
    result = run_auction(s, req(slots=2), now_s=NOW, rng=random.Random(1), allowance=allowance)
    assert [w.campaign.campaign_id for w in result.wins] == ["c3", "c2"]
    ctrs, _ = predicted_ctr_and_ecpm(s, np.arange(n), "300x250", "home", "", "", NOW)
    for w in result.wins:
        assert w.ctr == ctrs[s.by_id[w.campaign.campaign_id]] and 0 < w.ctr < 1


def test_one_compiled_version_serves_every_path(make_campaign, make_creative, monkeypatch):
    """The auction's kernel is compiled when a snapshot loads (``warm_up``, once per process); a request whose
    arrays differ in type or flags (int64 or intp positions, read-only or writable scores, caps or none, a
    model or none) would compile another version in the middle of serving, for seconds. And the auction calls
    the compiled code past numba's dispatcher (``_kernel``), which it looks up once per snapshot and format:
    a call whose arguments' types differ from the ones it was looked up for would be misread, so every call
    is checked here. Every path of the auction: priors and a click model, caps on a campaign and on a
    creative, explain, an unknown format, snapshots restricted in different numbers of dimensions, built and
    decoded."""
    from numba import typeof

    from replication.ctr_model import ClickModel
    from replication.snapshot import decode_snapshot, encode_snapshot

    looked_up = auction_module._kernel
    calls = []

    def checked(columns, fmt, priors_only, args):  # type: ignore[no-untyped-def]
        kernel = looked_up(columns, fmt, priors_only, args)
        compiled = auction_module._select.overloads.get(tuple(typeof(arg) for arg in args))
        assert compiled is not None, (fmt, priors_only)
        assert kernel is (compiled.entry_point if fmt in columns.formats else auction_module._select), fmt
        calls.append(fmt)
        return kernel

    monkeypatch.setattr(auction_module, "_kernel", checked)

    # Distinct CPM and CPC bids: no run of ties spans the whole ranking, so with a head of 2 the walk sorts
    # the rest, and predicts the CPM campaigns' CTRs there.
    campaigns = [make_campaign(f"c{i}", advertiser_id=f"a{i}", keywords=["kw"] if i % 2 else [],
                               bid_type="cpm" if i % 3 else "cpc", max_bid_micros=1_000_000 + 1000 * i,
                               creatives=[make_creative(f"c{i}-a"), make_creative(f"c{i}-b", prior_ctr=0.001)])
                 for i in range(12)]
    model = ClickModel.from_sparse(1, 18, [1, 2], [0.1, -0.1], {})
    snapshots = (snap(*campaigns), build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000,
                                                  click_model=model),
                 snap(*(dataclasses.replace(c, devices=frozenset({"mobile"}), countries=frozenset({"US"}))
                        for c in campaigns)))
    snapshots += (decode_snapshot(encode_snapshot(snapshots[1])),)
    for snapshot in snapshots[:2]:
        auction_module.warm_up(snapshot)
    compiled = (list(auction_module._select.signatures), list(auction_module.fill_ctrs.signatures))
    assert len(compiled[0]) == 1
    monkeypatch.setattr(auction_module, "HEAD", 2)  # the walk goes past the sorted head: the CTRs still to predict
    for snapshot in snapshots:
        auction_module.warm_up(snapshot)
        for capped in (NOTHING_CAPPED, Capped(campaigns=frozenset({"c0"})),
                       Capped(creatives={"c1": frozenset({"c1-a"})})):
            for request in (req(slots=2, keywords=("kw",)), req(format="1x1"), req(keywords=("kw", "other")),
                            req(keywords=("kw",), site="blog.example", segments=("kw-a", "kw-b"))):
                for explain in (False, True):
                    run_auction(snapshot, request, now_s=NOW, rng=random.Random(1), allowance=rich(
                        *(c.campaign_id for c in campaigns)), capped=capped, explain=explain)
    # No snapshot and no request compiled anything more: what warm_up compiled served every path.
    assert (list(auction_module._select.signatures), list(auction_module.fill_ctrs.signatures)) == compiled
    assert len(calls) >= 4 * 3 * 2 * 3 and "1x1" in calls  # the kernel's calls were all checked


def test_the_kernels_ask_for_scattered_reads_ahead(make_campaign):
    """The sifting pass and the head's CTR prediction prefetch the per-campaign data they will read
    (``edge.prefetch``): a prefetch intrinsic that compiled to nothing would leave every result the same and
    every cache miss waited out in turn, so look for the instruction in what numba compiled."""
    auction_module.warm_up(snap(make_campaign("a")))
    for kernel in (auction_module._select, auction_module.fill_ctrs):
        (signature,) = kernel.signatures
        assert re.search(r"^\s*(prefetcht0|prfm)\s", kernel.inspect_asm(signature), re.MULTILINE), kernel


def test_warm_up_builds_every_format_s_columns_so_no_first_request_waits(make_campaign, make_creative):
    """Per format the campaigns' scores, and with a click model the model's columns, are built on first use
    and kept with the snapshot: at 100,000 campaigns the model's took 121-127 ms, a request's wait. The
    edge warms a snapshot before swapping it in, for every format it has."""
    from replication.ctr_model import ClickModel

    campaigns = [make_campaign("rect", creatives=[make_creative("r", format="300x250")]),
                 make_campaign("leader", creatives=[make_creative("l", format="728x90")]),
                 make_campaign("phone", creatives=[make_creative("p", format="320x50")]),
                 make_campaign("bare", creatives=[])]  # unrestricted in format: a candidate for any format
    model = ClickModel.from_sparse(7, 18, [1, 2], [0.1, -0.1], {})
    snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000, click_model=model)
    auction_module.warm_up(snapshot)
    built = set(snapshot.columns.memo)
    for fmt in ("300x250", "728x90", "320x50"):
        assert ("ecpm", fmt) in built and ("ctr-model", 7, fmt) in built, fmt
        result = run_auction(snapshot, req(format=fmt), now_s=NOW, rng=random.Random(1),
                             allowance=rich("rect", "leader", "phone"))
        assert len(result.wins) == 1
    # A format no campaign has: "bare" is its only candidate, scored with the columns of the "" key.
    assert ("ctr-model", 7, "") in built
    assert "schedule-edges" in built  # what the verdicts of a new second are checked against
    assert run_auction(snapshot, req(format="160x600"), now_s=NOW, rng=random.Random(1),
                       allowance=rich("bare")).candidates == 1
    # Serving every format built no more columns: only the per-second verdicts (and the bundle of them with the
    # columns already built, ``_per_format``), the request contexts and which compiled kernel serves a format
    # (``_kernel``: the types of the arguments, worked out, no compile).
    assert {k[0] for k in set(snapshot.columns.memo) - built} <= {"checks", "per-format", "ctr-contexts",
                                                                  "select-kernel"}
