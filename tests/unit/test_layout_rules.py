"""The design's import rules, checked on the source: edge and control_plane never import each other,
loadtest imports none of the system, and the pure core does no I/O (no sockets, asyncio, wall clock or
global randomness)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "edge/auction.py", "edge/tokens.py", "edge/budget.py", "edge/adrequest.py",
    "control_plane/models.py", "control_plane/allocator.py", "control_plane/auth.py",
    "replication/snapshot.py", "replication/events.py", "replication/settings.py", "replication/calendar.py",
    "edge/ivt.py", "edge/attribution.py", "control_plane/attribution.py", "edge/pacing.py",
    "control_plane/allowances.py", "replication/budget_crdt.py", "edge/spend.py", "control_plane/traffic.py",
    "replication/hourly.py", "replication/columns.py", "edge/frequency.py",
    "replication/ctr_model.py", "edge/ctr.py", "edge/audiences.py", "replication/segments.py",
]
IO_MODULES = {"asyncio", "socket", "time", "nats", "httpx", "redis", "chdb", "clickhouse_connect", "subprocess",
              "starlette", "granian", "os"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("edge", {"control_plane", "adserver", "loadtest"}),
    ("control_plane", {"edge", "adserver", "loadtest"}),
    ("replication", {"edge", "control_plane", "adserver", "loadtest"}),
    ("loadtest", {"edge", "control_plane", "replication", "adserver"}),
])
def test_packages_respect_the_import_rule(package: str, forbidden: set[str]) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = top(imports(path)) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("module", PURE)
def test_pure_core_does_no_io(module: str) -> None:
    path = ROOT / module
    bad = top(imports(path)) & IO_MODULES
    assert not bad, f"{module} imports {sorted(bad)}"
    source = path.read_text()
    # Randomness and time come in as arguments: no module-level random.random() or datetime.now().
    for call in ("random.random(", "random.randint(", "datetime.now(", "time.time("):
        assert call not in source, f"{module} calls {call}"
