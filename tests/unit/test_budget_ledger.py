"""The edge budget ledger: reservations, spend and expiry keep the books balanced."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.budget import BudgetLedger


def balanced(ledger: BudgetLedger, campaign_id: str) -> bool:
    b = ledger.campaigns[campaign_id]
    return b.available + b.reserved + b.spent == b.granted


DAY = "2026-11-24"


def ledger_with(micros: int = 10_000, campaign_id: str = "c1") -> BudgetLedger:
    ledger = BudgetLedger()
    ledger.grant(campaign_id, micros, exhausted=False, day=DAY)
    return ledger


def test_grant_adds_to_available_and_granted():
    ledger = ledger_with(1_000)
    ledger.grant("c1", 500, exhausted=True, day=DAY)
    b = ledger.campaigns["c1"]
    assert (b.available, b.granted, b.exhausted) == (1_500, 1_500, True)


def test_reserve_moves_available_to_reserved():
    ledger = ledger_with(1_000)
    assert ledger.reserve("i1", "c1", 300, expires_s=10)
    b = ledger.campaigns["c1"]
    assert (b.available, b.reserved, b.spent) == (700, 300, 0)
    assert balanced(ledger, "c1")


def test_reserve_fails_when_insufficient():
    ledger = ledger_with(1_000)
    assert not ledger.reserve("i1", "c1", 1_001, expires_s=10)
    assert ledger.campaigns["c1"].available == 1_000
    assert "i1" not in ledger.reservations


def test_reserve_exactly_the_rest_succeeds():
    ledger = ledger_with(1_000)
    assert ledger.reserve("i1", "c1", 1_000, expires_s=10)
    assert ledger.campaigns["c1"].available == 0


def test_reserve_for_an_unknown_campaign_or_negative_amount_fails():
    ledger = ledger_with(1_000)
    assert not ledger.reserve("i1", "nope", 1, expires_s=10)
    assert not ledger.reserve("i2", "c1", -1, expires_s=10)
    assert ledger.campaigns["c1"].available == 1_000


def test_reserve_refused_when_the_reservation_table_is_full():
    ledger = BudgetLedger(max_reservations=2)
    ledger.grant("c1", 1_000, exhausted=False, day=DAY)
    assert ledger.reserve("i1", "c1", 1, expires_s=10)
    assert ledger.reserve("i2", "c1", 1, expires_s=10)
    assert not ledger.reserve("i3", "c1", 1, expires_s=10)
    assert ledger.campaigns["c1"].available == 998


def test_settle_turns_the_reservation_into_the_real_cost():
    ledger = ledger_with(1_000)
    ledger.reserve("i1", "c1", 300, expires_s=10)
    assert ledger.settle("i1", "c1", 250)  # the click cost less than reserved: the rest goes back
    b = ledger.campaigns["c1"]
    assert (b.available, b.reserved, b.spent) == (750, 0, 250)
    assert balanced(ledger, "c1")


def test_settle_without_a_reservation_here_takes_from_the_allowance():
    ledger = ledger_with(1_000)
    assert ledger.settle("reserved-by-another-worker", "c1", 400)
    assert (ledger.campaigns["c1"].available, ledger.campaigns["c1"].spent) == (600, 400)


def test_settle_refuses_what_the_allowance_cannot_cover_and_takes_nothing():
    ledger = ledger_with(100)
    assert not ledger.settle("i1", "c1", 250)
    b = ledger.campaigns["c1"]
    assert (b.available, b.spent, b.refused) == (100, 0, 1)
    assert not ledger.settle("i2", "unknown", 1)


def test_expire_releases_due_reservations_in_order():
    ledger = ledger_with(1_000)
    ledger.reserve("i1", "c1", 100, expires_s=10)
    ledger.reserve("i2", "c1", 200, expires_s=20)
    ledger.reserve("i3", "c1", 400, expires_s=30)
    assert ledger.expire(9.9) == 0
    assert ledger.expire(20) == 300  # due at exactly its expiry
    assert list(ledger.reservations) == ["i3"]
    b = ledger.campaigns["c1"]
    assert (b.available, b.reserved) == (600, 400)
    assert ledger.settle("i1", "c1", 100)  # a late beacon is paid from the allowance, once
    assert (b.available, b.spent) == (500, 100)


def test_expire_stops_at_the_first_reservation_not_yet_due():
    ledger = ledger_with(1_000)
    ledger.reserve("late", "c1", 100, expires_s=50)
    ledger.reserve("early", "c1", 100, expires_s=10)
    # Insertion order is the expiry order (one TTL per process): the scan stops at the first live entry.
    assert ledger.expire(20) == 0
    assert ledger.expire(50) == 200


def test_a_new_day_drops_yesterdays_unspent_slices():
    ledger = ledger_with(1_000)
    ledger.reserve("i1", "c1", 300, expires_s=10)
    assert ledger.new_day("c1", "2026-11-25")
    b = ledger.campaigns["c1"]
    assert b.available == 0  # yesterday's 700 cannot be spent against today's budget
    assert not ledger.new_day("c1", "2026-11-25") and not ledger.new_day("c1", DAY)  # never backwards
    ledger.grant("c1", 500, exhausted=False, day="2026-11-25")
    ledger.expire(10)  # yesterday's reservation expires: it does not refill today's allowance
    assert (b.available, b.reserved) == (500, 0)


def test_yesterdays_reservation_settles_as_yesterdays_spend():
    ledger = ledger_with(1_000)
    ledger.reserve("i1", "c1", 300, expires_s=10)
    ledger.new_day("c1", "2026-11-25")
    ledger.grant("c1", 500, exhausted=False, day="2026-11-25")
    assert ledger.settle("i1", "c1", 300)
    b = ledger.campaigns["c1"]
    assert (b.available, b.reserved, b.spent) == (500, 0, 300)


def test_a_grant_for_a_day_that_is_over_is_ignored():
    ledger = ledger_with(1_000)
    ledger.new_day("c1", "2026-11-25")
    ledger.grant("c1", 400, exhausted=False, day=DAY)
    assert ledger.campaigns["c1"].available == 0


def test_allowance_lists_only_positive_balances():
    ledger = ledger_with(100)
    ledger.grant("c2", 0, exhausted=True, day=DAY)
    assert ledger.allowance() == {"c1": 100}


def test_allowance_view_is_live_and_defaults():
    ledger = ledger_with(100)
    view = ledger.allowance_view()
    ledger.reserve("i1", "c1", 40, expires_s=1)
    assert view.get("c1", 0) == 60
    assert view.get("nope", 0) == 0
    assert view.get("nope", 7) == 7


# --- wants ---------------------------------------------------------------------------------------------------


def test_wants_asks_below_half_the_target_for_the_difference():
    ledger = ledger_with(400)
    assert ledger.wants({"c1": 1_000}, now_s=100, retry_s=1) == {"c1": 600}


def test_wants_does_not_ask_at_or_above_the_low_water_mark():
    ledger = ledger_with(500)
    assert ledger.wants({"c1": 1_000}, now_s=100, retry_s=1) == {}


def test_wants_asks_for_unknown_campaigns():
    assert BudgetLedger().wants({"new": 1_000}, now_s=100, retry_s=1) == {"new": 1_000}


def test_wants_waits_the_retry_interval_between_asks():
    ledger = ledger_with(0)
    assert ledger.wants({"c1": 1_000}, now_s=100, retry_s=1) == {"c1": 1_000}
    assert ledger.wants({"c1": 1_000}, now_s=100.5, retry_s=1) == {}
    assert ledger.wants({"c1": 1_000}, now_s=101, retry_s=1) == {"c1": 1_000}


def test_exhausted_campaign_waits_twenty_retry_intervals():
    ledger = BudgetLedger()
    assert ledger.wants({"c1": 1_000}, now_s=100, retry_s=1) == {"c1": 1_000}
    ledger.grant("c1", 0, exhausted=True, day=DAY)
    assert ledger.wants({"c1": 1_000}, now_s=119.9, retry_s=1) == {}
    assert ledger.wants({"c1": 1_000}, now_s=120, retry_s=1) == {"c1": 1_000}


def test_reset_clears_exhausted_and_allows_an_immediate_ask():
    ledger = BudgetLedger()
    ledger.wants({"c1": 1_000}, now_s=100, retry_s=1)
    ledger.grant("c1", 0, exhausted=True, day=DAY)
    ledger.reset("c1")
    assert not ledger.campaigns["c1"].exhausted
    assert ledger.wants({"c1": 1_000}, now_s=100.1, retry_s=1) == {"c1": 1_000}


def test_reset_of_unknown_campaign_is_harmless():
    ledger = BudgetLedger()
    ledger.reset("nope")
    assert ledger.campaigns == {}


# --- properties ----------------------------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.sampled_from(["c1", "c2"]), st.integers(0, 5_000)),
        st.tuples(st.just("reserve"), st.sampled_from(["c1", "c2", "c3"]), st.integers(-5, 3_000)),
        st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 3_000)),
        st.tuples(st.just("expire"), st.integers(0, 5), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops)
def test_books_balance_and_spend_never_exceeds_grants(ops):
    ledger = BudgetLedger()
    now, n = 0.0, 0
    for op, a, b in ops:
        if op == "grant":
            ledger.grant(a, b, exhausted=False, day=DAY)
        elif op == "reserve":
            before = ledger.campaigns[a].available if a in ledger.campaigns else None
            ok = ledger.reserve(f"i{n}", a, b, expires_s=now + 3)
            assert ok == (before is not None and 0 <= b <= before)
            n += 1
        elif op == "settle":
            if "c1" in ledger.campaigns:
                ledger.settle(f"i{a}", "c1", b)
        else:
            now += a
            ledger.expire(now)
        for cid, bud in ledger.campaigns.items():
            assert bud.available >= 0
            assert balanced(ledger, cid)
            assert bud.reserved == sum(r.micros for r in ledger.reservations.values() if r.campaign_id == cid)
            assert bud.spent <= bud.granted  # the hard bound: never spend more than was granted
    # Everything still reserved is released once it is all due.
    ledger.expire(now + 10)
    assert all(b.reserved == 0 and b.available + b.spent == b.granted for b in ledger.campaigns.values())


def test_reserving_the_same_impression_twice_does_not_leak():
    ledger = ledger_with(1_000)
    ledger.reserve("i1", "c1", 300, expires_s=10)
    ledger.reserve("i1", "c1", 300, expires_s=10)
    ledger.expire(10)
    b = ledger.campaigns["c1"]
    assert (b.available, b.reserved) == (1_000, 0)
