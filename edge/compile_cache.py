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
  this user's own and closed to everyone else, or the cache stays off (a warning; the edge compiles as before).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import numba
from numba.core.registry import CPUDispatcher

import edge.auction
import edge.ctr

log = logging.getLogger(__name__)

_KERNEL_MODULES = (edge.auction, edge.ctr)
_SOURCE_PACKAGES = ("edge", "replication")
_STALE_S = 86_400  # a sibling digest's directory unused this long belongs to old code: removed
_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding edge and replication


def kernels() -> list[CPUDispatcher]:
    """Every compiled function of the auction's modules (the ones called from Python and the ones inlined)."""
    return [obj for module in _KERNEL_MODULES for obj in vars(module).values()
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__]


def source_digest(root: Path = _ROOT) -> str:
    """A digest of what compiled kernels depend on: the source of ``edge`` and ``replication`` under
    ``root``, numba's version and Python's."""
    h = hashlib.sha256(f"{numba.__version__}|{sys.version}".encode())
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) if missing; true if it is a directory of this user's that no one else can
    write to (not a symlink)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        log.warning("numba compile cache off: cannot create %s: %r", path, exc)
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        log.warning("numba compile cache off: %s is not a directory of this user's closed to others "
                    "(owner uid %d, mode %o)", path, info.st_uid, stat.S_IMODE(info.st_mode))
        return False
    return True


def enable(root: str | Path) -> Path | None:
    """Cache the kernels' compiled code under ``root``/<source digest>: call before the first snapshot is
    loaded (the first compile). Returns the directory, or None when the cache stays off (``root`` empty, or
    not safe to load code from)."""
    if not root:
        return None
    root = Path(root)
    directory = root / source_digest()
    if not (_private_dir(root) and _private_dir(directory)):
        return None
    now = time.time()
    os.utime(directory, (now, now))  # in use: its siblings are judged by this
    for sibling in root.iterdir():
        if sibling != directory and sibling.is_dir() and not sibling.is_symlink() \
                and now - sibling.stat().st_mtime > _STALE_S:
            shutil.rmtree(sibling, ignore_errors=True)
    numba.config.CACHE_DIR = str(directory)
    for kernel in kernels():
        kernel.enable_caching()
    log.info("the auction's compiled kernels are cached in %s", directory)
    return directory


def loaded() -> int:
    """How many compiled versions of the kernels this process loaded from the cache instead of compiling."""
    return sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels())
