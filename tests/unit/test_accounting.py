"""The edge's budget accounting between requests: allowance targets and "spent out" follow the price paid."""

from __future__ import annotations

import dataclasses
import math
import random

import edge.accounting as accounting_module
from edge.accounting import MIN_UNITS, Accounting
from edge.budget import BudgetLedger
from edge.pacing import AsapState
from edge.spend import SpendView
from replication.calendar import utc_day
from replication.snapshot import Snapshot, build_snapshot

NOW = 1_800_000_000.0
CEILING = 1_571  # a CPM bid of 1,571,000 micros: at most 1,571 micros an impression
# 2027-01-16 00:00 UTC: 09:00 in Tokyo, 19:00 on the 15th in New York; the 16th begins everywhere at 12:00 UTC
MIDNIGHT_UTC = 1_800_057_600.0


def accounting() -> Accounting:
    return Accounting(BudgetLedger(worker_id="w"), SpendView("w"))


def _granted(campaigns: list, micros: int) -> tuple[Snapshot, Accounting]:
    """The campaigns' snapshot, and an accounting whose ledger holds ``micros`` of 2027-01-15 for each."""
    acc = accounting()
    for c in campaigns:
        acc.ledger.grant(c.campaign_id, micros, exhausted=False, day="2027-01-15")
    return build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000), acc


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
    before = MIDNIGHT_UTC - 60
    acc.ledger.grant("c-utc", 1_000, exhausted=False, day="2027-01-15")
    acc.ledger.grant("c-tokyo", 1_000, exhausted=False, day="2027-01-16")  # already the 16th there
    assert not acc.tick(snapshot, before, pace=False).new_day
    assert not acc.tick(snapshot, before + 30, pace=False).new_day  # nothing turned: no walk, nothing dropped
    assert acc.ledger.available("c-utc") == 1_000
    outcome = acc.tick(snapshot, MIDNIGHT_UTC + 1, pace=False)
    assert outcome.new_day and acc.ledger.available("c-utc") == 0
    assert acc.ledger.available("c-tokyo") == 1_000  # its midnight was nine hours ago
    # A campaign granted yesterday's slice after the walk is caught on the next tick (the ledger grew).
    acc.ledger.grant("c-late", 500, exhausted=False, day="2027-01-15")
    assert acc.tick(snapshot, MIDNIGHT_UTC + 2, pace=False).new_day and acc.ledger.available("c-late") == 0


def test_a_new_snapshot_rolls_only_the_campaigns_that_moved(make_campaign, monkeypatch):
    """A new snapshot no longer walks every campaign's day, only those that moved (the edge resets a campaign
    of a new revision): one that moved to a zone already past midnight drops yesterday's slice, and a
    snapshot that changed nothing asks about no campaign's day (a new zone in it still walks them all)."""
    before = build_snapshot([make_campaign("c-a", timezone="America/New_York"), make_campaign("c-b"),
                             make_campaign("c-c", timezone="America/New_York")],
                            version=1, created_ms=0, reserve_cpm_micros=100_000)
    acc = accounting()
    for cid in ("c-a", "c-b", "c-c"):
        acc.ledger.grant(cid, 1_000, exhausted=False, day="2027-01-15")
    acc.tick(before, MIDNIGHT_UTC - 3_600, pace=False)  # 23:00 UTC, 18:00 in New York: nothing turns
    acc.tick(before, MIDNIGHT_UTC + 60, pace=False)  # UTC's day turned: every campaign is rolled
    assert [acc.ledger.available(c) for c in ("c-a", "c-b", "c-c")] == [1_000, 0, 1_000]
    acc.tick(before, MIDNIGHT_UTC + 90, pace=False)  # a quiet tick: what the roll itself moved is behind us
    asked: list[str] = []
    real_new_day = BudgetLedger.new_day
    monkeypatch.setattr(BudgetLedger, "new_day",
                        lambda self, cid, day: asked.append(cid) or real_new_day(self, cid, day))
    same = build_snapshot(list(before.campaigns), version=2, created_ms=0, reserve_cpm_micros=100_000)
    assert not acc.tick(same, MIDNIGHT_UTC + 120, pace=False).new_day
    assert asked == []  # nothing moved, nothing changed: no campaign's day looked at
    moved = build_snapshot([dataclasses.replace(before.campaigns[0], timezone="UTC", revision=2),
                            *before.campaigns[1:]], version=3, created_ms=0, reserve_cpm_micros=100_000)
    acc.ledger.reset("c-a")  # what Accounting.swapped does for a campaign of a new revision
    assert acc.tick(moved, MIDNIGHT_UTC + 180, pace=False).new_day
    assert asked == ["c-a"] and acc.ledger.available("c-a") == 0  # the 16th in UTC: yesterday's slice gone
    assert acc.ledger.available("c-c") == 1_000


