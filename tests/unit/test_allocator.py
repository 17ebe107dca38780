"""Budget allocator arithmetic: slices never exceed the daily or total budget, days roll in local time."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.allocator import BudgetTerms, GrantState, decide_grant, local_day

NY = ZoneInfo("America/New_York")


def at(y, mo, d, h, mi=0, tz=NY) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


NOW = at(2024, 1, 15, 12)  # noon in New York


def terms(daily=1_000_000, total=10_000_000, tz="America/New_York", unit=100) -> BudgetTerms:
    return BudgetTerms(daily_budget_micros=daily, total_budget_micros=total, timezone=tz, unit_ceiling_micros=unit)


def test_first_grant_is_what_was_asked_for():
    d = decide_grant(None, terms(), 1_000, now_s=NOW)
    assert d.granted == 1_000
    assert not d.exhausted
    assert d.state == GrantState(day="2024-01-15", granted_day=1_000, granted_total=1_000)


def test_slice_is_capped_at_a_fraction_of_the_daily_budget():
    assert decide_grant(None, terms(), 10**12, now_s=NOW).granted == 50_000
    assert decide_grant(None, terms(), 10**12, now_s=NOW, max_slice_fraction=0.2).granted == 200_000


def test_slice_cap_is_at_least_one_unit():
    d = decide_grant(None, terms(daily=1_000, unit=500), 10**9, now_s=NOW)
    assert d.granted == 500


def test_near_the_end_a_quarter_of_the_rest_is_handed_out():
    state = GrantState(day="2024-01-15", granted_day=960_000, granted_total=960_000)
    d = decide_grant(state, terms(), 10**9, now_s=NOW)
    assert d.granted == 10_000  # 40,000 left / 4
    assert d.state.granted_day == 970_000


def test_never_grants_past_the_daily_budget():
    state = GrantState(day="2024-01-15", granted_day=999_850, granted_total=999_850)
    d = decide_grant(state, terms(), 10**9, now_s=NOW)
    # 150 left: a quarter of it is below one unit, so one unit (100) goes out, and the 50 left are useless.
    assert d.granted == 100
    assert d.state.granted_day == 999_950
    assert d.exhausted


def test_exhausted_when_less_than_one_unit_remains():
    state = GrantState(day="2024-01-15", granted_day=999_901, granted_total=999_901)
    d = decide_grant(state, terms(unit=100), 10**9, now_s=NOW)
    assert d.granted == 0
    assert d.exhausted
    assert d.state == state


def test_exactly_one_unit_left_is_still_granted():
    state = GrantState(day="2024-01-15", granted_day=999_900, granted_total=999_900)
    d = decide_grant(state, terms(unit=100), 10**9, now_s=NOW)
    assert d.granted == 100
    assert d.exhausted


def test_never_grants_past_the_total_budget():
    state = GrantState(day="2024-01-15", granted_day=0, granted_total=9_999_000)
    d = decide_grant(state, terms(), 10**9, now_s=NOW)
    assert d.granted == 250  # a quarter of the 1,000 left in the total, though the day has 1,000,000 left
    assert d.state.granted_total == 9_999_250


def test_zero_or_negative_want_grants_nothing_without_exhausting():
    for want in (0, -5):
        d = decide_grant(None, terms(), want, now_s=NOW)
        assert d.granted == 0
        assert not d.exhausted


def test_day_rolls_over_at_local_midnight_and_keeps_the_total():
    spent = GrantState(day="2024-01-15", granted_day=1_000_000, granted_total=3_000_000)
    before = decide_grant(spent, terms(), 1_000, now_s=at(2024, 1, 15, 23, 59))
    assert before.granted == 0 and before.exhausted
    after = decide_grant(spent, terms(), 1_000, now_s=at(2024, 1, 16, 0, 1))
    assert after.granted == 1_000
    assert after.state == GrantState(day="2024-01-16", granted_day=1_000, granted_total=3_001_000)


def test_utc_midnight_is_not_a_new_day_in_new_york():
    spent = GrantState(day="2024-01-15", granted_day=1_000_000, granted_total=1_000_000)
    # 00:30 UTC on the 16th is still 19:30 on the 15th in New York.
    d = decide_grant(spent, terms(), 1_000, now_s=at(2024, 1, 16, 0, 30, tz=ZoneInfo("UTC")))
    assert d.granted == 0
    assert d.state.day == "2024-01-15"


def test_total_exhaustion_survives_a_new_day():
    spent = GrantState(day="2024-01-15", granted_day=500, granted_total=10_000_000)
    d = decide_grant(spent, terms(), 1_000, now_s=at(2024, 1, 16, 12))
    assert d.granted == 0
    assert d.exhausted


def test_local_day():
    assert local_day(at(2024, 1, 15, 23, 30), "America/New_York") == "2024-01-15"
    assert local_day(at(2024, 1, 15, 23, 30), "UTC") == "2024-01-16"


_TIMEZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"]


@settings(max_examples=200, deadline=None)
@given(
    tz=st.sampled_from(_TIMEZONES),
    daily=st.integers(1, 5_000_000),
    total_days=st.floats(0.5, 4),
    unit=st.integers(1, 200_000),
    floor=st.integers(0, 250_000),  # the least a unit costs: 0 (the ceiling), below it, or above (clamped)
    fraction=st.floats(0.01, 1.0),
    steps=st.lists(st.tuples(st.integers(0, 8 * 3600), st.integers(-10, 3_000_000)), max_size=80),
)
def test_grants_never_exceed_daily_or_total_budget(tz, daily, total_days, unit, floor, fraction, steps):
    t = BudgetTerms(daily_budget_micros=daily, total_budget_micros=max(daily, int(daily * total_days)), timezone=tz,
                    unit_ceiling_micros=unit, unit_floor_micros=floor)
    state, now = None, NOW
    per_day: dict[str, int] = defaultdict(int)
    granted_total = 0
    for dt, want in steps:
        now += dt  # time only moves forward
        d = decide_grant(state, t, want, now_s=now, max_slice_fraction=fraction)
        assert 0 <= d.granted <= max(0, want)
        per_day[local_day(now, tz)] += d.granted
        granted_total += d.granted
        assert d.state.granted_total == granted_total
        assert d.state.granted_day == per_day[local_day(now, tz)]
        if d.exhausted:
            # Exhausted means a further ask the same day can get nothing.
            assert decide_grant(d.state, t, 10**12, now_s=now).granted == 0
        state = d.state
    assert granted_total <= t.total_budget_micros
    assert all(v <= t.daily_budget_micros for v in per_day.values())


def test_a_clock_stepping_back_over_midnight_neither_relabels_nor_reopens_the_day() -> None:
    terms = BudgetTerms(daily_budget_micros=100_000, total_budget_micros=10**9, timezone="UTC",
                        unit_ceiling_micros=1)
    after = datetime(2026, 10, 4, 0, 5, tzinfo=ZoneInfo("UTC")).timestamp()
    state = decide_grant(None, terms, 10_000, now_s=after, max_slice_fraction=1.0).state
    assert (state.day, state.granted_day) == ("2026-10-04", 10_000)
    behind = decide_grant(state, terms, 10_000, now_s=after - 600, max_slice_fraction=1.0).state  # 23:55
    assert (behind.day, behind.granted_day) == ("2026-10-04", 20_000), "kept the day already opened"
    granted = behind.granted_day
    for _ in range(40):  # forward again: the rest of the same day's budget, never a fresh one
        behind = decide_grant(behind, terms, 10**6, now_s=after + 60, max_slice_fraction=1.0).state
    assert behind.granted_day <= terms.daily_budget_micros and behind.granted_day > granted


def test_a_campaign_paying_the_reserve_gets_its_last_ceiling_of_budget_too():
    """Below one ceiling unit left the budget is not spent out while a unit at the floor price still fits:
    a campaign whose bid allows 1,571 micros an impression but pays the reserve (100) can buy fifteen more."""
    t = BudgetTerms(daily_budget_micros=15_710, total_budget_micros=10**9, timezone="UTC",
                    unit_ceiling_micros=1_571, unit_floor_micros=100)
    ceiling_only = BudgetTerms(daily_budget_micros=15_710, total_budget_micros=10**9, timezone="UTC",
                               unit_ceiling_micros=1_571)

    def drain(terms_: BudgetTerms) -> tuple[int, bool]:
        state, total, exhausted = None, 0, False
        for _ in range(100):
            d = decide_grant(state, terms_, 1_000, now_s=NOW)
            state, total, exhausted = d.state, total + d.granted, d.exhausted
            if exhausted:
                break
        return total, exhausted

    assert drain(t) == (15_710, True)
    assert drain(ceiling_only) == (15_000, True)  # the ceiling rule left the last 710 micros ungranted
