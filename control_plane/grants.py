"""Budget grant service: answers edge requests for budget slices over NATS request-reply.

The arithmetic is in ``allocator``; this adapter reads each campaign's terms from the builder's view of the
store, keeps the grant counters in JetStream KV with compare-and-set (so two control-plane replicas cannot
grant the same micros twice), and replies with what was granted and whether the campaign is exhausted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
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
                 max_slice_fraction: float, *, replay_cache: int = 10_000, concurrency: int = 32) -> None:
        self._nc = nc
        self._store = store
        self._terms_of = terms_of
        self._fraction = max_slice_fraction
        # request id -> reply: an edge whose reply was lost re-sends the same id and gets the same answer,
        # so a timeout never grants (and strands) the same slice twice.
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._replay_cache = replay_cache
        self._limit = asyncio.Semaphore(concurrency)
        self.granted_micros = 0
        self.replayed = 0

    async def start(self) -> None:
        await self._nc.subscribe(S.BUDGET_GRANT_SUBJECT, queue="allocator", cb=self._handle)

    async def grant(self, campaign_id: str, want: int) -> tuple[int, bool, str]:
        """(micros granted, exhausted, the campaign-local day the grant belongs to)."""
        terms = self._terms_of(campaign_id)
        if terms is None:
            return 0, True, ""
        async with self._limit:
            for _ in range(20):
                state, revision = await self._store.get_grant_state(campaign_id)
                decision = decide_grant(state, terms, want, now_s=time.time(), max_slice_fraction=self._fraction)
                if decision.granted == 0 and state == decision.state:
                    return 0, decision.exhausted, decision.state.day
                try:
                    await self._store.put_grant_state(campaign_id, decision.state, revision)
                except Conflict:
                    continue  # another ask (or replica) moved the counter: decide again on the new value
                self.granted_micros += decision.granted
                return decision.granted, decision.exhausted, decision.state.day
        log.warning("grant for %s gave up after repeated conflicts", campaign_id)
        return 0, False, ""

    async def _handle(self, msg: Msg) -> None:
        try:
            request: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
            asks: dict[str, int] = request["asks"]
            request_id = str(request.get("id", ""))
        except Exception:
            await msg.respond(msgpack.packb({"error": "bad grant request"}))
            return
        if request_id and request_id in self._replies:
            self.replayed += 1
            await msg.respond(self._replies[request_id])
            return
        valid = [(cid, want) for cid, want in asks.items() if isinstance(cid, str) and isinstance(want, int)]
        results = await asyncio.gather(*(self.grant(cid, want) for cid, want in valid))
        reply = msgpack.packb({"grants": {cid: list(r) for (cid, _), r in zip(valid, results, strict=True)}})
        if request_id:
            self._replies[request_id] = reply
            if len(self._replies) > self._replay_cache:
                self._replies.popitem(last=False)
        await msg.respond(reply)
