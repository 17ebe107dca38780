"""The auction kernels' on-disk compile cache (``edge.compile_cache``): a second process loads what the first
compiled and runs the same auctions, and a directory other users could write to is never loaded from."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from adserver.bench_compile import warm_up_in_fresh_process
from edge import compile_cache


def test_a_second_process_loads_the_compiled_kernels_and_runs_the_same_auctions(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = warm_up_in_fresh_process(root)
    directory = Path(first["directory"])
    assert directory == root / compile_cache.source_digest()
    assert (first["hits"], first["misses"]) == (0, 1)
    assert any(p.suffix == ".nbc" and p.name.startswith("auction._select") for p in directory.rglob("*"))
    assert oct(root.stat().st_mode & 0o777) == oct(0o700)
    second = warm_up_in_fresh_process(root)
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


def test_a_symlink_above_the_cache_is_followed_once_and_never_again(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    if os.getuid() == 0:
        os.lchown(link, 4242, 4242)  # a link another user owns: they could re-point it after the checks
    directory = compile_cache.prepare(link / "cache")
    assert directory == tmp_path.resolve() / "real" / "cache" / compile_cache.source_digest()
    assert directory.resolve() == directory  # numba is handed a path no symlink can redirect


def test_only_stale_directories_named_like_a_digest_are_pruned(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    stale, fresh, other = root / ("ab" * 10), root / ("cd" * 10), root / "notes-of-someone"
    for path in (stale, fresh, other):
        path.mkdir()
        (path / "data").write_text("x")
    day_ago = time.time() - 2 * 86_400
    for path in (stale, other):
        os.utime(path, (day_ago, day_ago))
    directory = compile_cache.prepare(root)
    assert directory is not None and directory.is_dir()
    assert not stale.exists()  # old code's kernels
    assert fresh.exists() and (other / "data").exists()  # in use elsewhere; not ours to remove


def test_a_symlink_loop_above_the_cache_turns_it_off_and_never_stops_the_edge(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="edge.compile_cache"):
        assert compile_cache.prepare(tmp_path / "a" / "cache") is None
    assert "compile cache off" in caplog.text
