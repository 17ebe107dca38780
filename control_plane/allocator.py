"""Budget allocator arithmetic: how much of a campaign's budget one edge process may spend next. Pure.

The allocator hands out slices of what is left of the daily and the total budget and records what it has
granted. It never grants past either budget, so the sum of everything every edge can spend is bounded by
the budget no matter how many edges ask or how long a region is cut off. Slices shrink near the end of the
budget so the last micros are spread across the askers instead of stranded in one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from replication.calendar import local_day


@dataclass(frozen=True, slots=True)
class GrantState:
    day: str  # the campaign's local date the daily counter belongs to
    granted_day: int
    granted_total: int


@dataclass(frozen=True, slots=True)
class BudgetTerms:
    daily_budget_micros: int
    total_budget_micros: int
    timezone: str
    unit_ceiling_micros: int  # the most one billable unit can cost: a slice is never smaller (unless all that is left)
    # The least one billable unit can cost (replication.snapshot.unit_cost_floor; 0: the ceiling): the budget is
    # spent out only when less than this is left. A campaign paying the reserve buys impressions for a fraction
    # of its ceiling, so treating the last ceiling's worth as useless stranded up to a tenth of a small budget.
    unit_floor_micros: int = 0


@dataclass(frozen=True, slots=True)
class GrantDecision:
    state: GrantState
    granted: int
    exhausted: bool


def decide_grant(
    state: GrantState | None,
    terms: BudgetTerms,
    want: int,
    *,
    now_s: float,
    max_slice_fraction: float = 0.05,
) -> GrantDecision:
    day = local_day(now_s, terms.timezone)
    if state is None:
        state = GrantState(day=day, granted_day=0, granted_total=0)
    elif day > state.day:  # ISO dates order as strings
        state = GrantState(day=day, granted_day=0, granted_total=state.granted_total)
    else:
        # A clock stepping back (or a replica a little behind at midnight) keeps the day already opened: it
        # must neither relabel it as yesterday nor, stepping forward again, open it a second time.
        day = state.day
    remaining = min(
        terms.daily_budget_micros - state.granted_day, terms.total_budget_micros - state.granted_total
    )
    unit = max(1, terms.unit_ceiling_micros)
    least = min(unit, max(1, terms.unit_floor_micros or unit))
    if remaining < least:
        return GrantDecision(state=state, granted=0, exhausted=True)
    slice_cap = max(unit, int(terms.daily_budget_micros * max_slice_fraction))
    # Near the end, hand out a quarter of what is left at a time (never less than one unit).
    grant = min(max(0, want), slice_cap, max(unit, remaining // 4), remaining)
    if grant <= 0:
        return GrantDecision(state=state, granted=0, exhausted=False)
    new_state = GrantState(
        day=day, granted_day=state.granted_day + grant, granted_total=state.granted_total + grant
    )
    left = min(terms.daily_budget_micros - new_state.granted_day,
               terms.total_budget_micros - new_state.granted_total)
    return GrantDecision(state=new_state, granted=grant, exhausted=left < least)


def credit_grant(state: GrantState, day: str, micros: int) -> GrantState | None:
    """Give ``micros`` of ``day`` back (returned or reclaimed allowance) so they can be granted again; None
    when there is nothing to do (another day's micros: yesterday's are not today's budget)."""
    if micros <= 0 or day != state.day:
        return None
    back = min(micros, state.granted_day)
    return GrantState(day=state.day, granted_day=state.granted_day - back,
                      granted_total=max(0, state.granted_total - back))
