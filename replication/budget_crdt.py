"""The replicated spend counter: a PN-counter of budget spend per campaign and local day, on pycrdt.

Every writer process (one per edge worker, and the control plane) keeps a replica. P takes reservations and
charges, N takes releases and invalid-traffic refunds, both in integer micros; a counter's value is the sum
over writers of P - N. Replicas exchange Yjs updates over NATS on a sync tick and merge them in any order,
any number of times.

pycrdt has no counter type and a Map key is last-writer-wins by client id (ARCHITECTURE §6), so:

- the document is ``root Map "w"`` -> one nested Map per writer (its *slot*, ``"<writer_id>#<epoch>"``) ->
  ``"p:<counter key>"`` / ``"n:<counter key>"`` -> that writer's running total. Only the owner ever writes its
  slot and its totals only grow, so last-writer-wins never has two writers to choose between. A writer id
  must therefore be unique per process *incarnation* (put a boot id in it): a restarted process that reused
  its old id would overwrite its own earlier totals. An update that writes into this replica's slot, lowers
  a total or creates a slot twice is refused (``WriterConflictError``);
- every overwrite leaves a tombstone of about 8-15 bytes (more with larger client ids), so ``add`` only stages
  increments in plain Python memory and ``flush`` writes them in one transaction per sync tick, and a writer
  *compacts*: when its slot holds ``compact_ratio`` tombstones per live total, a flush moves the live totals
  into a new slot (epoch + 1) and deletes the old one, whose whole history yrs then collects on every
  replica. Documents are per period (the UTC day, or an hour) and ``SpendBook`` drops old ones;
- a flush publishes the transaction's own update. ``Doc.get_update(state_vector)`` would also carry the
  document's whole delete set, which grows all day (measured: 3x the bytes after 300 ticks);
- yrs mishandles an update that arrives before an earlier one of its writer (the yjs#461/#591 kind: its
  delete set hides the previous total at once, and in some orders the rest never integrates; reproduced on
  pycrdt 0.14), so ``apply`` holds such a delta back until the gap fills. The writer's ``own_state`` fills
  any gap: send it on request or every few minutes (every 60 s costs about twice the deltas).

Numbers (measured on pycrdt 0.14): a Python int up to 2**53 - 1 is stored as a float64 Number, a larger one
as a 64-bit BigInt, and an int of 2**63 or more makes the Rust side panic (``PanicException``, which is not
an ``Exception``). On the wire a Number is a float32 when that holds it exactly and a float64 otherwise; a
BigInt is a float when one holds it exactly, else 8 bytes. So a replica reads back a float or an int, and
``int()`` of it is exact for every int below 2**63. Totals are capped at ``MAX_MICROS`` = 2**53 - 1 (9.0e15
micros, 9 billion currency units per writer, counter and period) so JavaScript Yjs peers read them exactly
too, and converted back to int at this boundary. (Totals as minimal big-endian byte strings would save ~2
bytes per write, ~9%; numbers keep the document readable by any Yjs peer.)

The client id is in every item's origin: a random 53-bit id (pycrdt's default) takes 8 bytes, an id below
2**21 handed out by the control plane 3. Measured at 10,000 campaigns: 21 vs 14 bytes per written total in
a delta, 15 vs 8 bytes per tombstone.

``apply`` is all or nothing. pycrdt commits whatever integrated before an error, and some damage only shows
after integration (a total that is not int micros, a write into this replica's own slot), so a replica keeps a
checkpoint of its document plus every update since and rebuilds from them when it refuses one. Updates are
also bounded (``MAX_MESSAGE_BYTES``) and sync messages carry a digest.

Pure: no I/O, no clock. The period string, the writer id and (optionally) the client id are passed in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgpack
from pycrdt import Doc, Map, MapEvent, Transaction, merge_updates
from pycrdt import get_state as update_state_vector

# Largest running total one writer may hold for one counter in one period: exact as a float64 (and in JS).
MAX_MICROS = 2**53 - 1
# Yjs client ids are 53-bit in JavaScript.
MAX_CLIENT_ID = 2**53 - 1
MAX_KEY_CHARS = 160
MAX_WRITER_CHARS = 128
# One NATS message. nats-server's max_payload defaults to 1 MiB: raise it to this on the budget subjects. At
# 10,000 campaigns a compacting writer's own state peaks near 3 MB; never compacted, it passes 8 MiB within
# the first hour of 1 s ticks (adserver/crdt_bench.py).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAGIC = "ADSPN"
SCHEMA_VERSION = 1
DIGEST_BYTES = 16

ROOT = "w"
_P = "p:"
_N = "n:"
_NONE = (0, 0)  # a total this writer has not written yet: P and N
_KEY_SEP = "|"
_EPOCH_SEP = "#"
# A UTC day, or an hour of one; periods of one book must share a format (they are ordered as strings).
_PERIOD = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2})?$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Deltas held back while an earlier one of their writer is missing (also bounded by MAX_MESSAGE_BYTES).
MAX_HELD = 1024
# A rollback replays the log onto the checkpoint; the log is folded into a new checkpoint past this size
# (or the checkpoint's size, if larger), so a replica holds at most about three copies of its document.
_LOG_MIN_BYTES = 256 * 1024


class CrdtDecodeError(ValueError):
    """An update or a sync message was refused; the replica is unchanged."""


class WriterConflictError(CrdtDecodeError):
    """An update writes into this replica's own slot, replaces a slot or lowers a total: two processes
    share a writer id (a restart that reused it?) or a peer is broken."""


class StalePeriodError(ValueError):
    """The period is older than the ones a ``SpendBook`` keeps."""


def check_period(period: str) -> str:
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise ValueError(f"period {period!r} must be a UTC day YYYY-MM-DD or hour YYYY-MM-DDTHH")
    try:
        date.fromisoformat(period[:10])
    except ValueError as exc:
        raise ValueError(f"period {period!r} is not a calendar day") from exc
    if len(period) > 10 and int(period[11:]) > 23:
        raise ValueError(f"period {period!r} has an hour past 23")
    return period


def check_writer_id(writer_id: str) -> str:
    if (
        not isinstance(writer_id, str)
        or not 0 < len(writer_id) <= MAX_WRITER_CHARS
        or not writer_id.isprintable()
        or _EPOCH_SEP in writer_id
    ):
        raise ValueError(f"writer id {writer_id!r} must be 1-{MAX_WRITER_CHARS} printable characters, not {_EPOCH_SEP}")
    return writer_id


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise ValueError(f"counter key {key!r} must be 1-{MAX_KEY_CHARS} printable characters")
    return key


def set_all(target: Map, txn: Transaction, items: Iterable[tuple[str, int]]) -> None:
    """``target[key] = value`` for each item, inside ``txn`` (open on ``target``'s document). ``Map.__setitem__``
    opens a nested transaction and type-checks the value on every write, which made a busy edge's spend sync
    flush (about 1,200 totals every 500 ms) hold the event loop for 8-16 ms (``accounting_spend_sync_ms_*`` of
    ``adserver bench --only accounting``); for a number it then makes
    exactly this call into yrs (``Map._set``, pycrdt 0.14), made here directly: 1.8 ms instead of 6.2 for
    1,200 writes (one-off timing). A test checks both ways give the same document (``pyproject.toml`` keeps
    pycrdt to the 0.14 series it was checked on); a map without these internals gets the public way."""
    try:
        insert, inner = target.integrated.insert, txn._txn
    except (AttributeError, RuntimeError):  # RuntimeError: a map not in a document yet
        inner = None
    if inner is None:
        for key, value in items:
            target[key] = value
        return
    for key, value in items:
        insert(inner, key, value)


def counter_key(campaign_id: str, local_day: str) -> str:
    """The counter of one campaign's spend on one campaign-local day: ``"<campaign_id>|<YYYY-MM-DD>"``."""
    if not isinstance(campaign_id, str) or not campaign_id or _KEY_SEP in campaign_id:
        raise ValueError(f"campaign id {campaign_id!r} must be non-empty and hold no {_KEY_SEP!r}")
    if not isinstance(local_day, str) or not _DAY.match(local_day):
        raise ValueError(f"local day {local_day!r} must be YYYY-MM-DD")
    return _check_key(f"{campaign_id}{_KEY_SEP}{local_day}")


def parse_counter_key(key: str) -> tuple[str, str]:
    """The inverse of ``counter_key``: ``(campaign_id, local_day)``."""
    campaign_id, sep, local_day = key.rpartition(_KEY_SEP) if isinstance(key, str) else ("", "", "")
    if not sep or not campaign_id or _KEY_SEP in campaign_id or not _DAY.match(local_day):
        raise ValueError(f"{key!r} is not a counter key 'campaign_id|YYYY-MM-DD'")
    return campaign_id, local_day


def _micros(value: Any) -> int | None:
    """A stored total back to int micros; None when it is not one (wrong type, fractional, out of range)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_MICROS:
        return value
    return None


# --- state vectors: varuint count, then (client, clock) varuint pairs (lib0 encoding) --------------------


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CrdtDecodeError("truncated or oversized varint in state vector")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _write_varuint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode_state_vector(data: bytes) -> dict[int, int]:
    """client id -> next clock, as in ``Doc.get_state()``."""
    count, pos = _read_varuint(data, 0)
    result: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        result[client] = clock
    if pos != len(data):
        raise CrdtDecodeError("trailing bytes after state vector")
    return result


def _first_group(update: bytes) -> tuple[int, int, int] | None:
    """(client groups, client, start clock) from the head of a v1 update (whose first client group begins
    with its struct count, client id and first clock); None when it holds no structs."""
    groups, pos = _read_varuint(update, 0)
    if groups == 0:
        return None
    _, pos = _read_varuint(update, pos)
    client, pos = _read_varuint(update, pos)
    start, _ = _read_varuint(update, pos)
    return groups, client, start


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    out = bytearray()
    _write_varuint(len(clocks), out)
    for client, clock in clocks.items():
        _write_varuint(client, out)
        _write_varuint(clock, out)
    return bytes(out)


_Changes = dict[tuple[str, str], list[int | None]]  # (writer, counter key) -> [new P or None, new N or None]


def _slot_key(writer_id: str, epoch: int) -> str:
    return f"{writer_id}{_EPOCH_SEP}{epoch}"


def _parse_slot_key(slot_key: str) -> tuple[str, int] | None:
    writer_id, sep, epoch = slot_key.rpartition(_EPOCH_SEP)
    if not sep or not epoch.isdigit() or len(epoch) > 9 or (len(epoch) > 1 and epoch[0] == "0"):
        return None
    try:
        check_writer_id(writer_id)
    except ValueError:
        return None
    return writer_id, int(epoch)


class _Findings:
    """What an update changed and what is wrong with it, gathered by the observer (which must not raise)."""

    __slots__ = ("changes", "conflict", "epochs", "events", "messages", "retired")

    def __init__(self) -> None:
        self.changes: _Changes = {}
        self.epochs: dict[str, int] = {}  # writer -> newest slot epoch added by this update
        self.messages: list[str] = []
        self.conflict = False
        self.events = 0  # change events seen: none means the update changed nothing visible
        self.retired = 0  # slots deleted by a compaction

    def problem(self, message: str, *, conflict: bool = False) -> None:
        self.messages.append(message)
        self.conflict = self.conflict or conflict


class SpendCounter:
    """One writer's replica of the spend counters of one period.

    Reads (``value``, ``pn``, ``totals``, ``by_writer``) come from a Python mirror kept in step with the
    document, so they cost no document walk, and they include this writer's staged, not yet flushed
    increments: a process always sees its own spend at once.

    Compaction: a writer's slot is ``"<writer_id>#<epoch>"``. Once the tombstones in it outnumber its live
    totals ``compact_ratio`` times, a flush writes every live total into a fresh slot ``#<epoch + 1>`` and
    deletes the old one in the same transaction; yrs then garbage-collects the old slot's whole history, on
    every replica. A live total takes ~44 bytes and a tombstone ~14, so a writer's part of the document stays
    under about ``1 + compact_ratio / 3`` times its live data, for one extra write of all its live totals
    every ``compact_ratio x live`` overwrites (adserver/crdt_bench.py measures the trade-off).
    ``compact_ratio=None`` never compacts.
    """

    def __init__(
        self,
        writer_id: str,
        period: str,
        *,
        client_id: int | None = None,
        compact_ratio: float | None = 8.0,
    ) -> None:
        self._writer_id = check_writer_id(writer_id)
        self._period = check_period(period)
        if client_id is not None and (
            isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 < client_id <= MAX_CLIENT_ID
        ):
            raise ValueError(f"client id {client_id!r} must be an int in 1..2**53-1")
        if compact_ratio is not None and not compact_ratio > 0:
            raise ValueError(f"compact_ratio must be > 0 or None, got {compact_ratio!r}")
        self._compact_ratio = compact_ratio
        # pycrdt draws a random 53-bit id when none is given: a collision between two writers of one
        # document would corrupt both silently, so a shorter random id is not worth its few bytes.
        self._doc: Doc = Doc(client_id=client_id)
        self._client_id: int = self._doc.client_id
        self._root: Map = self._doc.get(ROOT, type=Map)
        self._epoch = 0
        self._slot: Map | None = None
        self._live = 0  # own non-zero totals (P and N sides) in the slot
        self._overwrites = 0  # own totals replaced since the slot was created: its tombstones
        # writer -> counter key -> [P, N], as flushed (own) or merged (others)
        self._data: dict[str, dict[str, list[int]]] = {}
        self._epochs: dict[str, int] = {}  # other writers' newest slot epoch seen
        # counter key -> [P, N] increments not yet flushed
        self._staged: dict[str, list[int]] = {}
        # counter key -> [P, N] over all writers, staged included
        self._sums: dict[str, list[int]] = {}
        # For a rollback: an earlier full state plus every update accepted since, replayed in order.
        self._checkpoint: bytes = self._doc.get_update()
        self._log: list[bytes] = []
        self._log_bytes = 0
        # (client, start clock) -> a delta that starts past what we have of its writer (see ``apply``)
        self._held: dict[tuple[int, int], bytes] = {}
        self._held_bytes = 0
        self._dropped = 0

    # --- identity ------------------------------------------------------------------------------------------

    @property
    def writer_id(self) -> str:
        return self._writer_id

    @property
    def period(self) -> str:
        return self._period

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def epoch(self) -> int:
        """This writer's slot generation: one more per compaction."""
        return self._epoch

    @property
    def dirty(self) -> bool:
        """Increments are staged and not flushed yet."""
        return bool(self._staged)

    # --- writing -------------------------------------------------------------------------------------------

    def add(self, key: str, p: int = 0, n: int = 0) -> None:
        """Stage an increment (cheap: called per ad decision or beacon; no document work)."""
        for name, amount in (("p", p), ("n", n)):
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise ValueError(f"{name} must be int micros, not {type(amount).__name__}")
            if amount < 0:
                raise ValueError(f"{name} must be >= 0 (P and N only grow), got {amount}")
        staged = self._staged.get(key)
        if staged is None:
            _check_key(key)
            if not p and not n:
                return
            staged = [0, 0]
        own = self._data.get(self._writer_id, {}).get(key, (0, 0))
        if own[0] + staged[0] + p > MAX_MICROS or own[1] + staged[1] + n > MAX_MICROS:
            raise ValueError(f"counter {key!r} of writer {self._writer_id!r} would pass {MAX_MICROS} micros")
        staged[0] += p
        staged[1] += n
        self._staged[key] = staged
        sums = self._sums.setdefault(key, [0, 0])
        sums[0] += p
        sums[1] += n

    def flush(self) -> bytes | None:
        """Write every staged increment into the document in one transaction (only the sides that changed;
        all live totals into a fresh slot when compaction is due) and return that transaction's update, or
        None when nothing changed."""
        if not self._staged:
            return None
        own = self._data.get(self._writer_id, {})
        writes: list[tuple[str, str, int]] = []
        replaced = 0
        for key, (dp, dn) in self._staged.items():  # once per moved total: no per-side tuples here
            cur = own.get(key, _NONE)
            if dp:
                writes.append((key, _P, cur[0] + dp))
                replaced += cur[0] > 0
            if dn:
                writes.append((key, _N, cur[1] + dn))
                replaced += cur[1] > 0
        if not writes:
            self._staged.clear()
            return None
        live = self._live + len(writes) - replaced
        if self._compact_ratio is not None and self._overwrites + replaced >= self._compact_ratio * live:
            return self.compact()
        update = self._transact(writes, new_slot=False)
        self._overwrites += replaced
        self._live = live
        return update

    def compact(self) -> bytes | None:
        """Move every live total of this writer (staged increments included) into a fresh slot and delete the
        old one, in one transaction; return its update, or None when this writer has nothing."""
        totals = {key: list(pn) for key, pn in self._data.get(self._writer_id, {}).items()}
        for key, (dp, dn) in self._staged.items():
            entry = totals.setdefault(key, [0, 0])
            entry[0] += dp
            entry[1] += dn
        writes = [(key, side, value) for key, (p, n) in totals.items() for side, value in ((_P, p), (_N, n)) if value]
        if not writes:
            self._staged.clear()
            return None
        update = self._transact(writes, new_slot=True)
        self._live, self._overwrites = len(writes), 0
        # Squash the collected history in memory too: a document loaded from its own update is compact.
        self._reload()
        return update

    def _transact(self, writes: list[tuple[str, str, int]], *, new_slot: bool) -> bytes:
        """Write totals in one transaction (into a fresh slot, deleting the old one, when ``new_slot``);
        commit them to the mirror and return the transaction's update."""
        updates: list[bytes] = []
        subscription = self._doc.observe(lambda event: updates.append(event.update))
        try:
            with self._doc.transaction() as txn:
                old = self._own_slot() if new_slot and self._slot is not None else None
                if new_slot and old is not None:
                    self._epoch += 1
                    self._slot = None
                set_all(self._own_slot(), txn, ((side + key, total) for key, side, total in writes))
                if old is not None:
                    del self._root[_slot_key(self._writer_id, self._epoch - 1)]
        finally:
            self._doc.unobserve(subscription)
        own = self._data.setdefault(self._writer_id, {})
        for key, side, total in writes:
            own.setdefault(key, [0, 0])[0 if side == _P else 1] = total
        self._staged.clear()
        update = updates[0] if len(updates) == 1 else merge_updates(*updates)  # one transaction: one event
        self._remember(update)
        return update

    def _own_slot(self) -> Map:
        if self._slot is None:
            if self._epoch == 0 and any(
                (parsed := _parse_slot_key(k)) is not None and parsed[0] == self._writer_id for k in self._root
            ):
                raise WriterConflictError(f"writer id {self._writer_id!r} already has a slot in this document")
            slot: Map = Map()
            self._root[_slot_key(self._writer_id, self._epoch)] = slot
            self._slot = slot
        return self._slot

    # --- exchanging ----------------------------------------------------------------------------------------

    def own_state(self) -> bytes:
        """Everything this writer ever flushed in this period (plus the document's delete set): repairs a
        replica that missed a delta. Sent every few ticks."""
        others = decode_state_vector(self._doc.get_state())
        others.pop(self._client_id, None)
        return self._doc.get_update(encode_state_vector(others))

    def state(self) -> bytes:
        """The whole document as one update (all writers)."""
        return self._doc.get_update()

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """What a replica with ``state_vector`` lacks."""
        if not isinstance(state_vector, bytes):
            raise CrdtDecodeError(f"state vector must be bytes, not {type(state_vector).__name__}")
        decode_state_vector(state_vector)
        return self._doc.get_update(state_vector)

    def apply(self, update: bytes) -> None:
        """Merge a remote update: idempotent, in any order, duplicates fine.

        A one-writer update (a flushed delta) that starts past what this replica has of its writer is held
        here, not handed to pycrdt, until the gap fills (or the writer's own state arrives): yrs applies a
        waiting update's delete set at once, which hides the writer's previous total, and in some orders
        never integrates the rest (yjs#461, yjs#591; reproduced with pycrdt 0.14: deltas d0, d2, d1 of one
        writer leave d2's overwrite out for good).

        Raises ``CrdtDecodeError`` (or ``WriterConflictError``) and leaves the replica as it was when the
        update does not decode, does not integrate, or breaks the counter's rules."""
        if not isinstance(update, bytes):
            raise CrdtDecodeError(f"update must be bytes, not {type(update).__name__}")
        if len(update) > MAX_MESSAGE_BYTES:
            raise CrdtDecodeError(f"update of {len(update)} bytes is over {MAX_MESSAGE_BYTES}")
        try:
            # Decodes the whole update without touching the document: most damage stops here.
            update_state_vector(update)
            head = _first_group(update)
        except Exception as exc:
            raise CrdtDecodeError(f"update does not decode: {exc}") from exc
        if head is not None:
            groups, client, start = head
            if groups == 1 and start > self._clocks().get(client, 0):
                self._hold(client, start, update)
                return
        self._integrate(update)
        self._release()

    @property
    def held(self) -> int:
        """Updates waiting for an earlier one of their writer."""
        return len(self._held)

    @property
    def dropped(self) -> int:
        """Held updates given up: over the bound, or refused once their turn came (the writer's next own
        state repairs either)."""
        return self._dropped

    def _clocks(self) -> dict[int, int]:
        return decode_state_vector(self._doc.get_state())

    def _hold(self, client: int, start: int, update: bytes) -> None:
        if (client, start) in self._held:
            return
        if len(self._held) >= MAX_HELD or self._held_bytes + len(update) > MAX_MESSAGE_BYTES:
            self._dropped += 1
            return
        self._held[(client, start)] = update
        self._held_bytes += len(update)

    def _release(self) -> None:
        while self._held:
            clocks = self._clocks()
            ready = sorted(k for k in self._held if k[1] <= clocks.get(k[0], 0))
            if not ready:
                return
            for key in ready:
                update = self._held.pop(key)
                self._held_bytes -= len(update)
                try:
                    self._integrate(update)
                except CrdtDecodeError:
                    # Its own apply() returned long ago: count it, the writer's own state repairs.
                    self._dropped += 1

    def _integrate(self, update: bytes) -> None:
        found = _Findings()
        clocks = self._doc.get_state()
        subscription = self._root.observe_deep(lambda events: self._collect(events, found))
        try:
            self._doc.apply_update(update)
        except BaseException as exc:
            # A Rust panic surfaces as pyo3's PanicException, a BaseException: a refused update all the same.
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            found.problem(f"update does not integrate: {exc}")
        finally:
            self._root.unobserve(subscription)
        if not found.messages:
            self._check_monotonic(found)
        if found.messages:
            # pycrdt commits whatever integrated before the error: rebuild the document, keep the mirror
            # (it was not touched).
            self._rebuild(self._checkpoint, self._log)
            error = WriterConflictError if found.conflict else CrdtDecodeError
            raise error(f"update refused for {self._period}: {'; '.join(found.messages[:5])}")
        self._commit(found)
        if found.events or self._doc.get_state() != clocks:
            self._remember(update)  # a duplicate (say, a writer's periodic own state) need not be replayed
        if found.retired:
            self._reload()  # squash the retired slot's collected history, as its writer did

    def _collect(self, events: list[Any], found: _Findings) -> None:
        """Deep observer of the root during ``apply``: note the new totals, never raise (pycrdt would raise
        an ExceptionGroup at commit, after the transaction is already in)."""
        found.events += len(events)
        try:
            # Slots first: a compaction's new slot decides which epoch the other changes belong to.
            for event in sorted(events, key=lambda e: len(e.path) if isinstance(e, MapEvent) else -1):
                if not isinstance(event, MapEvent):
                    found.problem(f"unexpected event {type(event).__name__}")
                elif not event.path:
                    if not event.keys:
                        # Something integrated into the root and changed nothing: a second map for a slot
                        # that already had one, which lost to it (a writer id used by two clients).
                        found.problem("a slot was created a second time and lost", conflict=True)
                    for slot_key, change in event.keys.items():
                        self._collect_slot(slot_key, change, found)
                elif len(event.path) == 1 and isinstance(event.path[0], str):
                    writer_epoch = self._slot_owner(event.path[0], found)
                    if writer_epoch is not None:
                        for side_key, change in event.keys.items():
                            self._collect_value(writer_epoch[0], side_key, change.get("action"),
                                                change.get("newValue"), found)
                else:
                    found.problem(f"change at unexpected depth {event.path!r}")
        except Exception as exc:
            found.problem(f"unreadable change: {exc!r}")

    def _slot_owner(self, slot_key: str, found: _Findings) -> tuple[str, int] | None:
        """(writer, epoch) of a slot whose changes count; None (after noting any problem) otherwise."""
        parsed = _parse_slot_key(slot_key)
        if parsed is None:
            found.problem(f"{slot_key[:60]!r} is not a slot key 'writer#epoch'")
            return None
        writer, epoch = parsed
        if writer == self._writer_id:
            found.problem(f"a remote update writes into this replica's slot {slot_key!r}", conflict=True)
            return None
        if epoch < max(self._epochs.get(writer, 0), found.epochs.get(writer, 0)):
            return None  # a retired slot: its totals live on, as large or larger, in a newer one
        return parsed

    def _collect_slot(self, slot_key: str, change: dict[str, Any], found: _Findings) -> None:
        action, slot = change.get("action"), change.get("newValue")
        if action == "delete":
            found.retired += 1  # a compaction retiring an old slot (its totals are in the new one)
            return
        owner = self._slot_owner(slot_key, found)
        if owner is None:
            return
        if action != "add":
            # Two clients created this slot (a reused writer id): one of them just lost its whole map.
            found.problem(f"slot {slot_key!r} was {action or 'changed'} (only ever added)", conflict=True)
            return
        if not isinstance(slot, Map):
            found.problem(f"slot {slot_key!r} is a {type(slot).__name__}, not a Map")
            return
        writer, epoch = owner
        found.epochs[writer] = max(epoch, found.epochs.get(writer, 0))
        # Contents added with the slot raise no events of their own: read the slot (JSON is ~3x faster than
        # item by item, and prints integral numbers as ints).
        for side_key, value in json.loads(str(slot)).items():
            self._collect_value(writer, side_key, "add", value, found)

    def _collect_value(self, writer: str, side_key: str, action: Any, value: Any, found: _Findings) -> None:
        side, key = side_key[:2], side_key[2:]
        micros = _micros(value)
        if action == "delete":
            # What yrs does with a waiting update's delete set (see ``apply``) when a multi-writer update has
            # a gap: the writer's old total disappears from the document until its new one integrates. The
            # mirror keeps the old total; totals only grow, so nothing is lost.
            return
        if action not in ("add", "update"):
            found.problem(f"{writer!r} {side_key!r} was {action!r}")
        elif side not in (_P, _N) or not key or len(key) > MAX_KEY_CHARS:
            found.problem(f"{writer!r} holds a foreign key {side_key[:40]!r}")
        elif micros is None:
            found.problem(f"{writer!r} {side_key!r} holds {value!r}, not int micros in 0..{MAX_MICROS}")
        else:
            entry = found.changes.setdefault((writer, key), [None, None])
            entry[0 if side == _P else 1] = micros

    def _check_monotonic(self, found: _Findings) -> None:
        for (writer, key), new in found.changes.items():
            old = self._data.get(writer, {}).get(key, (0, 0))
            for i, name in ((0, "P"), (1, "N")):
                value = new[i]
                if value is not None and value < old[i]:
                    found.problem(f"{writer!r} {name} of {key!r} went down from {old[i]} to {value}", conflict=True)

    def _commit(self, found: _Findings) -> None:
        for writer, epoch in found.epochs.items():
            self._epochs[writer] = max(epoch, self._epochs.get(writer, 0))
        for (writer, key), new in found.changes.items():
            entry = self._data.setdefault(writer, {}).setdefault(key, [0, 0])
            sums = self._sums.setdefault(key, [0, 0])
            for i in (0, 1):
                value = new[i]
                if value is not None:
                    sums[i] += value - entry[i]
                    entry[i] = value

    def _remember(self, update: bytes) -> None:
        self._log.append(update)
        self._log_bytes += len(update)
        if self._log_bytes > max(_LOG_MIN_BYTES, len(self._checkpoint)):
            self._reload()

    def _reload(self) -> None:
        """Fold the log into a new checkpoint and reload the document from it: yrs leaves collected history
        (a compacted slot) in memory as many small blocks, which a fresh load merges. Updates still waiting
        inside yrs for their dependencies are not in ``get_update()`` and go; their writers' own states
        bring them back."""
        checkpoint = self._doc.get_update()
        self._rebuild(checkpoint, [])
        self._checkpoint, self._log, self._log_bytes = checkpoint, [], 0

    def _rebuild(self, checkpoint: bytes, log: list[bytes]) -> None:
        doc: Doc = Doc(client_id=self._client_id)
        root: Map = doc.get(ROOT, type=Map)
        for update in (checkpoint, *log):
            doc.apply_update(update)
        self._doc, self._root = doc, root
        self._slot = root.get(_slot_key(self._writer_id, self._epoch))

    # --- reading -------------------------------------------------------------------------------------------

    def value(self, key: str) -> int:
        """Spend of ``key``: the sum over writers of P - N."""
        sums = self._sums.get(key)
        return 0 if sums is None else sums[0] - sums[1]

    def pn(self, key: str) -> tuple[int, int]:
        """(sum of P, sum of N) over writers."""
        sums = self._sums.get(key)
        return (0, 0) if sums is None else (sums[0], sums[1])

    def totals(self) -> dict[str, int]:
        return {key: p - n for key, (p, n) in self._sums.items()}

    def by_writer(self) -> dict[str, dict[str, tuple[int, int]]]:
        """writer -> counter key -> (P, N)."""
        result = {writer: {key: (p, n) for key, (p, n) in values.items()} for writer, values in self._data.items()}
        if self._staged:
            own = result.setdefault(self._writer_id, {})
            for key, (dp, dn) in self._staged.items():
                p, n = own.get(key, (0, 0))
                own[key] = (p + dp, n + dn)
        return result

    def writers(self) -> frozenset[str]:
        return frozenset(self._data)


@dataclass(frozen=True, slots=True)
class SyncMessage:
    """One NATS message of the budget sync: a writer's delta (``full=False``) or its own state."""

    writer_id: str
    period: str
    update: bytes
    full: bool


def _digest(writer_id: str, period: str, full: bool, update: bytes) -> bytes:
    head = f"{writer_id}\x00{period}\x00{int(full)}\x00".encode()
    return hashlib.blake2b(head + update, digest_size=DIGEST_BYTES).digest()


def encode_sync(writer_id: str, period: str, update: bytes, full: bool) -> bytes:
    """msgpack ``[magic, schema, writer_id, period, full, digest, update]``. The digest catches a damaged
    update before pycrdt sees it (a flipped byte can still decode, to a wrong total)."""
    check_writer_id(writer_id)
    check_period(period)
    if not isinstance(update, bytes) or not isinstance(full, bool):
        raise ValueError("update must be bytes and full a bool")
    data: bytes = msgpack.packb(
        [MAGIC, SCHEMA_VERSION, writer_id, period, full, _digest(writer_id, period, full, update), update],
        use_bin_type=True,
    )
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"sync message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}: use shorter periods")
    return data


