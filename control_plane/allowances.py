"""Allowance accounts: who holds which escrowed budget, under which lease, and when it may be re-granted. Pure.

Every edge process spends only against allowances the allocator granted it. An allowance lives in an
*account* (the process's id plus a lease epoch) whose lease the process renews with every grant request.
The edge stops spending an account the moment its lease runs out on its own clock, and the lease started
when the request left the edge, so the edge's lease always ends before the control plane's copy does.

Unspent allowance comes back to the budget in two ways, and only after the lease has expired:

- **returned**: a process whose lease ran out (it was cut off) closes the account and reports, once it can
  talk again, exactly how much of it was never used; the allocator re-grants that amount.
- **reclaimed**: a process that never comes back (killed) cannot report. Once its lease is over (plus a
  grace), and its *region* was heard after that — renewing without a break from before this account's last
  renewal (the region was reachable all along and this one process went silent, not cut off with it), or
  back from a silence and renewing without a break for a whole lease plus grace (a live holder back from a
  cut with its region reports within a quarter lease, and its own return settles the account first) — the
  allocator takes back what the account last reported as unused. A process alone cut off from
  NATS cannot bill (a beacon is answered only once JetStream holds its event), so only a dead process's
  allowance is ever reclaimed. The process may have spent part of that report before it died: the overdraft
  the budget bound allows for is at most one report's worth of allowance, a worker's allowance target, sized
  to about a quarter lease of its spend. A region that went silent as a whole (cut off, or every process of
  it restarted) is not reclaimed from while it is silent: its accounts come back as returns, or, once the
  region has been back for a lease and grace, are reclaimed (a region whose only process was killed and
  restarted gets that process's allowance back then, instead of stranding it for the day). A holder that was
  cut off with its region, spent after its last report and was killed before the heal is the one case where
  a reclaim gives back allowance that was spent, and there the bound is larger: cut off, the holder may
  spend until its lease ends, so up to the account's whole unspent holding as last reported (including
  what was granted in answer to that report). It takes a cut and a kill of the same process before the heal.

An account is settled once (returned or reclaimed), so a late return after a reclaim changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Holding:
    day: str  # the campaign-local day the allowance belongs to
    granted: int = 0
    unused: int = 0  # as last reported by the holder (the whole grant until it reports)


@dataclass(slots=True)
class Account:
    region: str
    lease_until: float
    heard_at: float
    holdings: dict[str, Holding] = field(default_factory=dict)
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Credit:
    """Micros of ``campaign_id``'s ``day`` to give back to the budget (the allocator lowers what it granted)."""

    campaign_id: str
    day: str
    micros: int
    reason: str  # "returned" | "reclaimed"


