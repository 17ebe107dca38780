"""The edge's budget accounting between requests: allowance targets and "spent out" follow the price paid."""

from __future__ import annotations

import dataclasses
import math

from edge.accounting import MIN_UNITS, Accounting
from edge.budget import BudgetLedger
from edge.pacing import AsapState
from edge.spend import SpendView
from replication.calendar import utc_day
from replication.snapshot import build_snapshot

NOW = 1_800_000_000.0
CEILING = 1_571  # a CPM bid of 1,571,000 micros: at most 1,571 micros an impression


def accounting() -> Accounting:
    return Accounting(BudgetLedger(worker_id="w"), SpendView("w"))


def test_the_target_floor_is_a_few_units_at_the_price_paid_not_at_the_bid(make_campaign):
    """Five units at the campaign's recent billed price, at least one unit at its bid's ceiling (found by a
    review: below that, a campaign whose price rose was refused every ad and never asked for more)."""
    snapshot = build_snapshot([make_campaign("c1", max_bid_micros=CEILING * 1000, daily_budget_micros=10**9)],
                              version=1, created_ms=0, reserve_cpm_micros=100_000)
    acc = accounting()
    assert acc.grant_targets(snapshot) == {"c1": MIN_UNITS * CEILING}  # nothing billed yet: the ceiling
    acc.ledger.grant("c1", 10**6, exhausted=False, day=utc_day(NOW))
    for _ in range(30):  # it wins at the reserve: 100 micros an impression
        assert acc.ledger.settle("c1", 100)
    assert acc.grant_targets(snapshot) == {"c1": CEILING}  # 5 x 100 is less than one ad at the bid: a ceiling
    for _ in range(60):  # it pays 400 now: five of those (the average has all but caught up)
        acc.ledger.settle("c1", 400)
    assert MIN_UNITS * 390 < acc.grant_targets(snapshot)["c1"] <= MIN_UNITS * 400
    # Never above the ceiling, whatever an event claimed to cost (a price is capped at the bid).
    for _ in range(100):
        acc.ledger.settle("c1", 50_000)
    assert acc.grant_targets(snapshot) == {"c1": MIN_UNITS * CEILING}


def test_a_campaign_is_spent_out_within_one_unit_at_the_price_it_pays(make_campaign):
    """1,000 micros left of the day: less than one unit at the bid's ceiling, forty at the 25 it pays."""
    campaign = dataclasses.replace(make_campaign("c1", max_bid_micros=CEILING * 1000, daily_budget_micros=10_000),
                                   pacing="asap")
    snapshot = build_snapshot([campaign], version=1, created_ms=0, reserve_cpm_micros=25_000)

    def throttle_after(costs: list[int]) -> float:
        acc = accounting()
        acc.ledger.grant("c1", 10_000, exhausted=False, day=utc_day(NOW))
        for cost in costs:
            assert acc.ledger.settle("c1", cost)
        acc.tick(snapshot, NOW, pace=True)
        return acc.spend.throttle.get("c1", 1.0)

    assert throttle_after([25] * 360) == 1.0  # 9,000 spent at 25 an impression: still serving
    assert throttle_after([CEILING] * 5 + [1_145]) == 0.0  # 9,000 spent at the ceiling: done


def test_the_day_roll_drops_yesterdays_slices_at_each_campaigns_own_midnight(make_campaign):
    """The roll walks the campaigns only when a timezone's day turns (or the snapshot or the ledger's
    campaigns change): it must still catch every midnight, per timezone, and campaigns granted since."""
    campaigns = [make_campaign("c-tokyo", timezone="Asia/Tokyo"), make_campaign("c-utc"), make_campaign("c-late")]
    snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000)
    acc = accounting()
    midnight_utc = 1_800_057_600.0  # 2027-01-16 00:00 UTC, 09:00 in Tokyo
    before = midnight_utc - 60
    acc.ledger.grant("c-utc", 1_000, exhausted=False, day="2027-01-15")
    acc.ledger.grant("c-tokyo", 1_000, exhausted=False, day="2027-01-16")  # already the 16th there
    assert not acc.tick(snapshot, before, pace=False).new_day
    assert not acc.tick(snapshot, before + 30, pace=False).new_day  # nothing turned: no walk, nothing dropped
    assert acc.ledger.available("c-utc") == 1_000
    outcome = acc.tick(snapshot, midnight_utc + 1, pace=False)
    assert outcome.new_day and acc.ledger.available("c-utc") == 0
    assert acc.ledger.available("c-tokyo") == 1_000  # its midnight was nine hours ago
    # A campaign granted yesterday's slice after the walk is caught on the next tick (the ledger grew).
    acc.ledger.grant("c-late", 500, exhausted=False, day="2027-01-15")
    assert acc.tick(snapshot, midnight_utc + 2, pace=False).new_day and acc.ledger.available("c-late") == 0


def _updated(spend: SpendView) -> int:
    return sum(1 for p in spend.paced.values() if p.at > -math.inf)


