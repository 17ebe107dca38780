"""Numba's on-disk cache for the auction's compiled kernels, switched on by the edge process.

Compiling the kernels (``edge.auction.warm_up``) took 5.8 s per process here, paid by every edge worker at its
first snapshot: every pod start, every restart after a crash, every edge the tests start. Loading them from
numba's cache took 0.48 s (one-off timings, ``edge.auction.warm_up`` on 2,000 campaigns, 7c1ff1e). The
kernels' modules do no I/O themselves; this adapter opts them in.

Two of numba's cache behaviours need care:

- It re-validates a cached function against its own source file only. ``_select`` inlines ``score_one`` from
  another module and constants from others still, so an edit there would leave a stale kernel in the cache.
  The cache therefore lives in a directory named after a digest of every source file of ``edge`` and
  ``replication`` and the numba and Python versions: any change to them compiles afresh.
- Its files are pickles, loaded with the process's rights. A directory another user could write to (a shared
  ``/tmp`` where someone created the path first) would let them run code in the edge, so the directory must be
  this user's own and closed to everyone else, and no directory above it may let another user rename it
  away, or the cache stays off (a warning; the edge compiles as before). Symlinks above it are resolved
  once, so none can be re-pointed later; stale directories of old digests are removed, nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

import numba
import numpy
from numba.core.registry import CPUDispatcher

import edge.auction
import edge.ctr

log = logging.getLogger(__name__)

_KERNEL_MODULES = (edge.auction, edge.ctr)
_SOURCE_PACKAGES = ("edge", "replication")
_DIGEST_LEN = 20
_DIGEST_NAME = re.compile(f"[0-9a-f]{{{_DIGEST_LEN}}}")  # a cache directory's name (``source_digest``)
_STALE_S = 86_400  # a sibling digest's directory unused this long belongs to old code: removed
_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding edge and replication


def kernels() -> list[CPUDispatcher]:
    """Every compiled function of the auction's modules (the ones called from Python and the ones inlined)."""
    return [obj for module in _KERNEL_MODULES for obj in vars(module).values()
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__]


def source_digest(root: Path = _ROOT) -> str:
    """A digest of what compiled kernels depend on: the source of ``edge`` and ``replication`` under
    ``root``, and numba's, numpy's and Python's versions."""
    h = hashlib.sha256(f"{numba.__version__}|{numpy.__version__}|{sys.version}".encode())
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:_DIGEST_LEN]


def _safe_parents(path: Path) -> bool:
    """Whether no other user can swap ``path`` for a directory of theirs: every directory above it must be
    root's or this user's, and closed to others or sticky (like /tmp, where only an entry's owner may rename
    it). A Kubernetes memory-backed emptyDir is a tmpfs, mode 1777 by default. ``path``'s parents must be
    resolved already (``prepare``): a symlink among them is refused, since whoever owns a link can re-point it,
    and ``stat`` would have judged its target instead."""
    for parent in path.parents:
        info = parent.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (0, os.getuid()) \
                or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            log.warning("numba compile cache off: %s, above %s, could let another user replace it (owner uid %d, "
                        "mode %o)", parent, path, info.st_uid, stat.S_IMODE(info.st_mode))
            return False
    return True


def _private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) if missing; true if it is a directory of this user's that no one else can
    write to (not a symlink)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        log.warning("numba compile cache off: %s is not a directory of this user's closed to others "
                    "(owner uid %d, mode %o)", path, info.st_uid, stat.S_IMODE(info.st_mode))
        return False
    return True


def _prune(root: Path, keep: Path, now: float) -> None:
    """Remove the directories of other digests unused for a day. Only names a digest could have: a root set
    to a directory that holds anything else (a home directory, by mistake) loses nothing else. Several
    workers start at once and may race to remove the same one: whatever fails here is left for the next
    start, and never turns the cache off."""
    try:
        siblings = list(root.iterdir())
    except OSError:
        return
    for sibling in siblings:
        if sibling == keep or not _DIGEST_NAME.fullmatch(sibling.name):
            continue
        try:
            info = sibling.lstat()
            if stat.S_ISDIR(info.st_mode) and now - info.st_mtime > _STALE_S:  # a symlink is not followed
                shutil.rmtree(sibling, ignore_errors=True)
        except OSError:
            continue


def prepare(root: str | Path) -> Path | None:
    """The directory the kernels' code can be cached in under ``root`` (created, its stale siblings pruned),
    or None when ``root`` is empty, not safe to load code from, or not usable."""
    if not root:
        return None
    try:
        # Resolved once, here: from now on no symlink above the cache can be re-pointed under it. The root
        # itself must be a real directory (``_private_dir``).
        root = Path(root).absolute()
        root = root.parent.resolve(strict=False) / root.name
        directory = root / source_digest()
        if not (_private_dir(root) and _safe_parents(root) and _private_dir(directory)):
            return None
        now = time.time()
        os.utime(directory, (now, now))  # in use: its siblings are judged by this
        _prune(root, directory, now)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, from ``resolve`` (Python 3.11)
        log.warning("numba compile cache off: %s is not usable: %r", root, exc)
        return None
    return directory


def enable(root: str | Path) -> Path | None:
    """Cache the kernels' compiled code under ``root``/<source digest>: call before the first snapshot is
    loaded (the first compile). Returns the directory, or None when the cache stays off (``prepare``: the
    edge then compiles as before, it never fails to start)."""
    directory = prepare(root)
    if directory is None:
        return None
    numba.config.CACHE_DIR = str(directory)
    for kernel in kernels():
        kernel.enable_caching()
    log.info("the auction's compiled kernels are cached in %s", directory)
    return directory


def loaded() -> int:
    """How many compiled versions of the kernels this process loaded from the cache instead of compiling."""
    return sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels())
