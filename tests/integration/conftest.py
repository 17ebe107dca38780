"""Fixtures shared by the integration tests: a real redis-server for the module, an embedded chdb store
per test (chdb allows one data path per process at a time, so each test closes its store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adserver.processes import ProcessGroup, start_redis
from control_plane.storage import ChdbStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(tmp_path_factory.mktemp("redis"))
    try:
        yield start_redis(group)[1]
    finally:
        group.stop_all()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    s = ChdbStore(str(tmp_path / "chdb"))
    try:
        s.ensure_schema()
        yield s
    finally:
        s.close()
