"""Fixtures shared by the integration tests: a real redis-server for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adserver.processes import ProcessGroup, start_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(tmp_path_factory.mktemp("redis"))
    try:
        yield start_redis(group)[1]
    finally:
        group.stop_all()