def test_a_zones_midnight_rolls_that_zones_campaigns_only(make_campaign, monkeypatch):
    """When a timezone's day turns, the roll asks about that zone's campaigns (and any that moved), not every
    campaign: at 100,000 campaigns each zone's midnight walked all of them, about 100 ms of the event loop
    (one-off profile), once per zone in the inventory."""
    zones = {"UTC": "u", "Asia/Tokyo": "t", "America/New_York": "n"}
    campaigns = [make_campaign(f"c-{tag}{i}", timezone=tz) for tz, tag in zones.items() for i in range(3)]
    snapshot, acc = _granted(campaigns, 1_000)
    acc.tick(snapshot, MIDNIGHT_UTC - 60, pace=False)  # the first roll: every zone's campaigns
    asked: list[str] = []
    real_new_day = BudgetLedger.new_day
    monkeypatch.setattr(BudgetLedger, "new_day",
                        lambda self, cid, day: asked.append(cid) or real_new_day(self, cid, day))
    acc.tick(snapshot, MIDNIGHT_UTC - 30, pace=False)
    assert asked == []
    assert acc.tick(snapshot, MIDNIGHT_UTC + 1, pace=False).new_day
    assert sorted(asked) == ["c-u0", "c-u1", "c-u2"]
    # Tokyo was on the 16th already at the first roll; New York is still on the 15th.
    assert [acc.ledger.available(c.campaign_id) for c in campaigns] == [0] * 6 + [1_000] * 3
    acc.tick(snapshot, MIDNIGHT_UTC + 60, pace=False)  # a quiet tick: what the roll itself moved is behind us
    asked.clear()
    acc.ledger.grant("c-t0", 5, exhausted=False, day="2027-01-16")  # it moved: asked about too
    acc.tick(snapshot, MIDNIGHT_UTC + 5 * 3600 + 1, pace=False)  # midnight in New York
    assert sorted(asked) == ["c-n0", "c-n1", "c-n2", "c-t0"]


def test_a_campaign_back_from_a_pause_over_its_midnight_drops_yesterdays_slice(make_campaign):
    """Found by a review of the first version (which looked at zones only): a campaign out of the snapshot
    over its midnight missed the walk, and back the next morning kept spending yesterday's slice."""
    x, y = make_campaign("c-x"), make_campaign("c-y")
    both, acc = _granted([x, y], 1_000)
    acc.tick(both, MIDNIGHT_UTC - 60, pace=False)
    paused = build_snapshot([y], version=2, created_ms=0, reserve_cpm_micros=100_000)
    acc.tick(paused, MIDNIGHT_UTC - 30, pace=False)
    acc.tick(paused, MIDNIGHT_UTC + 60, pace=False)  # the day turns while c-x is away
    assert acc.ledger.available("c-y") == 0 and acc.ledger.available("c-x") == 1_000
    acc.tick(paused, MIDNIGHT_UTC + 3_600, pace=False)
    back = build_snapshot([x, y], version=3, created_ms=0, reserve_cpm_micros=100_000)
    acc.ledger.reset("c-x")  # Accounting.swapped: new to the snapshot
    assert acc.tick(back, MIDNIGHT_UTC + 3_660, pace=False).new_day
    assert acc.ledger.available("c-x") == 0


