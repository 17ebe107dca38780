"""The auction kernels' on-disk compile cache (``edge.compile_cache``): a second process loads what the first
compiled and runs the same auctions, and a directory other users could write to is never loaded from."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge import compile_cache

ROOT = Path(__file__).resolve().parents[2]

_AUCTIONS = """
import json, random, sys
from edge import compile_cache
import edge.auction as A
directory = compile_cache.enable(sys.argv[1])
from adserver.bench_auction import click_model, inventory, requests
from replication.snapshot import build_snapshot
campaigns = inventory(600)
snapshot = build_snapshot(campaigns, version=1, created_ms=0, reserve_cpm_micros=100_000,
                          click_model=click_model(campaigns))
A.warm_up(snapshot)
rng = random.Random(7)
allowance = {c.campaign_id: 10**12 for c in snapshot.campaigns}
wins = [[(w.campaign.campaign_id, w.price_micros, w.ctr) for w in
         A.run_auction(snapshot, r, now_s=1.8e9, rng=rng, allowance=allowance).wins] for r in requests(200)]
stats = A._select.stats
print(json.dumps({"directory": str(directory), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "wins": wins}))
"""


def _run(cache_root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _AUCTIONS, str(cache_root)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_second_process_loads_the_compiled_kernels_and_runs_the_same_auctions(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = _run(root)
    directory = Path(first["directory"])
    assert directory == root / compile_cache.source_digest()
    assert (first["hits"], first["misses"]) == (0, 1)
    assert any(p.suffix == ".nbc" and p.name.startswith("auction._select") for p in directory.rglob("*"))
    assert oct(root.stat().st_mode & 0o777) == oct(0o700)
    second = _run(root)
    assert (second["hits"], second["misses"]) == (1, 0)
    assert second["wins"] == first["wins"] and sum(map(len, first["wins"])) > 100


def test_the_digest_follows_every_source_file_of_edge_and_replication(tmp_path: Path) -> None:
    for rel in ("edge/auction.py", "replication/snapshot.py", "control_plane/api.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    before = compile_cache.source_digest(tmp_path)
    (tmp_path / "control_plane/api.py").write_text("x = 2\n")  # not a kernel's dependency
    assert compile_cache.source_digest(tmp_path) == before
    (tmp_path / "replication/snapshot.py").write_text("x = 2\n")  # a constant a kernel may inline
    assert compile_cache.source_digest(tmp_path) != before


@pytest.mark.parametrize("make_unsafe", ["open to others", "another user's", "a symlink",
                                         "under a directory others can write to"])
def test_a_directory_others_could_write_to_is_never_used(tmp_path: Path, make_unsafe: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    if make_unsafe == "under a directory others can write to":  # not sticky: anyone may rename our directory
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared").chmod(0o777)
        root = tmp_path / "shared" / "cache"
    elif make_unsafe == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "elsewhere")
    else:
        root.mkdir(mode=0o700)
        if make_unsafe == "open to others":
            root.chmod(0o777)
        elif os.getuid() == 0:
            os.chown(root, 4242, -1)
        else:
            pytest.skip("only root can give a directory to another user")
    with caplog.at_level(logging.WARNING, logger="edge.compile_cache"):
        assert compile_cache.enable(root) is None
    assert "compile cache off" in caplog.text
    assert not any(kernel._cache.__class__.__name__ == "FunctionCache" for kernel in compile_cache.kernels())
    assert compile_cache.enable("") is None
