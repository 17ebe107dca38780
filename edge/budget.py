"""The edge's budget ledger: spend only what the control plane granted this process.

Pure bookkeeping (time and the budget day are passed in). The allocator grants each edge process slices of
a campaign's remaining daily and total budget. When an ad is chosen the ledger reserves its expected cost
(the impression's price for CPM; price x P(click) or x P(conversion), with margin, for CPC and CPA); when
the billable event arrives, ``settle`` releases that reservation and takes the real cost; unrendered
reservations expire back into the allowance. A billable event that finds no allowance is not billed (the
caller marks it ``over_budget``), so spend can never exceed what was granted, and the control plane never
grants more than the budget. Grants carry the campaign-local day: at midnight yesterday's unspent slices
are dropped instead of being spent against today's budget.

Allowances are held in a leased *account* (see ``control_plane.allowances``): every grant answer renews the
lease, measured from when the request left this process, so this copy of the lease always ends first. When
it runs out (the allocator is unreachable) the ledger stops spending at once, moves what is left into a
*return* for the old account and opens a new one; the return is sent once the old account has no
reservations left, and the allocator re-grants it. Without any lease (unit tests, no allocator) the ledger
spends its grants freely.

In-flight reservations are held per campaign in expiry *buckets*, not per impression: an ad is chosen at
thousands per second per process and a record per ad was a live object per ad shown for a whole TTL (a
million of them at 1,400 six-slot decisions per second and the 120 s default), which the decision path paid
for in allocation and the ledger in memory. ``reserve_many`` only lowers the campaign's allowance (the
open bucket's sum for the campaign catches up in ``fold``, see the comment above it) and returns a *hold*
(ledger, bucket number, micros, the reservation's ordinal in its bucket), which the
caller signs into the ad's tokens; the billable event hands it back to ``settle`` (or ``release``), which
takes those micros out of that bucket if this ledger still holds it. A bit per reservation marks the holds
already handed back, so a hold works once however often it returns (a replay older than the beacon dedup,
a second conversion on one click): another ad's reservation is never drained by it. A bucket expires
whole, ``ttl_s`` after it closed, so memory is buckets x campaigns plus a bit per ad.

Every movement is also staged as PN-counter increments (``pn``) for the replicated spend counter: P takes
reservations and charges, N takes releases and refunds, under ``"r"`` (in flight) and ``"c"`` (charged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

# Indices into a staged PN entry: reservations (P, N) then charges (P, N).
RES_P, RES_N, CHG_P, CHG_N = range(4)
PRICE_WEIGHT = 0.1  # of the newest billed price in a campaign's moving average (about its last ten)


class CampaignBudget:
    """One campaign's account in a ledger. ``available`` lives in the ledger's ``available_by_campaign`` (the
    dict the auction reads); ``reserved`` is brought up to date when read (``BudgetLedger.fold``): the
    per-ad path writes only that dict (see ``BudgetLedger.reserve_many``)."""

    __slots__ = ("_id", "_ledger", "_reserved", "asked_at", "counter", "day", "exhausted", "granted", "refused",
                 "spent")

    def __init__(self, ledger: BudgetLedger, campaign_id: str) -> None:
        self._ledger = ledger
        self._id = campaign_id
        self._reserved = 0
        self.granted = 0
        self.spent = 0
        self.refused = 0  # billable events not billed for lack of allowance
        self.exhausted = False
        self.asked_at = -1e18
        self.day = ""
        self.counter = False  # the "counter" baseline: admitted against the replicated counter, not grants

    @property
    def available(self) -> int:
        return self._ledger.available_by_campaign.get(self._id, 0)

    @available.setter
    def available(self, micros: int) -> None:
        self._ledger._set_available(self._id, micros)

    @property
    def reserved(self) -> int:
        self._ledger._fold_one(self._id)
        return self._reserved

    @reserved.setter
    def reserved(self, micros: int) -> None:
        self._ledger._fold_one(self._id)
        self._ledger.touched.add(self._id)
        self._reserved = micros

    def __repr__(self) -> str:
        return (f"CampaignBudget({self._id!r}, available={self.available}, reserved={self.reserved}, "
                f"granted={self.granted}, spent={self.spent}, day={self.day!r})")


# What the caller keeps for one reserved ad (signed into its tokens): the ledger's worker id, the number of
# the bucket holding the reservation, the micros reserved, and the reservation's ordinal in the bucket.
Hold = tuple[str, int, int, int]


@dataclass(slots=True)
class _Bucket:
    account: str  # the account whose allowance the reservations came from
    expires_s: float
    # campaign -> [micros still held, campaign-local day, micros reserved but not yet staged for the PN counter]
    held: dict[str, list] = field(default_factory=dict)
    count: int = 0  # reservations made in this bucket (the next one's ordinal)
    returned: bytearray = field(default_factory=bytearray)  # bit per ordinal: its hold was handed back


@dataclass(slots=True)
class BudgetLedger:
    campaigns: dict[str, CampaignBudget] = field(default_factory=dict)
    worker_id: str = "w"
    ttl_s: float = 120.0  # a reservation no billable event settled goes back this long after its bucket closed
    bucket_s: float = 1.0  # how long a bucket takes reservations (expiry granularity)
    # bucket number -> bucket; numbers rise with time and every bucket gets the same TTL, so expiry is a scan
    # from the front that stops at the first live one.
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    epoch: int = 0
    lease_until: float = math.inf  # campaign-clock end of the account's lease; inf: no leases in force
    live: bool = True
    # closed account -> campaign -> micros never used; sent once the account holds no reservations
    returns: dict[str, dict[str, int]] = field(default_factory=dict)
    # (campaign, day) -> [reserved, released, charged, refunded] since the last drain, for the spend CRDT
    pn: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # Allowance offered back to the allocator in the grant request now in flight (take_excess): campaign ->
    # (micros, day), and the account it was taken from. Neither available nor returned until the answer says.
    giving: dict[str, tuple[int, str]] = field(default_factory=dict)
    giving_account: str = ""
    # campaign -> micros it may still spend here (CampaignBudget.available reads and writes it): the auction
    # reads it per candidate, and a plain dict's C-level get costs a fraction of a Python-level view's
    available_by_campaign: dict[str, int] = field(default_factory=dict)
    # campaign -> moving average of what its billable events cost (billed or not): allowance targets and the
    # pacing's "spent out" are sized in it, not in the bid's ceiling, which a campaign paying the reserve
    # may never come near
    unit_prices: dict[str, float] = field(default_factory=dict)
    # Campaigns new here or whose allowance, reservations, spend, price or exhaustion changed since
    # ``edge.accounting`` last took them: its 100 ms work walks these (and a few more), not every campaign.
    touched: set[str] = field(default_factory=set)

    account: str = field(init=False, default="")
    _open: _Bucket | None = field(init=False, default=None)  # the bucket reservations go to now
    _open_seq: int = field(init=False, default=0)
    _folded: dict[str, int] = field(init=False, default_factory=dict)  # see fold
    _unfolded: set[str] = field(init=False, default_factory=set)  # campaigns reserve_many lowered since (fold)
    _open_until: float = field(init=False, default=-math.inf)
    _unstaged_from: int = field(init=False, default=0)  # the first bucket number drain_pn must look at
    # lease_until while the account is live, else -inf: reserve_many's one comparison for "may it spend"
    _spend_until: float = field(init=False, default=math.inf)

    def __post_init__(self) -> None:
        self.account = f"{self.worker_id}.{self.epoch}"
        self._spend_until = self.lease_until if self.live else -math.inf

    def _budget(self, campaign_id: str) -> CampaignBudget:
        b = self.campaigns.get(campaign_id)
        if b is None:
            b = self.campaigns[campaign_id] = CampaignBudget(self, campaign_id)
            self.touched.add(campaign_id)  # new here: the accounting's day roll must look at it
        return b

    # Reservations reach the books lazily. reserve_many, once per ad, only lowers the campaign's entry in
    # ``available_by_campaign`` (and notes the campaign in ``_unfolded``, so a fold walks only those);
    # ``_folded`` keeps each entry's value as of its campaign's last fold, and every other change of an
    # allowance goes through ``_set_available``, which folds that campaign first. So the
    # difference between the two is exactly what the campaign reserved since, all of it in the open bucket,
    # and folding moves it into that bucket's ``held`` entry (under the campaign's day) and ``reserved``. Every
    # reader of ``held`` or ``reserved`` folds first; opening another bucket, closing this one and every
    # change of a campaign's day fold everything first, so a sum is never folded under the wrong bucket or day.

    def fold(self) -> None:
        """Bring every campaign's reservations since its last fold into the books (see above)."""
        unfolded = self._unfolded
        for campaign_id in unfolded:
            self._fold_one(campaign_id)
        unfolded.clear()

    def _fold_one(self, campaign_id: str) -> None:
        available = self.available_by_campaign.get(campaign_id, 0)
        micros = self._folded.get(campaign_id, available) - available
        self._folded[campaign_id] = available
        if not micros:
            return
        self.touched.add(campaign_id)
        bucket = self._open
        assert bucket is not None  # only reserve_many lowers an allowance unfolded, and it opens a bucket
        b = self.campaigns[campaign_id]
        b._reserved += micros
        held = bucket.held.get(campaign_id)
        if held is None:
            bucket.held[campaign_id] = [micros, b.day, micros]
        else:
            held[0] += micros
            held[2] += micros  # staged into the PN counter by drain_pn

    def _set_available(self, campaign_id: str, micros: int) -> None:
        self._fold_one(campaign_id)
        self.touched.add(campaign_id)
        self.available_by_campaign[campaign_id] = self._folded[campaign_id] = micros

    def _close_open(self) -> None:
        """No more reservations into the open bucket (a campaign's day turned, or the account closed)."""
        self.fold()
        self._open = None
        self._open_until = -math.inf

    def _stage(self, campaign_id: str, day: str, index: int, micros: int) -> None:
        entry = self.pn.get((campaign_id, day))
        if entry is None:
            entry = self.pn[(campaign_id, day)] = [0, 0, 0, 0]
        entry[index] += micros

    def drain_pn(self) -> dict[tuple[str, str], list[int]]:
        """Everything staged since the last drain. Reservations are staged here rather than per ad: each
        bucket entry sums what it took since the last drain (its third item), and this walks only the buckets
        opened since the last drain."""
        self.fold()
        buckets = self.buckets
        for seq in range(self._unstaged_from, self._open_seq + 1):
            bucket = buckets.get(seq)
            if bucket is not None:
                self._stage_reserved(bucket)
        self._unstaged_from = self._open_seq  # the open bucket may take more before the next drain
        staged, self.pn = self.pn, {}
        return staged

    def _stage_reserved(self, bucket: _Bucket) -> None:
        for campaign_id, held in bucket.held.items():
            if held[2]:
                self._stage(campaign_id, held[1], RES_P, held[2])
                held[2] = 0

    def renew(self, lease_until: float) -> None:
        """A grant answer renewed the account's lease until ``lease_until`` (campaign clock)."""
        self.lease_until = self._spend_until = lease_until
        self.live = True

    def lapse(self, now_s: float, *, force: bool = False) -> bool:
        """Close the account when its lease has run out (or the allocator refused to renew it: ``force``):
        stop spending, move what is left into a return, open the next account. True when it closed."""
        if not force and (not self.live or now_s < self.lease_until):
            return False
        closed = self.account
        back = self.returns.setdefault(closed, {})
        for campaign_id, b in self.campaigns.items():
            if b.available > 0 and not b.counter:
                back[campaign_id] = back.get(campaign_id, 0) + b.available
                b.available = 0
            b.asked_at = -1e18
        self.epoch += 1
        self.account = f"{self.worker_id}.{self.epoch}"
        self._close_open()  # a bucket holds one account's reservations
        self.live = False
        self.lease_until = self._spend_until = -math.inf
        return True

    def add_return(self, account: str, campaign_id: str, micros: int) -> None:
        if micros > 0:
            back = self.returns.setdefault(account, {})
            back[campaign_id] = back.get(campaign_id, 0) + micros

    def closable_returns(self) -> dict[str, dict[str, int]]:
        """Returns of closed accounts with nothing left in flight; removed once taken."""
        if not self.returns:
            return {}
        self.fold()
        holding = {bucket.account for bucket in self.buckets.values()
                   if bucket.account in self.returns and any(held[0] for held in bucket.held.values())}
        holding.add(self.giving_account)  # an offer still in flight may yet join that account's return
        ready = {a: r for a, r in self.returns.items() if a not in holding}
        for a in ready:
            del self.returns[a]
        return ready

    def unused(self) -> dict[str, tuple[int, str]]:
        """What this account has not used, per campaign and its day, zeros included (a spent-out campaign
        must overwrite the allocator's last figure, or a reclaim would hand that figure back)."""
        return {cid: (b.available, b.day) for cid, b in self.campaigns.items() if not b.counter and b.day}

    def allowance(self) -> dict[str, int]:
        return {cid: micros for cid, micros in self.available_by_campaign.items() if micros > 0}

    def allowance_view(self) -> Mapping[str, int]:
        """Live and read-only by convention: campaign -> micros this process may still spend."""
        return self.available_by_campaign

    def available(self, campaign_id: str) -> int:
        return self.available_by_campaign.get(campaign_id, 0)

    def new_day(self, campaign_id: str, day: str) -> bool:
        """Enter the campaign-local ``day``. Returns True when it is newer: yesterday's slices are dropped."""
        b = self._budget(campaign_id)
        if day <= b.day:
            return False
        self._close_open()
        b.day = day
        b.available = 0
        b.exhausted = False
        b.asked_at = -1e18
        return True

    def set_counter_allowance(self, campaign_id: str, day: str, micros: int) -> None:
        """The counter baseline: what this replica believes is left of the budget is the allowance."""
        b = self._budget(campaign_id)
        b.counter = True
        if day > b.day:
            self._close_open()
            b.day = day
        b.available = max(0, micros)

    def grant(self, campaign_id: str, micros: int, *, exhausted: bool, day: str) -> None:
        b = self._budget(campaign_id)
        if day < b.day:
            return  # a late answer for a day that is over: those micros were yesterday's
        if day > b.day:
            self._close_open()
            b.day = day
            b.available = 0  # this grant is the new day's first: yesterday's leftovers are not carried over
        b.available += micros
        b.granted += micros
        b.exhausted = exhausted

    def reset(self, campaign_id: str) -> None:
        """The campaign's budget changed (raised budget, resumed): ask again instead of staying exhausted."""
        b = self.campaigns.get(campaign_id)
        if b is not None:
            b.exhausted = False
            b.asked_at = -1e18
            self.touched.add(campaign_id)

    def reserve(self, campaign_id: str, micros: int, *, now_s: float) -> Hold | None:
        """Hold ``micros`` of the allowance for an ad just chosen (one ``reserve_many`` entry)."""
        return self.reserve_many(((campaign_id, micros),), now_s=now_s)[0]

    def reserve_many(self, wanted: Iterable[tuple[str, int]], *, now_s: float) -> list[Hold | None]:
        """Hold each (campaign, micros) of an ad request's chosen ads. Returns, in order, the hold to sign into
        each ad's tokens, None where refused: no allowance for it, or no live lease (``now_s`` past the lease's
        end is refused even before the next tick notices: a stalled event loop must not spend an expired lease).

        Called for every ad shown, so per ad it only lowers the campaign's allowance and numbers the hold;
        the bucket's entries and the campaign's ``reserved`` catch up in ``fold``
        (``adserver bench --only decisions`` weighs this path)."""
        bucket = self._open
        if bucket is None or now_s >= self._open_until:
            bucket = self._new_bucket(now_s)
        leased = now_s < self._spend_until
        available = self.available_by_campaign
        unfolded = self._unfolded
        worker, seq, n = self.worker_id, self._open_seq, bucket.count
        holds: list[Hold | None] = []
        for campaign_id, micros in wanted:
            left = available.get(campaign_id, -1) - micros
            if left < 0 or micros < 0 or not (leased or self.campaigns[campaign_id].counter):
                holds.append(None)  # an unknown campaign has no allowance (-1): refused too
                continue
            available[campaign_id] = left
            unfolded.add(campaign_id)
            holds.append((worker, seq, micros, n))
            n += 1
        bucket.count = n
        return holds

    def _new_bucket(self, now_s: float) -> _Bucket:
        self.fold()  # the bucket closing now: what it took joins its held entries before the next one opens
        self._open_seq += 1
        self._open_until = now_s + self.bucket_s
        bucket = self._open = self.buckets[self._open_seq] = _Bucket(self.account, self._open_until + self.ttl_s)
        return bucket

    def _take(self, hold: Hold | None, campaign_id: str) -> tuple[int, str, str] | None:
        """Take a hold's micros out of its bucket: (micros, day, account), or None when this ledger does not
        hold it (another process reserved it, it expired, it was handed back before, or it came in an older
        token without a hold)."""
        if hold is None or hold[0] != self.worker_id:
            return None
        bucket = self.buckets.get(hold[1])
        if bucket is None or not 0 <= hold[3] < bucket.count:
            return None
        if bucket is self._open:
            self._fold_one(campaign_id)
        held = bucket.held.get(campaign_id)
        if held is None:
            return None
        byte, bit = divmod(hold[3], 8)
        returned = bucket.returned
        if byte >= len(returned):
            returned.extend(bytes(byte + 1 - len(returned)))
        elif returned[byte] & (1 << bit):
            return None
        returned[byte] |= 1 << bit
        micros = min(hold[2], held[0])  # equal, unless the token lied about its campaign
        held[0] -= micros
        return micros, held[1], bucket.account

    def _give_back(self, account: str, campaign_id: str, micros: int, day: str) -> None:
        """A reservation ended unbilled: out of in-flight, back into the allowance it came from."""
        b = self._budget(campaign_id)  # forgotten (``forget``) only with nothing held: this gives back nothing
        b.reserved -= micros
        self._stage(campaign_id, day, RES_N, micros)
        if day != b.day:
            return  # yesterday's reservation does not refill today's allowance
        if account != self.account:
            back = self.returns.setdefault(account, {})  # a closed account's: it goes back with the return
            back[campaign_id] = back.get(campaign_id, 0) + micros
        else:
            b.available += micros

    def release(self, campaign_id: str, hold: Hold | None) -> None:
        """The event will not be billed (invalid traffic): give its reservation back now, not at expiry."""
        taken = self._take(hold, campaign_id)
        if taken is not None:
            micros, day, account = taken
            self._give_back(account, campaign_id, micros, day)

    def settle(self, campaign_id: str, cost: int, hold: Hold | None = None) -> bool:
        """A billable event arrived: release its reservation (if this ledger holds it) and take the real
        cost. Returns False, taking nothing, when the allowance cannot cover it: the event is not billed."""
        self.touched.add(campaign_id)  # its price, spend or reservations move
        if cost > 0:
            price = self.unit_prices.get(campaign_id)
            self.unit_prices[campaign_id] = cost if price is None else price + (cost - price) * PRICE_WEIGHT
        b = self._budget(campaign_id)
        taken = self._take(hold, campaign_id)
        if taken is not None:
            micros, day, account = taken
            if (day != b.day or account != self.account) and cost <= micros:
                # Decided against yesterday's grants or a closed account's: bill it there (the reservation
                # covers it) and leave today's allowance alone; what the reservation held beyond the cost goes
                # back with that account's return.
                b.reserved -= micros
                b.spent += cost
                self._stage(campaign_id, day, RES_N, micros)
                self._stage(campaign_id, day, CHG_P, cost)
                if day == b.day and micros > cost:
                    self.add_return(account, campaign_id, micros - cost)
                return True
            self._give_back(account, campaign_id, micros, day)
        if b.available < cost or not (self.live or b.counter):
            b.refused += 1
            return False
        b.available -= cost
        b.spent += cost
        self._stage(campaign_id, b.day, CHG_P, cost)
        return True

    def used(self, campaign_id: str) -> int:
        """Micros the campaign spent plus has in flight here (what its spend rate is measured on)."""
        b = self.campaigns.get(campaign_id)
        if b is None:
            return 0
        self._fold_one(campaign_id)
        return b.spent + b._reserved

    def totals(self) -> dict[str, int]:
        """Sums over every campaign here (the edge's allowance gauges), in one piece."""
        *_, sums = self.totals_in_pieces(0)
        assert sums is not None
        return sums

    def totals_in_pieces(self, piece: int) -> Iterator[dict[str, int] | None]:
        """``totals`` ``piece`` campaigns at a time (0: all at once), yielding None between pieces and then
        the sums: the edge lets requests run in between, since in one piece a scrape held its event loop for
        14-34 ms at 100,000 campaigns (``accounting_metrics_scrape_ms_100k``). Each campaign here at the start
        is read once, some a little later than others: gauges, not a balance. Read from the books after one
        fold: through each campaign's properties, a fold apiece, it took 70 ms at 100,000 (one-off)."""
        self.fold()
        budgets, available = list(self.campaigns.values()), list(self.available_by_campaign.values())
        count = max(len(budgets), len(available))
        step = piece if piece > 0 else max(1, count)
        sums = dict.fromkeys(("available", "reserved", "spent", "granted", "refused_events"), 0)
        for start in range(0, count, step):
            if start:
                yield None
            chunk = budgets[start:start + step]
            sums["available"] += sum(available[start:start + step])
            sums["reserved"] += sum(b._reserved for b in chunk)
            sums["spent"] += sum(b.spent for b in chunk)
            sums["granted"] += sum(b.granted for b in chunk)
            sums["refused_events"] += sum(b.refused for b in chunk)
        yield sums

    def in_flight(self, campaign_id: str) -> int:
        """Micros this ledger's buckets still hold for the campaign (equals its ``reserved``)."""
        self.fold()
        return sum(held[0] for bucket in self.buckets.values()
                   if (held := bucket.held.get(campaign_id)) is not None)

    def expire(self, now_s: float) -> int:
        """Give back every bucket whose TTL has run out; returns the micros released."""
        released = 0
        buckets = self.buckets
        self.fold()
        while buckets:
            seq = next(iter(buckets))
            bucket = buckets[seq]
            if bucket.expires_s > now_s:
                break
            del buckets[seq]
            if bucket is self._open:
                self._close_open()
            self._stage_reserved(bucket)  # its reservations, if no drain has staged them yet
            for campaign_id, (micros, day, _) in bucket.held.items():
                if micros:
                    self._give_back(bucket.account, campaign_id, micros, day)
                    released += micros
        return released

    def forget(self, campaign_ids: Iterable[str], *, before_day: str) -> list[str]:
        """Drop the books of campaigns the snapshot no longer has, once nothing of theirs can still move: their
        day is before ``before_day`` (over in every timezone, so what they hold is yesterday's and would be
        dropped at their midnight anyway), nothing is in flight (every hold settled, released or expired),
        nothing is staged for the spend counter and nothing is being offered back. A campaign back in a later
        snapshot (resumed from a pause) starts afresh, as a new one does. Returns the campaigns forgotten.

        Without this the ledger kept an entry per campaign ever served, for the life of the process."""
        self.fold()
        staged = {cid for cid, _ in self.pn}
        forgotten = []
        for campaign_id in campaign_ids:
            b = self.campaigns.get(campaign_id)
            if (b is None or b.day >= before_day or b._reserved or campaign_id in staged
                    or campaign_id in self.giving):
                continue
            del self.campaigns[campaign_id]
            self.available_by_campaign.pop(campaign_id, None)
            self._folded.pop(campaign_id, None)
            self.unit_prices.pop(campaign_id, None)
            self.touched.discard(campaign_id)
            forgotten.append(campaign_id)
        return forgotten

    def mark_exhausted(self, campaign_ids: Iterable[str]) -> None:
        """The allocator says it has nothing left to grant for these (told with any answer, asked or not)."""
        for campaign_id in campaign_ids:
            b = self.campaigns.get(campaign_id)
            if b is not None and not b.exhausted:  # told with every answer: only news moves the campaign
                b.exhausted = True
                self.touched.add(campaign_id)

    def take_excess(self, targets: Mapping[str, int]) -> dict[str, tuple[int, str]]:
        """Allowance to offer back: for a campaign the allocator has run out of (``exhausted``: nothing left
        to grant anyone), what this account holds beyond its target once it holds more than twice the
        target. Late in the day a region whose traffic has gone quiet would otherwise sit on allowance that
        a busier region is starved of. The micros leave the allowance now; ``resolve_giving`` settles them
        when the request's answer comes (one offer in flight at a time)."""
        if self.giving or not self.live:
            return {}
        offer: dict[str, tuple[int, str]] = {}
        for campaign_id, target in targets.items():
            b = self.campaigns.get(campaign_id)
            if b is None or b.counter or not b.exhausted or not b.day or b.available <= 2 * target:
                continue
            excess = b.available - target
            b.available -= excess
            offer[campaign_id] = (excess, b.day)
        if offer:
            self.giving, self.giving_account = offer, self.account
        return offer

    def resolve_giving(self, *, accepted: bool) -> None:
        """The grant request carrying the offer was answered. Accepted: the allocator took the micros back
        (they are no longer granted here). Not accepted (the account had lapsed there, or the request was
        refused): they return to the allowance, or, when the account has closed since, to its return."""
        for campaign_id, (micros, day) in self.giving.items():
            b = self.campaigns[campaign_id]
            if accepted:
                b.granted -= micros
            elif self.giving_account != self.account:
                self.add_return(self.giving_account, campaign_id, micros)
            elif day == b.day:
                b.available += micros
        self.giving, self.giving_account = {}, ""

    def wants(self, targets: dict[str, int], *, now_s: float, retry_s: float) -> dict[str, int]:
        """Campaigns below their low-water mark (half the target) and how much to ask for each."""
        asks: dict[str, int] = {}
        available = self.available_by_campaign
        for campaign_id, target in targets.items():
            if available.get(campaign_id, 0) * 2 >= target:
                continue  # the common case, every 100 ms for every campaign: a dict read
            b = self._budget(campaign_id)
            if b.exhausted and now_s - b.asked_at < retry_s * 20:
                continue
            if now_s - b.asked_at >= retry_s:  # below the low-water mark (checked above)
                asks[campaign_id] = target - b.available
                b.asked_at = now_s
        return asks