def test_a_campaign_first_asked_for_after_midnight_rolls_a_late_grant_for_yesterday(make_campaign):
    """Found by a review: a campaign the grant check takes on (no day yet) and then granted yesterday's
    slice by an allocator whose clock is behind drops that slice at the next roll."""
    old = build_snapshot([make_campaign("c-old")], version=1, created_ms=0, reserve_cpm_micros=100_000)
    acc = accounting()
    acc.tick(old, MIDNIGHT_UTC + 10, pace=False)
    new = build_snapshot([make_campaign("c-old"), make_campaign("c-new")], version=2, created_ms=0,
                         reserve_cpm_micros=100_000)
    assert "c-new" in acc.grant_request(new, MIDNIGHT_UTC + 20, retry_s=0.25).asks  # taken on, no day yet
    acc.tick(new, MIDNIGHT_UTC + 21, pace=False)
    acc.ledger.grant("c-new", 1_000, exhausted=False, day="2027-01-15")  # the allocator still on the 15th
    acc.tick(new, MIDNIGHT_UTC + 22, pace=False)
    assert acc.ledger.available("c-new") == 0 and acc.ledger.campaigns["c-new"].day == "2027-01-16"


def test_the_books_of_a_dropped_campaign_are_forgotten_once_its_day_is_over_everywhere(make_campaign):
    """A campaign the snapshot dropped (deleted, ended, paused) keeps its books while its day may still be on
    somewhere (paused and resumed that day, it spends what it holds); once the day is over in every
    timezone (UTC-12's midnight) the ledger and the spend rates forget it, and back in a later snapshot it
    is taken on afresh. One whose figure moved since the last unused report (a late billable event) waits
    until that report has gone out: the allocator keeps the last figure it heard, and a reclaim would hand
    it back. Before, the edge kept the books of every campaign it ever served."""
    keep, drop, late = make_campaign("c-keep"), make_campaign("c-drop"), make_campaign("c-late")
    every, acc = _granted([keep, drop, late], 10_000)
    acc.tick(every, MIDNIGHT_UTC - 180, pace=False)
    for c in (keep, drop, late):
        assert acc.ledger.settle(c.campaign_id, 100)
    acc.tick(every, MIDNIGHT_UTC - 120, pace=False)
    assert acc.rates["c-drop"] > 0 and "c-drop" in acc.ledger.unit_prices
    kept = build_snapshot([keep], version=2, created_ms=0, reserve_cpm_micros=100_000)
    acc.swapped(kept, every, changed=(), removed=("c-drop", "c-late"))
    for at in (MIDNIGHT_UTC - 60, MIDNIGHT_UTC + 60, MIDNIGHT_UTC + 11 * 3600):  # the 15th still on somewhere
        acc.tick(kept, at, pace=False)
        assert acc.ledger.available("c-drop") == 9_900 and "c-drop" in acc.rates
    acc.unused_report()
    assert acc.ledger.settle("c-late", 100)  # a late billable event, just before the 15th ends everywhere
    acc.tick(kept, MIDNIGHT_UTC + 12 * 3600 + 1, pace=False)  # only the earliest day turned
    assert "c-drop" not in acc.ledger.campaigns and "c-drop" not in acc.ledger.available_by_campaign
    assert "c-drop" not in acc.ledger.unit_prices and "c-drop" not in acc.rates
    assert "c-keep" in acc.ledger.campaigns and "c-keep" in acc.rates  # still in the snapshot
    assert acc.unused_report()["c-late"] == (9_800, "2027-01-15")  # still there, and now reported
    acc.tick(kept, MIDNIGHT_UTC + 24 * 3600 + 1, pace=False)  # UTC's midnight: what still held something, again
    assert "c-late" not in acc.ledger.campaigns
    back = build_snapshot([keep, drop], version=3, created_ms=0, reserve_cpm_micros=100_000)
    acc.swapped(back, kept, changed=("c-drop",), removed=())
    assert "c-drop" in acc.grant_request(back, MIDNIGHT_UTC + 24 * 3600 + 2, retry_s=0.25).asks