def decode_sync(data: bytes) -> SyncMessage:
    if not isinstance(data, bytes):
        raise CrdtDecodeError(f"sync message must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise CrdtDecodeError(f"sync message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=True, max_array_len=16, max_map_len=0)
    except Exception as exc:
        raise CrdtDecodeError(f"not a msgpack sync message: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 7:
        raise CrdtDecodeError("sync message must be an array of 7 fields")
    magic, schema, writer_id, period, full, digest, update = fields
    if magic != MAGIC:
        raise CrdtDecodeError(f"bad magic {magic!r}")
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise CrdtDecodeError(f"unsupported schema {schema!r}, this replica reads {SCHEMA_VERSION}")
    try:
        check_writer_id(writer_id)
        check_period(period)
    except ValueError as exc:
        raise CrdtDecodeError(str(exc)) from exc
    if not isinstance(full, bool):
        raise CrdtDecodeError(f"full must be a bool, not {type(full).__name__}")
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise CrdtDecodeError(f"digest must be {DIGEST_BYTES} bytes")
    if not isinstance(update, bytes):
        raise CrdtDecodeError(f"update must be bytes, not {type(update).__name__}")
    if digest != _digest(writer_id, period, full, update):
        raise CrdtDecodeError("digest mismatch: damaged message")
    return SyncMessage(writer_id=writer_id, period=period, update=update, full=full)


class SpendBook:
    """One writer's replicas, one ``SpendCounter`` per period, the newest ``keep_periods`` of them.

    A campaign-local day overlaps two UTC days (and many hours), so a counter key's spend is the sum over
    the periods kept: keep enough of them to cover the longest local day in use.
    """

    def __init__(
        self,
        writer_id: str,
        keep_periods: int = 3,
        *,
        client_id: int | None = None,
        compact_ratio: float | None = 8.0,
    ) -> None:
        self._writer_id = check_writer_id(writer_id)
        self._compact_ratio = compact_ratio
        if isinstance(keep_periods, bool) or not isinstance(keep_periods, int) or keep_periods < 1:
            raise ValueError(f"keep_periods must be an int >= 1, got {keep_periods!r}")
        self._keep = keep_periods
        self._client_id = client_id  # one id for all periods is fine: each period is its own document
        self._counters: dict[str, SpendCounter] = {}
        self._floor = ""

    @property
    def writer_id(self) -> str:
        return self._writer_id

    @property
    def periods(self) -> tuple[str, ...]:
        return tuple(sorted(self._counters))

    def get(self, period: str) -> SpendCounter | None:
        return self._counters.get(period)

    def counter(self, period: str) -> SpendCounter:
        """The replica for ``period``, created on first use; the oldest ones beyond ``keep_periods`` go."""
        existing = self._counters.get(period)
        if existing is not None:
            return existing
        check_period(period)
        if period < self._floor or (len(self._counters) >= self._keep and period < min(self._counters)):
            raise StalePeriodError(f"period {period} is older than the ones kept ({', '.join(self.periods)})")
        created = SpendCounter(self._writer_id, period, client_id=self._client_id, compact_ratio=self._compact_ratio)
        self._counters[period] = created
        for old in sorted(self._counters)[: max(0, len(self._counters) - self._keep)]:
            del self._counters[old]
        return created

    def drop_older_than(self, period: str) -> list[str]:
        """Forget every period before ``period`` and refuse them from now on; returns the dropped ones."""
        check_period(period)
        self._floor = max(self._floor, period)
        dropped = [p for p in sorted(self._counters) if p < period]
        for p in dropped:
            del self._counters[p]
        return dropped

    def add(self, period: str, key: str, p: int = 0, n: int = 0) -> None:
        self.counter(period).add(key, p, n)

    def flush(self) -> list[SyncMessage]:
        """Every period's delta, as messages ready for ``encode_sync``."""
        out = []
        for period in self.periods:
            update = self._counters[period].flush()
            if update is not None:
                out.append(SyncMessage(self._writer_id, period, update, full=False))
        return out

    def own_states(self) -> list[SyncMessage]:
        return [SyncMessage(self._writer_id, p, self._counters[p].own_state(), full=True) for p in self.periods]

    def receive(self, message: SyncMessage) -> bool:
        """Merge a peer's message; False when its period is no longer kept. Raises ``CrdtDecodeError``."""
        try:
            counter = self.counter(message.period)
        except StalePeriodError:
            return False
        counter.apply(message.update)
        return True

    def value(self, key: str) -> int:
        return sum(c.value(key) for c in self._counters.values())

    def totals(self, periods: Iterable[str] | None = None) -> dict[str, int]:
        """Counter key -> spend summed over the kept periods (or the given ones)."""
        chosen = self.periods if periods is None else [p for p in periods if p in self._counters]
        result: dict[str, int] = {}
        for period in chosen:
            for key, value in self._counters[period].totals().items():
                result[key] = result.get(key, 0) + value
        return result
