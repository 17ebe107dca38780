"""A helper for the end-to-end tests: a one-region stack whose edge has a real Redis for its region."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from adserver.processes import Proc, ProcessGroup, start_redis
from adserver.stack import LocalStack


@contextlib.contextmanager
def stack_with_redis(workdir: Path, cp_env: dict[str, str] | None = None,
                     **edge_env: str) -> Iterator[tuple[LocalStack, Proc]]:
    """IVT off (the tests drive beacons faster than any person), the region's Redis at the edge."""
    group = ProcessGroup(workdir)
    redis, redis_url = start_redis(group)
    env = {"ADSERVER_EDGE_IVT_ENABLED": "false", "ADSERVER_EDGE_REDIS_URL": redis_url, **edge_env}
    try:
        with LocalStack(regions=("eu",), edge_env=env, cp_env=cp_env or {}) as stack:
            yield stack, redis
    finally:
        group.stop_all()