def test_a_tick_forgets_at_most_its_share_of_dropped_campaigns(make_campaign, monkeypatch):
    """Dropped campaigns are forgotten a slice per tick (``FORGET_PER_TICK``), so a day with thousands of them
    does not hold one tick up; one back in the snapshot before its turn keeps its books."""
    over = MIDNIGHT_UTC + 12 * 3600  # the 15th is over everywhere

    def after_drop(share: int) -> tuple[Accounting, list, Snapshot, list[int]]:
        monkeypatch.setattr(accounting_module, "FORGET_PER_TICK", share)
        campaigns = [make_campaign(f"c{i}") for i in range(6)]
        everyone, acc = _granted(campaigns, 1_000)
        acc.tick(everyone, MIDNIGHT_UTC - 60, pace=False)
        acc.unused_report()  # the grant loop's: the allocator has heard every figure
        only_c0 = build_snapshot(campaigns[:1], version=2, created_ms=0, reserve_cpm_micros=100_000)
        acc.tick(only_c0, over + 1, pace=False)
        return acc, campaigns, only_c0, [len(acc.ledger.campaigns)]

    acc, campaigns, only_c0, sizes = after_drop(2)
    for k in range(3):
        acc.tick(only_c0, over + 2 + k, pace=False)
        sizes.append(len(acc.ledger.campaigns))
    assert sizes == [4, 2, 1, 1] and set(acc.ledger.campaigns) == {"c0"}

    acc, campaigns, _, sizes = after_drop(1)
    left = set(acc.ledger.campaigns)
    back = build_snapshot(campaigns, version=3, created_ms=0, reserve_cpm_micros=100_000)
    for k in range(5):
        acc.tick(back, over + 2 + k, pace=False)
    assert sizes == [5] and set(acc.ledger.campaigns) == left  # all back: no more forgotten

    # Two that still held something at the turn wait for the next zone's midnight; the one back in the
    # snapshot by then keeps its books and is not looked at again.
    campaigns = [make_campaign(f"c{i}") for i in range(3)]
    everyone, acc = _granted(campaigns, 1_000)
    acc.tick(everyone, MIDNIGHT_UTC - 60, pace=False)
    only_c0 = build_snapshot(campaigns[:1], version=2, created_ms=0, reserve_cpm_micros=100_000)
    acc.tick(only_c0, over - 60, pace=False)
    for cid in ("c1", "c2"):
        assert acc.ledger.reserve(cid, 10, now_s=over - 30) is not None  # in flight over the turn
    acc.unused_report()
    acc.tick(only_c0, over + 1, pace=False)
    assert {"c1", "c2"} <= set(acc.ledger.campaigns)
    c0_c1 = build_snapshot(campaigns[:2], version=3, created_ms=0, reserve_cpm_micros=100_000)
    acc.swapped(c0_c1, only_c0, changed=("c1",), removed=())
    acc.tick(c0_c1, over + 300, pace=False)  # the holds expire: their allowance moves, to be reported
    acc.unused_report()
    acc.tick(c0_c1, over + 12 * 3600 + 1, pace=False)  # UTC's midnight
    assert set(acc.ledger.campaigns) == {"c0", "c1"} and not acc._retry


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


def _many(make_campaign, n: int, **kw: object):
    return build_snapshot([make_campaign(f"c{i:02d}", daily_budget_micros=10**9, **kw) for i in range(n)],
                          version=1, created_ms=0, reserve_cpm_micros=100_000)