@dataclass(slots=True)
class AllowanceBook:
    lease_s: float
    # A killed holder's last report can be this stale: its allowance is reclaimed only this long after its
    # lease, and only if its region was heard from after that.
    grace_s: float
    accounts: dict[str, Account] = field(default_factory=dict)
    # region -> the latest time any account of it renewed a lease
    region_heard: dict[str, float] = field(default_factory=dict)
    # region -> when its current unbroken run of renewals began (a gap of more than half a lease breaks it)
    region_since: dict[str, float] = field(default_factory=dict)
    max_settled: int = 100_000

    def renew(self, account_id: str, region: str, now_s: float,
              unused: dict[str, tuple[int, str]]) -> float | None:
        """A grant request (or heartbeat) from a live account: renew its lease and record what it has not
        used, per campaign (micros, the campaign-local day they belong to), zeros included. Returns the new
        lease end, or None when the account is already settled (its lease ran out and its allowance went
        back: the holder must open a new account)."""
        acct = self.accounts.get(account_id)
        if acct is None:
            acct = self.accounts[account_id] = Account(region=region, lease_until=now_s, heard_at=now_s)
        if acct.settled:
            return None
        if now_s > acct.lease_until and acct.holdings:
            # The lease lapsed before this renewal arrived: the holder stopped spending it, and the allocator
            # may already count on that, so it cannot be revived.
            return None
        acct.heard_at = now_s
        acct.lease_until = now_s + self.lease_s
        last = self.region_heard.get(region)
        if last is None or now_s - last > self.lease_s / 2:
            self.region_since[region] = now_s  # the region was silent: a new run of renewals starts
        self.region_heard[region] = max(last or now_s, now_s)
        for campaign_id, (micros, day) in unused.items():
            h = acct.holdings.get(campaign_id)
            if h is not None and h.day == day:  # a report about another day's allowance says nothing here
                h.unused = max(0, min(int(micros), h.granted))
        return acct.lease_until

    def held_of(self, account_id: str, campaign_ids: set[str]) -> list[str]:
        """Which of ``campaign_ids`` the account holds allowance of (walking the smaller of the two: an
        account's report names only what moved, so the answer cannot go by the report)."""
        acct = self.accounts.get(account_id)
        if acct is None:
            return []
        holdings = acct.holdings
        if len(campaign_ids) < len(holdings):
            return [cid for cid in campaign_ids if cid in holdings]
        return [cid for cid in holdings if cid in campaign_ids]

    def granted(self, account_id: str, campaign_id: str, day: str, micros: int) -> None:
        acct = self.accounts[account_id]
        h = acct.holdings.get(campaign_id)
        if h is None or h.day != day:
            h = acct.holdings[campaign_id] = Holding(day=day)  # a new day's grants start a new holding
        h.granted += micros
        h.unused += micros

    def given_back(self, account_id: str, offer: dict[str, tuple[int, str]]) -> list[Credit]:
        """A live account offers back allowance it holds beyond its needs (``edge.budget.take_excess``); call
        after ``renew`` succeeded for the same request. Each campaign's holding of that day shrinks by it."""
        acct = self.accounts.get(account_id)
        if acct is None or acct.settled:
            return []
        credits = []
        for campaign_id, (micros, day) in offer.items():
            h = acct.holdings.get(campaign_id)
            if h is None or h.day != day:
                continue
            back = max(0, min(int(micros), h.granted))
            if back:
                h.granted -= back
                h.unused = min(h.unused, h.granted)
                credits.append(Credit(campaign_id, day, back, "returned"))
        return credits

    def returned(self, account_id: str, returns: dict[str, int]) -> list[Credit]:
        """A holder closes ``account_id`` (its lease ran out on its clock, which ends first) and reports what
        it never used. The holder's word is final: it will not spend that account again, whatever the
        allocator's copy of the lease says."""
        acct = self.accounts.get(account_id)
        if acct is None or acct.settled:
            return []  # unknown (allocator restarted: the micros stay spent, the safe side) or settled
        acct.settled = True
        credits = []
        for campaign_id, micros in returns.items():
            h = acct.holdings.get(campaign_id)
            if h is None:
                continue
            back = max(0, min(int(micros), h.granted))
            if back:
                credits.append(Credit(campaign_id, h.day, back, "returned"))
        self._forget_settled()
        return credits

    def awaits_return(self, account_id: str) -> bool:
        """Whether a return to this account would still be credited: it is known and not settled."""
        acct = self.accounts.get(account_id)
        return acct is not None and not acct.settled

    def reclaim_dead(self, now_s: float) -> list[Credit]:
        """Accounts whose holder is gone: lease over for ``grace_s`` while its region kept renewing."""
        credits = []
        for acct in self.accounts.values():
            if acct.settled or now_s <= acct.lease_until + self.grace_s:
                continue
            if self.region_heard.get(acct.region, 0.0) <= acct.lease_until + self.grace_s:
                continue  # the whole region is silent: it may be cut off and spending; never reclaim
            since = self.region_since.get(acct.region, now_s)
            if since > acct.heard_at and now_s - since < self.lease_s + self.grace_s:
                continue  # the region itself was silent since this account's last word and is only just back:
                # it may be back from a cut, this account's holder with it, and its real return is on the way
                # (a live holder reports every quarter lease; one silent for a whole lease and grace after its
                # region came back is dead, like one that went silent while its region kept renewing)
            acct.settled = True
            credits.extend(Credit(cid, h.day, h.unused, "reclaimed") for cid, h in acct.holdings.items() if h.unused)
        self._forget_settled()
        return credits

    def outstanding(self, campaign_id: str, day: str) -> int:
        """Allowance of the campaign's day held by live or unsettled accounts, as last reported."""
        return sum(h.unused for a in self.accounts.values() if not a.settled
                   for cid, h in a.holdings.items() if cid == campaign_id and h.day == day)

    def _forget_settled(self) -> None:
        settled = [k for k, a in self.accounts.items() if a.settled]
        for k in settled[: max(0, len(settled) - self.max_settled)]:
            del self.accounts[k]
