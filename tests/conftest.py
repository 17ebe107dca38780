"""Shared fixtures: a real nats-server per test session, on a free port with a temporary store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adserver.processes import ProcessGroup, start_nats


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("nats")
    group = ProcessGroup(workdir)
    _, url = start_nats(group, workdir / "store")
    try:
        yield url
    finally:
        group.stop_all()