def _drive(seed: int, snapshots, accountings: list[Accounting], checks: int, *, force_full: bool) -> list:
    """The same random traffic into each accounting: reservations, some billed and some given back, the
    answers to its own asks (part of what was asked, never "exhausted"), ticks and grant checks; with a list
    of snapshots, each in turn for an equal share of the checks, arriving as at an edge (a campaign new or
    of a new revision is reset). Returns what each grant check asked, per accounting; ``force_full``: the
    last one sizes every campaign each time."""
    snapshots = snapshots if isinstance(snapshots, list) else [snapshots]
    rng = random.Random(seed)
    ids = [c.campaign_id for c in snapshots[-1].campaigns]
    day = utc_day(NOW)
    asked: list[list[dict[str, int]]] = [[] for _ in accountings]
    plan = [([(rng.choice(ids), rng.choice((200, 1_571, 3_000))) for _ in range(rng.randrange(4))],
             rng.random(), rng.random()) for _ in range(checks)]
    for k, acc in enumerate(accountings):
        holds: list = []
        snapshot = None
        for step, (wanted, bill, fraction) in enumerate(plan):
            now = NOW + step * 0.1
            arriving = snapshots[step * len(snapshots) // checks]
            if arriving is not snapshot:
                acc.swapped(arriving, snapshot, arriving.changed_since(snapshot),  # as EdgeState.swap_in does
                            arriving.removed_since(snapshot))
                snapshot = arriving
            serving = {c.campaign_id for c in snapshot.campaigns}
            wanted = [(cid, micros) for cid, micros in wanted if cid in serving]
            for (cid, _), hold in zip(wanted, acc.ledger.reserve_many(wanted, now_s=now), strict=True):
                if hold is not None:
                    holds.append((cid, hold))
            if holds and bill < 0.5:
                cid, hold = holds.pop(0)
                acc.ledger.settle(cid, hold[2] // 2, hold)
            elif holds and bill < 0.7:
                cid, hold = holds.pop(0)
                acc.ledger.release(cid, hold)
            acc.tick(snapshot, now, pace=False)
            ask = acc.grant_request(snapshot, now, retry_s=0.25,
                                    every_campaign=force_full and k == len(accountings) - 1)
            asked[k].append(ask.asks)
            if fraction < 0.8:  # the answer to the odd ask is lost: the retry must come on time
                for cid, micros in ask.asks.items():
                    acc.ledger.grant(cid, int(micros * (0.3 + fraction)), exhausted=False, day=day)
    return asked


def test_the_grant_check_asks_what_a_walk_over_every_campaign_asks(make_campaign):
    """It sizes only the campaigns that moved, those due for a retry and a slice of the rest; every ask
    (which campaign, how much, and when, retries of lost answers included) is the one a check over every
    campaign makes."""
    snapshot = _many(make_campaign, 40, max_bid_micros=CEILING * 1000)
    for seed in range(5):
        incremental, walk = _drive(seed, snapshot, [accounting(), accounting()], 120, force_full=True)
        assert incremental == walk
        assert sum(map(len, walk)) > 40  # the traffic made it ask again and again, not only at the start


def test_a_new_snapshot_is_sized_as_a_walk_over_every_campaign_would(make_campaign):
    """A new snapshot is not a walk over every campaign any more (194 ms at 100,000): the campaigns it
    brings and those of a new revision (a raised budget) are sized at once, the rest as before."""
    first = _many(make_campaign, 20, max_bid_micros=CEILING * 1000)
    edited = [dataclasses.replace(c, revision=2, daily_budget_micros=10**10) if c.campaign_id == "c05" else c
              for c in first.campaigns]
    more = [make_campaign(f"n{i:02d}", daily_budget_micros=10**9, max_bid_micros=CEILING * 3000) for i in range(10)]
    second = build_snapshot([*edited, *more], version=2, created_ms=0, reserve_cpm_micros=100_000)
    third = build_snapshot([*edited[5:], *more], version=3, created_ms=0, reserve_cpm_micros=100_000)
    for seed in range(5):
        incremental, walk = _drive(seed, [first, second, third], [accounting(), accounting()], 150, force_full=True)
        assert incremental == walk
        assert set(walk[50]) >= {f"n{i:02d}" for i in range(10)}  # the new campaigns ask on arrival


def test_a_campaign_that_stopped_spending_is_still_offered_back_within_a_round(make_campaign):
    """An exhausted campaign nobody serves any more: its target decays with its rate and, once it holds
    more than twice that, the excess goes back, found by the round-robin slice within GRANT_ROUND_CHECKS
    checks of when a walk over every campaign would find it, though the ledger never saw it move."""
    from edge.accounting import GRANT_ROUND_CHECKS

    snapshot = _many(make_campaign, 40, max_bid_micros=CEILING * 1000)
    found = []
    for full in (False, True):
        acc = accounting()
        day = utc_day(NOW)
        for cid in ("c00", "c17"):
            acc.ledger.grant(cid, 10**6, exhausted=False, day=day)
        for step in range(50):  # c17 spends 100,000 micros a second for five seconds: a high target
            acc.ledger.reserve_many([("c17", 10_000)], now_s=NOW + step * 0.1)
            acc.tick(snapshot, NOW + step * 0.1, pace=False)
        acc.ledger.mark_exhausted(["c17"])
        when = None
        for step in range(50, 5_000):
            now = NOW + step * 0.1
            acc.tick(snapshot, now, pace=False)
            if acc.grant_request(snapshot, now, retry_s=0.25, every_campaign=full).give_back:
                when = step
                break
        found.append(when)
    incremental, walk = found
    assert walk is not None and walk > 100  # it took the decay a while
    assert walk <= incremental < walk + GRANT_ROUND_CHECKS


def test_an_exhausted_campaign_is_asked_for_again_after_twenty_retries_untouched(make_campaign):
    snapshot = _many(make_campaign, 3)
    acc = accounting()
    first = acc.grant_request(snapshot, NOW, retry_s=0.25).asks
    assert set(first) == {"c00", "c01", "c02"}  # nothing held yet: all three ask
    acc.ledger.grant("c00", first["c00"], exhausted=False, day=utc_day(NOW))
    acc.ledger.grant("c01", first["c01"], exhausted=False, day=utc_day(NOW))
    acc.ledger.mark_exhausted(["c02"])  # nothing left for c02 anywhere
    times = [round(step * 0.1, 1) for step in range(1, 60)
             if "c02" in acc.grant_request(snapshot, NOW + step * 0.1, retry_s=0.25).asks]
    assert times == [5.0]  # 20 x 0.25 s after the first ask, then not again within the run


def test_an_idle_campaigns_rate_decays_as_the_walk_over_every_campaign_did(make_campaign):
    """Idle rates decay lazily (e**-dt/T) where every tick used to multiply them by 1 - dt/T."""
    acc = accounting()
    acc.ledger.grant("c1", 10**9, exhausted=False, day=utc_day(NOW))
    acc.tick(None, NOW, pace=False)
    acc.ledger.reserve_many([("c1", 60_000)], now_s=NOW)
    acc.tick(None, NOW + 1, pace=False)  # 60,000 micros in a second: half of it at once (up fast)
    assert acc.rate("c1") == 30_000
    for step in range(1, 601):  # a minute idle, ten ticks a second
        acc.tick(None, NOW + 1 + step * 0.1, pace=False)
    walked = 30_000 * (1 - 0.1 / 60) ** 600  # about 30,000 / e
    assert abs(acc.rate("c1") - walked) / walked < 1e-3


def test_the_unused_report_carries_what_changed_and_sums_to_the_whole(make_campaign):
    """The allocator keeps the last figure per campaign: folding every report into one view must give what
    the ledger would report whole, each time, across a closed account; and a report is as small as the
    change (a busy minute of one campaign does not report the others)."""
    from edge.accounting import FULL_REPORT_EVERY

    acc = accounting()
    rng = random.Random(7)
    day = utc_day(NOW)
    ids = [f"c{i:02d}" for i in range(30)]
    view: dict[str, tuple[int, str]] = {}
    sizes: list[int] = []
    account = acc.ledger.account
    for step in range(400):
        now = NOW + step * 0.1
        cid = rng.choice(ids)
        roll = rng.random()
        if roll < 0.4:
            acc.ledger.grant(cid, rng.randrange(1, 5_000), exhausted=False, day=day)
        elif roll < 0.8:
            acc.ledger.reserve_many([(cid, rng.randrange(1, 2_000))], now_s=now)
        elif roll < 0.95:
            acc.ledger.settle(cid, rng.randrange(0, 2_000))
        if step == 200:
            acc.ledger.lapse(now, force=True)
            acc.ledger.renew(math.inf)
        acc.tick(None, now, pace=False)
        report = acc.unused_report()
        if acc.ledger.account != account:
            account, view = acc.ledger.account, {}  # a new account: the allocator knows nothing of it yet
        view.update(report)
        assert view == acc.ledger.unused()
        sizes.append(len(report))
    assert account != "w.0"  # the account did close on the way
    # One campaign moves a step: a report names at most that one, but for the whole ones (the first of
    # each account, then every FULL_REPORT_EVERY reports).
    assert sum(1 for n in sizes if n > 1) <= 2 + 400 // FULL_REPORT_EVERY
    assert sum(1 for n in sizes if n == 0) > 50  # a step whose move changed nothing reports nothing
