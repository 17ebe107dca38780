"""``adserver bench --only variants``: creative optimization against a hidden truth.

``loadtest.ground_truth.TrueVariantModel`` decides how likely a click is for each creative's combination of
headline, image and call to action, per device. Creatives with 4 headlines x 3 images x 2 calls to action (24
variants each) are shown to a stream of impressions, desktop and mobile 45% each, tablet 10%. Each policy picks
the variant to show; the learning ones see only clicks drawn from the truth, and, as in production, their arms
are refreshed in rounds (the control plane's trainer tallies, the next snapshot carries the counts):

- ``ours``: Thompson sampling per device class with the pooled prior (``replication.variants.pick``);
- ``pooled``: the same sampler with one arm set for all devices (what per-segment learning adds over it);
- ``as_written``: always the creative as the advertiser wrote it ("0.0.0"); ``random``: a uniform variant;
- ``oracle``: the best variant per creative and device, known from the truth: the ceiling.

Reported: the expected CTR of what each policy showed (the truth's probability, summed, so chance clicks do
not add noise), and ratios: ours / random, ours / as written, ours / pooled, and the share of the oracle's lift
over random that ours captures. Medians over ``rounds`` seeds. Also what one pick costs at the edge: with
the snapshot's cached posterior (``variant_pick_us``) and when it must build the variants and their posterior
(``variant_pick_uncached_us``, once per snapshot, creative and device).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.ground_truth import TrueVariantModel
from replication.snapshot import SnapshotCreative
from replication.variants import ALL_SEGMENTS, Arms, PickCache, Tally, key_parts, pick, variants

CREATIVES = 30
IMPRESSIONS = 300_000
REFRESH_EVERY = 5_000  # impressions between arm refreshes: the trainer's round, as traffic sees it
DEVICE_SHARES = (("desktop", 0.45), ("mobile", 0.45), ("tablet", 0.10))


def _creatives() -> list[SnapshotCreative]:
    return [SnapshotCreative(f"k{n}", "300x250", "h0", "https://img/0", "https://l", "c0", 0.01,
                             alternatives=(("h1", "h2", "h3"), ("https://img/1", "https://img/2"), ("c1",)))
            for n in range(CREATIVES)]


def _pick_us(creative: SnapshotCreative, arms: Arms, *, cached: bool, n: int = 2_000) -> float:
    """Microseconds per ``pick`` of a 24-variant creative with learned arms."""
    rng = np.random.default_rng(0)
    cache: PickCache = {}
    started = time.perf_counter()
    for _ in range(n):
        pick(creative, arms, "mobile", rng, cache if cached else {})
    return (time.perf_counter() - started) / n * 1e6


def run_once(seed: int, n: int, say: Callable[[str], None]) -> dict[str, float]:
    truth = TrueVariantModel(seed=seed)
    creatives = _creatives()
    options = {k.creative_id: variants(k) for k in creatives}
    ctr = {(k.creative_id, d, v.key): truth.ctr(k.creative_id, d, *key_parts(v.key))
           for k in creatives for d, _ in DEVICE_SHARES for v in options[k.creative_id]}
    best = {(k.creative_id, d): max(options[k.creative_id], key=lambda v, k=k, d=d: ctr[(k.creative_id, d, v.key)])
            for k in creatives for d, _ in DEVICE_SHARES}
    traffic = random.Random(seed)
    rng = np.random.default_rng(seed)
    tallies = {"ours": Tally(), "pooled": Tally()}
    arms: dict[str, Arms] = {"ours": {}, "pooled": {}}
    caches: dict[str, PickCache] = {"ours": {}, "pooled": {}}
    expected = dict.fromkeys(("ours", "pooled", "as_written", "random", "oracle"), 0.0)
    devices = [d for d, _ in DEVICE_SHARES]
    weights = [w for _, w in DEVICE_SHARES]
    for t in range(n):
        k = creatives[traffic.randrange(CREATIVES)]
        device = traffic.choices(devices, weights)[0]
        opts = options[k.creative_id]
        for name, segment in (("ours", device), ("pooled", ALL_SEGMENTS)):
            shown = pick(k, arms[name], segment, rng, caches[name])
            assert shown is not None
            p = ctr[(k.creative_id, device, shown.key)]
            expected[name] += p
            # The pooled learner tallies every impression under one segment: it cannot tell devices apart.
            tallies[name].add(k.creative_id, device if name == "ours" else "", shown.key, rng.random() < p, t)
        expected["as_written"] += ctr[(k.creative_id, device, opts[0].key)]
        expected["random"] += ctr[(k.creative_id, device, opts[traffic.randrange(len(opts))].key)]
        expected["oracle"] += ctr[(k.creative_id, device, best[(k.creative_id, device)].key)]
        if (t + 1) % REFRESH_EVERY == 0:  # a new snapshot: new arms, and the edge's cache starts afresh
            arms = {name: tally.export() for name, tally in tallies.items()}
            caches = {"ours": {}, "pooled": {}}
        if (t + 1) % 100_000 == 0:
            say(f"variants: {t + 1:,} impressions")
    return {**{f"ctr_{name}": total / n for name, total in expected.items()},
            "pick_us": _pick_us(creatives[0], arms["ours"], cached=True),
            "pick_uncached_us": _pick_us(creatives[0], arms["ours"], cached=False)}


def bench_variants(*, rounds: int, say: Callable[[str], None], workdir: Path, impressions: int = IMPRESSIONS,
                   **_: Any) -> dict[str, Any]:
    runs = []
    for r in range(max(1, rounds)):
        result = run_once(500 + r, impressions, say)
        say(f"variants round {r + 1}: CTR ours {result['ctr_ours']:.5f}, pooled {result['ctr_pooled']:.5f}, "
            f"as written {result['ctr_as_written']:.5f}, random {result['ctr_random']:.5f}, "
            f"oracle {result['ctr_oracle']:.5f}")
        runs.append(result)

    def med(f: Callable[[dict[str, float]], float]) -> float:
        return round(statistics.median(f(r) for r in runs), 3)

    return {
        "variant_ctr_vs_random": med(lambda r: r["ctr_ours"] / r["ctr_random"]),
        "variant_ctr_vs_as_written": med(lambda r: r["ctr_ours"] / r["ctr_as_written"]),
        "variant_ctr_vs_pooled": med(lambda r: r["ctr_ours"] / r["ctr_pooled"]),
        "variant_oracle_lift_share": med(lambda r: (r["ctr_ours"] - r["ctr_random"])
                                            / (r["ctr_oracle"] - r["ctr_random"])),
        "variant_pick_us": med(lambda r: r["pick_us"]),
        "variant_pick_uncached_us": med(lambda r: r["pick_uncached_us"]),
        "runs": runs,
    }
