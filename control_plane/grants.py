"""Budget grant service: answers edge requests for budget slices over NATS request-reply.

The arithmetic is in ``allocator``; this adapter reads each campaign's terms from the builder's view of the
store, keeps the grant counters in JetStream KV with compare-and-set (so two control-plane replicas cannot
grant the same micros twice), and replies with what was granted and whether the campaign is exhausted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control_plane.allocator import BudgetTerms, decide_grant
from control_plane.store import Conflict, Store
from replication import subjects as S

log = logging.getLogger(__name__)


class GrantService:
    def __init__(self, nc: NATS, store: Store, terms_of: Callable[[str], BudgetTerms | None],
                 max_slice_fraction: float) -> None:
        self._nc = nc
        self._store = store
        self._terms_of = terms_of
        self._fraction = max_slice_fraction
        self._lock = asyncio.Lock()  # one grant at a time in this process; KV CAS guards across processes
        self.granted_micros = 0

    async def start(self) -> None:
        await self._nc.subscribe(S.BUDGET_GRANT_SUBJECT, queue="allocator", cb=self._handle)

    async def grant(self, campaign_id: str, want: int) -> tuple[int, bool]:
        terms = self._terms_of(campaign_id)
        if terms is None:
            return 0, True
        for _ in range(20):
            state, revision = await self._store.get_grant_state(campaign_id)
            decision = decide_grant(state, terms, want, now_s=time.time(), max_slice_fraction=self._fraction)
            if decision.granted == 0 and (state == decision.state):
                return 0, decision.exhausted
            try:
                await self._store.put_grant_state(campaign_id, decision.state, revision)
            except Conflict:
                continue
            self.granted_micros += decision.granted
            return decision.granted, decision.exhausted
        log.warning("grant for %s gave up after repeated conflicts", campaign_id)
        return 0, False

    async def _handle(self, msg: Msg) -> None:
        try:
            request: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
            asks: dict[str, int] = request["asks"]
        except Exception:
            await msg.respond(msgpack.packb({"error": "bad grant request"}))
            return
        grants: dict[str, list[Any]] = {}
        async with self._lock:
            for campaign_id, want in asks.items():
                if not isinstance(campaign_id, str) or not isinstance(want, int):
                    continue
                granted, exhausted = await self.grant(campaign_id, want)
                grants[campaign_id] = [granted, exhausted]
        await msg.respond(msgpack.packb({"grants": grants}))
