"""The creative-optimization benchmark measures what it says: on a short stream the learner already beats
showing variants at random and the creative as written, and stays under the oracle."""

from __future__ import annotations

from adserver.bench_variants import run_once


def test_a_short_run_orders_the_policies() -> None:
    r = run_once(seed=1, n=30_000, say=lambda _: None)
    assert r["ctr_ours"] > 1.1 * r["ctr_random"], r
    assert r["ctr_ours"] > 1.05 * r["ctr_as_written"], r
    assert r["ctr_ours"] < r["ctr_oracle"], r
