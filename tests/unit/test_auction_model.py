"""The vectorized auction against a plain reference: one Python loop over every candidate, written for
clarity (the auction as it was before the columns). Where no random draw can matter (distinct scores, one
creative per format, throttles of 0 or 1) both must pick the same winners at the same prices and give every
candidate the same fate."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.auction import AdRequest, Reason, _unit_price, ecpm_micros, expected_cost, run_auction
from replication.calendar import local_hour
from replication.snapshot import Snapshot, build_snapshot, unit_cost_ceiling

NOW = 1_705_320_000  # 2024-01-15 12:00 UTC
ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Australia/Adelaide")


def reference(snapshot: Snapshot, request: AdRequest, allowance: dict[str, int], throttle: dict[str, float],
              now_s: float) -> tuple[list[tuple[str, str, int]], dict[str, Reason]]:
    reserve = snapshot.reserve_cpm_micros
    reasons: dict[str, Reason] = {}
    scored = []
    for c in snapshot.campaigns:
        if c.creatives and request.format not in {k.format for k in c.creatives}:
            # Retrieval drops campaigns without a creative of the format; those with none at all pass it.
            continue
        if request.placement not in c.placements and c.placements:
            continue
        if now_s < c.start_s or (c.end_s and now_s >= c.end_s):
            reasons[c.campaign_id] = Reason.SCHEDULE
            continue
        if c.hours and local_hour(now_s, c.timezone) not in c.hours:
            reasons[c.campaign_id] = Reason.HOUR
            continue
        fitting = [k for k in c.creatives if k.format == request.format]
        if not fitting:
            reasons[c.campaign_id] = Reason.FORMAT
            continue
        creative = max(fitting, key=lambda k: k.prior_ctr)
        score = ecpm_micros(c, creative.prior_ctr)
        if score < reserve or score <= 0:
            reasons[c.campaign_id] = Reason.BELOW_RESERVE
            continue
        scored.append((score, c, creative))
    scored.sort(key=lambda e: -e[0])
    ranked = []
    for score, c, creative in scored:
        if allowance.get(c.campaign_id, 0) <= 0:
            reasons[c.campaign_id] = Reason.BUDGET
        elif throttle.get(c.campaign_id, 1.0) == 0.0:
            reasons[c.campaign_id] = Reason.PACING
        else:
            ranked.append((score, c, creative))
    # One slot per advertiser: an advertiser is taken by its win (or, past the slots, by its outranked
    # campaign); one whose campaign could not afford its price is not, and its next campaign competes.
    wins: list[tuple[str, str, int]] = []
    taken: set[str] = set()
    for i, (score, c, creative) in enumerate(ranked):
        if c.advertiser_id in taken:
            reasons[c.campaign_id] = Reason.SAME_ADVERTISER
            continue
        if len(wins) == max(1, request.slots):
            reasons[c.campaign_id] = Reason.OUTRANKED
            taken.add(c.advertiser_id)
            continue
        runner_up = next((s for s, r, _ in ranked[i + 1:] if r.advertiser_id not in taken | {c.advertiser_id}), 0.0)
        price = _unit_price(c, creative.prior_ctr, min(score, max(runner_up, float(reserve))))
        if allowance.get(c.campaign_id, 0) < price:
            reasons[c.campaign_id] = Reason.BUDGET
            continue
        assert expected_cost(c, creative.prior_ctr, price) > 0
        wins.append((c.campaign_id, creative.creative_id, price))
        taken.add(c.advertiser_id)
    return wins, reasons


_specs = st.lists(
    st.tuples(
        st.sampled_from(["cpm", "cpc", "cpa"]),
        st.floats(0.0005, 0.3),  # prior ctr (bids are made distinct below)
        st.floats(0.01, 1.0),  # prior cvr
        st.sampled_from(["a", "b", "c", "d", "e"]),  # advertiser
        st.sampled_from(["zero", "below", "exact", "rich"]),  # allowance against the unit ceiling
        st.sampled_from([1.0, 1.0, 0.0]),  # pacing throttle
        st.sampled_from(["live", "future", "ended"]),
        st.one_of(st.just(frozenset()), st.frozensets(st.integers(0, 23), min_size=1, max_size=12)),
        st.sampled_from(ZONES),
        st.sampled_from([("300x250",), ("728x90",), ("300x250", "728x90"), ()]),
        st.sampled_from([(), ("home",), ("news",)]),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_specs, slots=st.integers(1, 4), reserve=st.integers(0, 2_000_000), seed=st.integers(0, 2**32),
       hour_shift=st.integers(0, 23))
def test_vectorized_auction_matches_the_reference(make_campaign, make_creative, specs, slots, reserve, seed,
                                                  hour_shift):
    now = NOW + hour_shift * 3600 + 1_234
    campaigns, allowance, throttle = [], {}, {}
    for i, (bid_type, ctr, cvr, adv, kind, p, sched, hours, tz, formats, placements) in enumerate(specs):
        cid = f"c{i:02d}"
        # Distinct bids, so that no two eCPMs tie and the order needs no random draw.
        bid = {"cpm": 400_000, "cpc": 40_000, "cpa": 400_000}[bid_type] + 7_919 * i
        start, end = {"live": (0, 0), "future": (now + 60, 0), "ended": (0, now)}[sched]
        campaigns.append(make_campaign(
            cid, advertiser_id=adv, bid_type=bid_type, max_bid_micros=bid, prior_cvr=cvr, start_s=start,
            end_s=end, hours=hours, timezone=tz, placements=list(placements),
            creatives=[make_creative(f"{cid}-{f}", format=f, prior_ctr=ctr * (1 + j / 7))
                       for j, f in enumerate(formats)]))
        ceiling = unit_cost_ceiling(bid_type, bid)
        allowance[cid] = {"zero": 0, "below": max(0, ceiling // 3), "exact": ceiling, "rich": 10**12}[kind]
        throttle[cid] = p
    snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=reserve)
    request = AdRequest(placement="home", slots=slots, format="300x250")
    want_wins, want_reasons = reference(snapshot, request, allowance, throttle, now)
    for explain in (False, True):
        result = run_auction(snapshot, request, now_s=now, rng=random.Random(seed), allowance=allowance,
                             throttle=throttle, explain=explain)
        got = [(w.campaign.campaign_id, w.creative.creative_id, w.price_micros) for w in result.wins]
        assert got == want_wins
        if explain:
            assert dict(result.reasons) == want_reasons
