"""The creative-optimization benchmark measures what it says: on a short stream the oracle bounds every policy,
and the learner already beats showing variants at random."""

from __future__ import annotations

from adserver.bench_variants import run_once


def test_a_short_run_orders_the_policies() -> None:
    r = run_once(seed=1, n=30_000, say=lambda _: None)
    assert r["ctr_oracle"] >= max(r["ctr_ours"], r["ctr_pooled"], r["ctr_random"], r["ctr_as_written"])
    assert r["ctr_ours"] > 1.1 * r["ctr_random"], r
