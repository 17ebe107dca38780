"""The control plane's replica of the spend CRDT, and the budget report that reconciles it with ClickHouse.

Every edge worker publishes its PN-counter deltas (and now and then its whole state) on core NATS; this
replica merges them all, so the allocator and the dashboard see each campaign's spend today — charged and in
flight — within a sync tick, without a ClickHouse query. ClickHouse stays the billing truth: ``report``
puts the two side by side per campaign, with the gap (events charged at the edge but not yet stored, or
stored but charged by a writer this replica has not heard from).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control_plane.allocator import BudgetTerms, GrantState
from control_plane.allowances import AllowanceBook
from replication import subjects as S
from replication.budget_crdt import SpendBook, counter_key, decode_sync
from replication.calendar import local_day, local_day_window
from replication.clock import Clock

log = logging.getLogger(__name__)


@dataclass
class SpendReplica:
    clock: Clock
    book: SpendBook = field(default_factory=lambda: SpendBook(f"cp-{os.getpid()}", keep_periods=3))
    heard: dict[str, float] = field(default_factory=dict)  # writer -> campaign time of its last message
    messages: int = 0
    bytes_in: int = 0
    rejected: int = 0

    async def start(self, nc: NATS) -> None:
        await nc.subscribe(S.SPEND_SUBJECTS, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        try:
            message = decode_sync(msg.data)
            self.book.receive(message)
        except Exception as exc:
            self.rejected += 1
            log.debug("ignored a spend sync message: %r", exc)
            return
        self.messages += 1
        self.bytes_in += len(msg.data)
        self.heard[message.writer_id] = self.clock.now()

    def today(self, campaign_id: str, day: str) -> tuple[int, int]:
        """(charged, in flight) micros of the campaign's ``day``, all writers heard."""
        key = counter_key(campaign_id, day)
        return self.book.value(f"{key}|c"), self.book.value(f"{key}|r")


async def report(
    ids: list[str], terms_of: Callable[[str], BudgetTerms | None],
    grant_state: Callable[[str], Awaitable[tuple[GrantState | None, int]]],
    replica: SpendReplica, book: AllowanceBook,
    clickhouse_spend: Callable[[list[str], tuple[int, int]], Awaitable[dict[str, int]]], now_s: float,
) -> dict[str, dict[str, Any]]:
    """Per servable campaign, its local day: budget, granted (net of returns and reclaims), allowance still
    held, CRDT charged and in flight, ClickHouse's deduplicated spend of the same day, and the gap."""
    out: dict[str, dict[str, Any]] = {}
    windows: dict[tuple[int, int], list[str]] = {}
    for cid in ids:
        terms = terms_of(cid)
        if terms is None:
            continue
        day = local_day(now_s, terms.timezone)
        state, _ = await grant_state(cid)
        charged, in_flight = replica.today(cid, day)
        out[cid] = {"day": day, "daily_budget": terms.daily_budget_micros,
                    "granted": state.granted_day if state is not None and state.day == day else 0,
                    "held": book.outstanding(cid, day), "spent": charged, "in_flight": in_flight}
        windows.setdefault(local_day_window(now_s, terms.timezone), []).append(cid)
    for window, cids in windows.items():
        stored = await clickhouse_spend(cids, window)
        for cid in cids:
            out[cid]["clickhouse_spent"] = stored.get(cid, 0)
            out[cid]["gap"] = out[cid]["spent"] - stored.get(cid, 0)
    return out

