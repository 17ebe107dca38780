"""Budget grant service: answers edge requests for budget slices over NATS request-reply.

The arithmetic is in ``allocator`` and the leases in ``allowances``; this adapter reads each campaign's terms
from the builder's view of the store, keeps the grant counters in JetStream KV with compare-and-set (so two
control-plane replicas cannot grant the same micros twice), and replies with what was granted, whether the
campaign is exhausted, and the account's lease. Returned and reclaimed allowance lowers the counters again.

The lease book is in this process's memory: after a restart, accounts granted before it are never reclaimed
(their allowance stays counted as spent, the safe side), and with several replicas each reclaims only what
it granted itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control_plane.allocator import BudgetTerms, credit_grant, decide_grant
from control_plane.allowances import AllowanceBook, Credit
from control_plane.store import Conflict, Store
from replication import subjects as S
from replication.clock import REAL_CLOCK, Clock

log = logging.getLogger(__name__)


class GrantService:
    def __init__(self, nc: NATS, store: Store, terms_of: Callable[[str], BudgetTerms | None],
                 max_slice_fraction: float, *, clock: Clock = REAL_CLOCK,
                 lease_s: float = 300.0, grace_s: float | None = None,
                 replay_cache: int = 10_000, concurrency: int = 32) -> None:
        self._nc = nc
        self._clock = clock
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
        self.returned_micros = 0
        self.reclaimed_micros = 0
        # Edges renew every quarter lease; waiting a half lease past its end before reclaiming leaves room for
        # two missed heartbeats. The lease book is this replica's: run one allocator replica (the queue
        # group spreads an edge's renewals over replicas, and another replica's book would see it silent).
        self._pending_credits: list[Credit] = []
        # Campaigns whose last grant decision found nothing left to grant: every answer tells the asking account
        # which of the campaigns it holds are in here, so a holder that has not asked since (a quiet region)
        # learns it and offers back what it holds beyond its needs (edge.budget.take_excess).
        self.exhausted: set[str] = set()
        self.book = AllowanceBook(lease_s=lease_s, grace_s=lease_s / 2 if grace_s is None else grace_s)

    async def start(self) -> None:
        await self._nc.subscribe(S.BUDGET_GRANT_SUBJECT, queue="allocator", cb=self._handle)

    async def reclaim_loop(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.credit(self.book.reclaim_dead(self._clock.now()))

    async def credit(self, credits: list[Credit]) -> None:
        """Lower the grant counters by returned or reclaimed allowance. The book has already settled those
        accounts, so a credit that cannot be written now (KV down, endless conflicts) is kept and retried
        by the reclaim loop instead of being lost (which would strand the allowance for the day)."""
        todo, self._pending_credits = [*self._pending_credits, *credits], []
        for c in todo:
            try:
                done = await self._credit_one(c)
            except Exception as exc:
                log.warning("crediting %d micros of %s failed (%r); will retry", c.micros, c.campaign_id, exc)
                done = False
            if not done:
                self._pending_credits.append(c)

    async def _credit_one(self, c: Credit) -> bool:
        for _ in range(20):
            state, revision = await self._store.get_grant_state(c.campaign_id)
            new_state = None if state is None else credit_grant(state, c.day, c.micros)
            if state is None or new_state is None:
                return True  # nothing to give back (another day's, or no counter): done
            try:
                await self._store.put_grant_state(c.campaign_id, new_state, revision)
            except Conflict:
                continue
            back = state.granted_day - new_state.granted_day
            self.exhausted.discard(c.campaign_id)
            if c.reason == "returned":
                self.returned_micros += back
            else:
                self.reclaimed_micros += back
            log.info("%s %d micros of %s (%s)", c.reason, back, c.campaign_id, c.day)
            return True
        return False

    async def grant(self, campaign_id: str, want: int, account: str = "") -> tuple[int, bool, str]:
        """(micros granted, exhausted, the campaign-local day the grant belongs to)."""
        terms = self._terms_of(campaign_id)
        if terms is None:
            return 0, True, ""
        async with self._limit:
            for _ in range(20):
                state, revision = await self._store.get_grant_state(campaign_id)
                decision = decide_grant(state, terms, want, now_s=self._clock.now(), max_slice_fraction=self._fraction)
                if decision.exhausted:
                    self.exhausted.add(campaign_id)
                else:
                    self.exhausted.discard(campaign_id)
                if decision.granted == 0 and state == decision.state:
                    return 0, decision.exhausted, decision.state.day
                try:
                    await self._store.put_grant_state(campaign_id, decision.state, revision)
                except Conflict:
                    continue  # another ask (or replica) moved the counter: decide again on the new value
                self.granted_micros += decision.granted
                if account:
                    self.book.granted(account, campaign_id, decision.state.day, decision.granted)
                return decision.granted, decision.exhausted, decision.state.day
        log.warning("grant for %s gave up after repeated conflicts", campaign_id)
        return 0, False, ""

    async def _handle(self, msg: Msg) -> None:
        try:
            request: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
            asks: dict[str, int] = request["asks"]
            request_id = str(request.get("id", ""))
            account = str(request.get("worker", ""))
            region = str(request.get("region", ""))
            unused = _unused_map(request.get("unused", {}))
            returns = {str(a): _int_map(r) for a, r in dict(request.get("returns", {})).items()}
            give_back = _unused_map(request.get("give_back", {}))
        except Exception:
            await msg.respond(msgpack.packb({"error": "bad grant request"}))
            return
        if request_id and request_id in self._replies:
            self.replayed += 1
            await msg.respond(self._replies[request_id])
            return
        for closed, back in returns.items():
            await self.credit(self.book.returned(closed, back))
        lease = self.book.renew(account, region, self._clock.now(), unused) if account else None
        if account and lease is None:
            # The account's lease lapsed before this request: its holder must close it and open a new one.
            reply = msgpack.packb({"grants": {}, "lease_s": None})
        else:
            if give_back:  # allowance a live account holds beyond its needs: grantable again at once
                await self.credit(self.book.given_back(account, give_back))
            valid = [(cid, want) for cid, want in asks.items() if isinstance(cid, str) and isinstance(want, int)]
            results = await asyncio.gather(*(self.grant(cid, want, account) for cid, want in valid),
                                           return_exceptions=True)
            grants = {}
            for (cid, _), r in zip(valid, results, strict=True):
                if isinstance(r, BaseException):  # this campaign's counter is unreachable: no slice this time
                    log.warning("grant for %s failed: %r", cid, r)
                    r = (0, False, "")
                grants[cid] = list(r)
            reply = msgpack.packb({"grants": grants, "lease_s": self.book.lease_s,
                                   "exhausted": self.book.held_of(account, self.exhausted)})
        if request_id:
            self._replies[request_id] = reply
            if len(self._replies) > self._replay_cache:
                self._replies.popitem(last=False)
        await msg.respond(reply)


def _int_map(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError("expected a map of campaign id to micros")
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}


def _unused_map(raw: object) -> dict[str, tuple[int, str]]:
    if not isinstance(raw, dict):
        raise ValueError("unused must map campaign id to [micros, day]")
    out = {}
    for k, v in raw.items():
        if isinstance(v, list | tuple) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str):
            out[str(k)] = (int(v[0]), v[1])
    return out
