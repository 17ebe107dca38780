"""The accounting benchmark drives the edge's real tick, grant check and unused report on a busy edge."""

from __future__ import annotations

from adserver.bench_accounting import RESERVATIONS, bench_accounting, measure


def test_a_busy_period_reports_what_moved_not_the_whole_inventory() -> None:
    run = measure(2_000, 10)
    # A new account's first report is whole: the 2,000 campaigns and the handler bench's own twenty.
    assert run["reported"]["first"] == 2_020
    # Reservations land on at most RESERVATIONS campaigns a period (half of them on a few hot ones).
    assert 20 < run["reported"]["median"] <= RESERVATIONS
    assert all(run[step]["p50_ms"] > 0 for step in ("tick", "grant_check", "grant_check_every_campaign"))


def test_the_report_names_every_step_per_size() -> None:
    r = bench_accounting(duration_s=0.1, rounds=1, say=lambda _: None, sizes=(1_000,))
    assert set(r["runs"]) == {"1k"}
    for step in ("tick", "tick_p99", "grant_check", "grant_check_every_campaign", "unused_report", "spend_sync",
                 "spend_sync_whole", "metrics_scrape"):
        assert r[f"accounting_{step}_ms_1k"] > 0
    assert 0 < r["accounting_core_share_1k"] < 1 and r["accounting_campaigns_reported_1k"] > 0
    for step in ("day_turn", "forget_turn", "forget_slice_p99"):
        assert r[f"accounting_{step}_ms_1k"] > 0
    assert r["accounting_forgotten_1k"] == 500  # every campaign dropped from the snapshot
