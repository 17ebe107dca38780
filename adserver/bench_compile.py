"""``adserver bench --only compile``: what an edge process's first snapshot costs in compiling the auction's
kernels, with and without numba's on-disk cache (``edge.compile_cache``).

Each measurement is a fresh Python process (compiled code lives per process): it enables the cache under the
given directory (or not), builds a 600-campaign snapshot with a click model, times ``edge.auction.warm_up``
and runs 200 auctions. Per round, side by side: one process without a cache (``kernel_compile_s``), and in a
new cache directory one that compiles and writes the cache, then one that loads it
(``kernel_cache_load_s``); ``kernel_cache_speedup`` is the ratio of the medians. The integration tests run the
same child (``warm_up_in_fresh_process``) to check that a loaded kernel runs the same auctions.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, random, sys, time
from edge import compile_cache
import edge.auction as A
directory = compile_cache.enable(sys.argv[1])
from adserver.bench_auction import click_model, inventory, requests
from replication.snapshot import build_snapshot
campaigns = inventory(600)
snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000,
                          click_model=click_model(campaigns))
started = time.perf_counter()
A.warm_up(snapshot)
warm_s = time.perf_counter() - started
rng = random.Random(7)
allowance = {c.campaign_id: 10**12 for c in snapshot.campaigns}
wins = [[(w.campaign.campaign_id, w.price_micros, w.ctr) for w in
         A.run_auction(snapshot, r, now_s=1.8e9, rng=rng, allowance=allowance).wins] for r in requests(200)]
stats = A._select.stats
print(json.dumps({"directory": str(directory), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "warm_s": warm_s, "wins": wins}))
"""


def warm_up_in_fresh_process(cache_root: str | Path) -> dict[str, Any]:
    """One child process (``_CHILD``) with the cache under ``cache_root`` ("": none): the cache directory it
    used, the compiled versions of ``_select`` it loaded (hits) and compiled (misses), the warm-up's seconds,
    and the wins of its 200 auctions."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(cache_root)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"the warm-up child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def bench_compile(*, rounds: int, say: Callable[[str], None], **_: Any) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"compile": [], "write": [], "load": []}
    for r in range(rounds):
        runs["compile"].append(warm_up_in_fresh_process("")["warm_s"])
        with tempfile.TemporaryDirectory(prefix="adserver-bench-compile-") as tmp:
            for name in ("write", "load"):
                runs[name].append(warm_up_in_fresh_process(Path(tmp) / "kernels")["warm_s"])
        say(f"round {r + 1}: warm-up without a cache {runs['compile'][-1]:.2f} s, writing the cache "
            f"{runs['write'][-1]:.2f} s, loading it {runs['load'][-1]:.2f} s")
    compile_s, load_s = statistics.median(runs["compile"]), statistics.median(runs["load"])
    return {"kernel_compile_s": round(compile_s, 2), "kernel_cache_load_s": round(load_s, 2),
            "kernel_cache_speedup": round(compile_s / load_s, 1), "runs": runs}