def test_pacing_takes_turns_so_no_tick_paces_more_than_its_share(make_campaign):
    """A pass over every campaign at once held up the requests behind it (14 ms at 1,000 campaigns): each tick
    paces a fifth of them, at most PACE_MAX_PER_TICK, round the snapshot, each campaign's time step its own."""
    from edge.accounting import PACE_MAX_PER_TICK, PACE_ROUND_TICKS

    small = build_snapshot([make_campaign(f"c{i:02d}") for i in range(12)], version=1, created_ms=0,
                           reserve_cpm_micros=100_000)
    acc = accounting()
    seen = []
    for tick in range(PACE_ROUND_TICKS):
        acc.tick(small, NOW + tick * 0.1, pace=True)
        seen.append(_updated(acc.spend))
    assert seen == [3, 6, 9, 12, 12]  # ceil(12 / 5) a tick: a round in four ticks here, then the next one
    acc.tick(small, NOW + 0.5, pace=True)
    # Each campaign was last paced on its own turn: c00-c02 at 0.4 s (their step was 0.4 s), c03-c05 just now.
    assert [round(acc.spend.paced[f"c{i:02d}"].at - NOW, 1) for i in range(12)] == [
        0.4, 0.4, 0.4, 0.5, 0.5, 0.5, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3]

    big = build_snapshot([make_campaign(f"b{i:04d}") for i in range(PACE_MAX_PER_TICK * PACE_ROUND_TICKS + 10)],
                         version=2, created_ms=0, reserve_cpm_micros=100_000)
    acc = accounting()
    acc.tick(big, NOW, pace=True)
    assert _updated(acc.spend) == PACE_MAX_PER_TICK


class _Recorder:
    """A controller that keeps the time step of every update it is given, per campaign (by daily budget)."""

    def __init__(self, steps: dict[float, list[float]]) -> None:
        self.steps = steps

    def start(self) -> AsapState:
        return AsapState(p=0.5)

    def update(self, state: AsapState, *, dt_s: float, daily_budget: float, **_: object) -> AsapState:
        self.steps.setdefault(daily_budget, []).append(round(dt_s, 3))
        return AsapState(p=0.75)


def test_each_controller_gets_the_time_since_its_own_last_turn_and_zero_first(make_campaign, monkeypatch):
    """The first update's step is 0 (today's spend so far is not a burst), then the time since that
    campaign's previous turn, however the turns fall; and a campaign not yet reached already has its
    controller's starting throttle instead of none."""
    import edge.spend as spend_module

    steps: dict[float, list[float]] = {}
    monkeypatch.setattr(spend_module, "controller_for", lambda mode: _Recorder(steps))
    snapshot = build_snapshot([make_campaign(f"c{i}", daily_budget_micros=1_000 * (i + 1)) for i in range(5)],
                              version=1, created_ms=0, reserve_cpm_micros=100_000)
    spend = SpendView("w")
    spend.pace(snapshot, NOW, limit=2)  # c0, c1
    assert spend.throttle == {"c0": 0.75, "c1": 0.75, "c2": 0.5, "c3": 0.5, "c4": 0.5}
    spend.pace(snapshot, NOW + 0.3, limit=2)  # c2, c3
    spend.pace(snapshot, NOW + 0.7, limit=2)  # c4, c0
    spend.pace(snapshot, NOW + 1.0, limit=2)  # c1, c2
    assert steps == {1_000.0: [0.0, 0.7], 2_000.0: [0.0, 1.0], 3_000.0: [0.0, 0.7], 4_000.0: [0.0],
                     5_000.0: [0.0]}


def test_the_turn_stays_on_its_campaign_when_a_new_snapshot_shifts_the_list(make_campaign):
    """Campaigns are sorted by id: dropping some ahead of the turn must not skip others for a round, and
    adding some behind it must not pace the same ones twice."""
    campaigns = [make_campaign(f"c{i:02d}") for i in range(10)]
    spend = SpendView("w")
    first = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000)
    spend.pace(first, NOW, limit=6)  # c00-c05; the turn is now on c06
    shifted = build_snapshot([make_campaign("a0"), make_campaign("a1"), *campaigns[3:]], version=2, created_ms=0,
                             reserve_cpm_micros=100_000)  # c00-c02 gone, a0 and a1 before everyone
    spend.pace(shifted, NOW + 0.1, limit=4)
    assert sorted(cid for cid, p in spend.paced.items() if p.at == NOW + 0.1) == ["c06", "c07", "c08", "c09"]
    spend.pace(shifted, NOW + 0.2, limit=4)  # round over: a0, a1 and then c03, c04 (the list starts again)
    assert sorted(cid for cid, p in spend.paced.items() if p.at == NOW + 0.2) == ["a0", "a1", "c03", "c04"]
    assert "c00" not in spend.paced  # the round ended: the dropped campaigns are forgotten


def test_a_round_forgets_campaigns_the_snapshot_dropped(make_campaign):
    campaigns = [make_campaign(f"c{i}") for i in range(4)]
    spend = SpendView("w")
    spend.pace(build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000), NOW)
    spend.throttle["c3"] = 0.5  # as if c3 had been throttled
    smaller = build_snapshot(campaigns[:2], version=2, created_ms=0, reserve_cpm_micros=100_000)
    spend.pace(smaller, NOW + 1, limit=1)  # c0: the round is not over, nothing is forgotten yet
    assert set(spend.paced) == {"c0", "c1", "c2", "c3"}
    spend.pace(smaller, NOW + 2, limit=1)  # c1 ends the round
    assert set(spend.paced) == {"c0", "c1"} and "c3" not in spend.throttle
