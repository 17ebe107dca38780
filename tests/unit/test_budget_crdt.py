"""The spend PN-counter on pycrdt: CRDT laws, exact big values, repair by own state, refused updates leave a
replica as it was, period rotation and the sync message codec."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from replication import budget_crdt
from replication.budget_crdt import (
    MAX_MESSAGE_BYTES,
    MAX_MICROS,
    CrdtDecodeError,
    SpendBook,
    SpendCounter,
    StalePeriodError,
    SyncMessage,
    WriterConflictError,
    check_period,
    counter_key,
    decode_state_vector,
    decode_sync,
    encode_state_vector,
    encode_sync,
    parse_counter_key,
)

DAY = "2026-11-24"
KEYS = [counter_key(f"c{i}", DAY) for i in range(4)]
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAWS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One writer's history: ticks of increments (key, p, n), each tick flushed once.
increment = st.tuples(st.sampled_from(KEYS), st.integers(0, 10**12), st.integers(0, 10**9))
ticks = st.lists(st.lists(increment, max_size=4), min_size=1, max_size=6)
histories = st.lists(ticks, min_size=1, max_size=3)

Expected = dict[str, dict[str, tuple[int, int]]]
# Writers compact never, often, or at almost every flush, so the laws also hold across slot epochs.
RATIOS = (None, 1.0, 0.3)


def play(history: list[list[list[tuple[str, int, int]]]]) -> tuple[list[list[bytes]], Expected]:
    """Run each writer's ticks; return its flushed deltas in order and what every replica must end with."""
    deltas, increments = play_deltas(history)
    return deltas, expected_for(increments, [len(ds) for ds in deltas])


def play_deltas(history) -> tuple[list[list[bytes]], list[list[list[tuple[str, str, int, int]]]]]:
    """Each writer's deltas, and the increments (writer, key, p, n) each delta carries."""
    deltas: list[list[bytes]] = []
    increments: list[list[list[tuple[str, str, int, int]]]] = []
    for w, writer_ticks in enumerate(history):
        writer = SpendCounter(f"pop{w}/worker/boot", DAY, client_id=100 + w, compact_ratio=RATIOS[w % 3])
        out, carried = [], []
        for tick in writer_ticks:
            for key, p, n in tick:
                writer.add(key, p, n)
            update = writer.flush()
            if update is not None:
                out.append(update)
                carried.append([(writer.writer_id, key, p, n) for key, p, n in tick if p or n])
        deltas.append(out)
        increments.append(carried)
    return deltas, increments


def expected_for(increments, prefixes: list[int]) -> Expected:
    """writer -> key -> (P, N) after the first ``prefixes[w]`` deltas of each writer."""
    expected: Expected = {}
    for w, carried in enumerate(increments):
        for delta in carried[: prefixes[w]]:
            for writer, key, p, n in delta:
                old = expected.setdefault(writer, {}).get(key, (0, 0))
                expected[writer][key] = (old[0] + p, old[1] + n)
    return expected


def totals_of(expected: Expected) -> dict[str, int]:
    result: dict[str, int] = {}
    for values in expected.values():
        for key, (p, n) in values.items():
            result[key] = result.get(key, 0) + p - n
    return result


def replica(name: str = "cp", client_id: int = 9) -> SpendCounter:
    return SpendCounter(name, DAY, client_id=client_id)


def merged(*sources: SpendCounter, client_id: int = 7) -> SpendCounter:
    out = replica("merge", client_id)
    for source in sources:
        out.apply(source.state())
    return out


def view(counter: SpendCounter) -> tuple[dict[str, int], Expected]:
    return counter.totals(), counter.by_writer()


def prefix_replica(deltas: list[list[bytes]], prefixes: list[int], rnd: random.Random, client_id: int) -> SpendCounter:
    """A replica holding the first ``prefixes[w]`` deltas of each writer, delivered shuffled, some twice."""
    chosen = [d for w, ds in enumerate(deltas) for d in ds[: prefixes[w]]]
    chosen += rnd.choices(chosen, k=len(chosen) // 2) if chosen else []
    rnd.shuffle(chosen)
    out = replica(f"r{client_id}", client_id)
    for update in chosen:
        out.apply(update)
    return out


# --- CRDT laws -----------------------------------------------------------------------------------------------


@LAWS
@given(histories, st.randoms(use_true_random=False))
def test_value_is_the_sum_of_increments_under_any_order_and_duplication(history, rnd):
    deltas, expected = play(history)
    everything = [d for ds in deltas for d in ds]
    delivered = everything + rnd.choices(everything, k=len(everything)) if everything else []
    rnd.shuffle(delivered)
    receiver = replica()
    for update in delivered:
        receiver.apply(update)
    assert receiver.by_writer() == expected
    assert receiver.totals() == totals_of(expected)
    for key, total in totals_of(expected).items():
        assert receiver.value(key) == total


@LAWS
@given(histories, st.data())
def test_merge_is_commutative(history, data):
    deltas, increments = play_deltas(history)
    rnd = data.draw(st.randoms(use_true_random=False))
    px = [data.draw(st.integers(0, len(ds))) for ds in deltas]
    py = [data.draw(st.integers(0, len(ds))) for ds in deltas]
    x, y = prefix_replica(deltas, px, rnd, 11), prefix_replica(deltas, py, rnd, 12)
    xy, yx = merged(x, y), merged(y, x)
    assert view(xy) == view(yx)
    want = expected_for(increments, [max(a, b) for a, b in zip(px, py, strict=True)])
    assert xy.by_writer() == want
    assert xy.totals() == totals_of(want)


@LAWS
@given(histories, st.data())
def test_merge_is_associative(history, data):
    deltas, _ = play(history)
    rnd = data.draw(st.randoms(use_true_random=False))
    x, y, z = (
        prefix_replica(deltas, [data.draw(st.integers(0, len(ds))) for ds in deltas], rnd, cid)
        for cid in (11, 12, 13)
    )
    left = merged(merged(x, y, client_id=21), z)
    right = merged(x, merged(y, z, client_id=22))
    assert view(left) == view(right)


@LAWS
@given(histories, st.data())
def test_merge_is_idempotent(history, data):
    deltas, _ = play(history)
    rnd = data.draw(st.randoms(use_true_random=False))
    x = prefix_replica(deltas, [data.draw(st.integers(0, len(ds))) for ds in deltas], rnd, 11)
    y = prefix_replica(deltas, [data.draw(st.integers(0, len(ds))) for ds in deltas], rnd, 12)
    before, vector = view(x), x.state_vector()
    x.apply(x.state())
    assert (view(x), x.state_vector()) == (before, vector)
    once = merged(x, y)
    twice = merged(x, y, y, x)
    assert view(once) == view(twice)


@LAWS
@given(histories, st.data())
def test_a_receiver_that_missed_a_delta_converges_on_the_writers_own_state(history, data):
    deltas, expected = play(history)
    writers = [w for w, ds in enumerate(deltas) if ds]
    if not writers:
        return
    w = data.draw(st.sampled_from(writers))
    missed = data.draw(st.integers(0, len(deltas[w]) - 1))
    receiver = replica()
    for i, ds in enumerate(deltas):
        for j, update in enumerate(ds):
            if (i, j) != (w, missed):
                receiver.apply(update)
    # Re-run writer w to get its replica (play is deterministic) and send its own state.
    source = SpendCounter(f"pop{w}/worker/boot", DAY, client_id=100 + w, compact_ratio=RATIOS[w % 3])
    for tick in history[w]:
        for key, p, n in tick:
            source.add(key, p, n)
        source.flush()
    receiver.apply(source.own_state())
    assert receiver.by_writer() == expected
    assert receiver.totals() == totals_of(expected)


def test_a_delta_past_a_gap_waits_for_it():
    # pycrdt alone, fed d0, d2, d1 of one writer, never shows d2's overwrite of "a" (yjs#461-like).
    writer = SpendCounter("w", DAY, client_id=100)
    d = []
    for p_a, p_b in [(1, 0), (1, 0), (1, 1)]:
        writer.add("a", p_a)
        writer.add("b", p_b)
        d.append(writer.flush())
    receiver = replica()
    receiver.apply(d[0])
    receiver.apply(d[2])
    assert receiver.held == 1 and receiver.pn("a") == (1, 0)  # the old total stays visible meanwhile
    receiver.apply(d[2])
    assert receiver.held == 1
    receiver.apply(d[1])
    assert receiver.held == 0 and receiver.by_writer() == {"w": {"a": (3, 0), "b": (1, 0)}}
    assert receiver.state_vector() == writer.state_vector()


def test_held_deltas_are_bounded_and_own_state_repairs(monkeypatch):
    monkeypatch.setattr(budget_crdt, "MAX_HELD", 2)
    writer = SpendCounter("w", DAY, client_id=100)
    deltas = []
    for _ in range(6):
        writer.add(KEYS[0], 10)
        deltas.append(writer.flush())
    receiver = replica()
    for update in deltas[1:]:
        receiver.apply(update)
    assert (receiver.held, receiver.dropped, receiver.totals()) == (2, 3, {})
    receiver.apply(writer.own_state())
    assert (receiver.held, receiver.totals()) == (0, {KEYS[0]: 60})


def test_compaction_bounds_the_document_and_keeps_every_total():
    writer = SpendCounter("w", DAY, client_id=100, compact_ratio=2.0)
    plain = SpendCounter("w", DAY, client_id=100, compact_ratio=None)
    receiver, deltas = replica(), []
    rnd = random.Random(5)
    for _ in range(60):
        for key in rnd.sample(KEYS, 3):
            amount = rnd.randint(1, 10**9)
            writer.add(key, amount, amount // 7)
            plain.add(key, amount, amount // 7)
        plain.flush()
        deltas.append(writer.flush())
        receiver.apply(deltas[-1])
    assert writer.epoch > 5 and receiver.by_writer() == writer.by_writer() == plain.by_writer()
    assert len(writer.own_state()) < len(plain.own_state()) / 3
    assert len(receiver.state()) < len(plain.state()) / 3
    # a late replica gets the same totals from the deltas in any order, or from the own state alone
    rnd.shuffle(deltas)
    late, fresh = replica("late", 2), replica("fresh", 3)
    for update in deltas:
        late.apply(update)
    fresh.apply(writer.own_state())
    assert late.by_writer() == fresh.by_writer() == writer.by_writer()
    assert late.held == 0


def test_compact_moves_staged_increments_too():
    writer = SpendCounter("w", DAY, client_id=100)
    assert writer.compact() is None
    writer.add(KEYS[0], 5)
    writer.flush()
    writer.add(KEYS[0], 1, 1)
    receiver = replica()
    receiver.apply(writer.state())
    receiver.apply(writer.compact())
    assert writer.epoch == 1 and not writer.dirty
    assert receiver.by_writer() == writer.by_writer() == {"w": {KEYS[0]: (6, 1)}}


def test_own_state_carries_only_the_writers_own_data():
    a, b = SpendCounter("a", DAY, client_id=1), SpendCounter("b", DAY, client_id=2)
    a.add(KEYS[0], 5)
    b.add(KEYS[0], 7)
    b.add(KEYS[1], 3, 1)
    a.apply(b.flush())
    a.flush()
    fresh = replica()
    fresh.apply(a.own_state())
    assert fresh.by_writer() == {"a": {KEYS[0]: (5, 0)}}
    assert a.totals() == {KEYS[0]: 12, KEYS[1]: 2}


def test_diff_sends_what_the_other_side_lacks():
    a, b = SpendCounter("a", DAY, client_id=1), SpendCounter("b", DAY, client_id=2)
    a.add(KEYS[0], 5)
    first = a.flush()
    a.add(KEYS[0], 6)
    a.add(KEYS[1], 1)
    a.flush()
    b.apply(first)
    b.apply(a.diff(b.state_vector()))
    assert view(b) == view(a)
    with pytest.raises(CrdtDecodeError):
        a.diff(b"\xff")


def test_reads_include_staged_increments_and_flush_writes_only_changes():
    a = SpendCounter("a", DAY, client_id=1)
    assert a.flush() is None
    for key in KEYS:
        a.add(key, 1_000_000)
    a.flush()
    a.add(KEYS[2], 250, 50)
    assert a.dirty and a.value(KEYS[2]) == 1_000_200 and a.pn(KEYS[2]) == (1_000_250, 50)
    assert a.by_writer()["a"][KEYS[2]] == (1_000_250, 50)
    delta = a.flush()
    assert delta is not None and len(delta) < 60  # two overwrites of one key, not the four keys again
    assert not a.dirty and a.flush() is None
    a.add(KEYS[3], 0, 0)
    assert a.flush() is None


def test_flush_is_one_transaction_per_tick():
    a = SpendCounter("a", DAY, client_id=1)
    for i in range(50):
        a.add(counter_key(f"k{i}", DAY), i + 1)
    delta = a.flush()
    receiver = replica()
    receiver.apply(delta)
    assert len(receiver.totals()) == 50
    assert decode_state_vector(receiver.state_vector()) == {1: 51}  # the slot and 50 totals, no more


# --- numbers -------------------------------------------------------------------------------------------------


@FEW
@given(st.lists(st.integers(10**12, 10**15), min_size=1, max_size=6))
def test_big_values_stay_exact(amounts):
    a = SpendCounter("a", DAY, client_id=1)
    receiver = replica()
    for amount in amounts:
        a.add(KEYS[0], amount, amount // 3)
        receiver.apply(a.flush())
    p = sum(amounts)
    n = sum(x // 3 for x in amounts)
    assert receiver.pn(KEYS[0]) == (p, n) == a.pn(KEYS[0])
    assert receiver.value(KEYS[0]) == p - n
    assert all(type(v) is int for v in receiver.totals().values())
    fresh = replica("fresh", 3)
    fresh.apply(receiver.state())
    assert fresh.pn(KEYS[0]) == (p, n)


def test_totals_up_to_the_cap_are_exact_and_beyond_it_refused():
    a = SpendCounter("a", DAY, client_id=1)
    a.add(KEYS[0], MAX_MICROS - 1)
    a.add(KEYS[0], 1)
    receiver = replica()
    receiver.apply(a.flush())
    assert receiver.value(KEYS[0]) == MAX_MICROS == 2**53 - 1
    with pytest.raises(ValueError, match="would pass"):
        a.add(KEYS[0], 1)
    assert a.value(KEYS[0]) == MAX_MICROS


@pytest.mark.parametrize("p,n", [(-1, 0), (0, -5), (1.5, 0), (True, 0), ("3", 0)])
def test_bad_increments_are_refused(p, n):
    a = SpendCounter("a", DAY, client_id=1)
    with pytest.raises(ValueError):
        a.add(KEYS[0], p, n)
    assert not a.dirty and a.totals() == {}


# --- refused updates ------------------------------------------------------------------------------------------


def seeded_receiver() -> tuple[SpendCounter, SpendCounter]:
    writer = SpendCounter("pop0/worker/boot", DAY, client_id=100)
    writer.add(KEYS[0], 7_000_000, 1_000)
    receiver = replica()
    receiver.apply(writer.flush())
    return writer, receiver


def snapshot(counter: SpendCounter) -> tuple[bytes, bytes, dict[str, int], Expected]:
    return counter.state(), counter.state_vector(), counter.totals(), counter.by_writer()


@FEW
@given(st.binary(max_size=200))
def test_garbage_is_refused_without_a_trace(junk):
    _, receiver = seeded_receiver()
    before = snapshot(receiver)
    with contextlib.suppress(CrdtDecodeError):
        receiver.apply(junk)
    assert snapshot(receiver) == before


@FEW
@given(st.data())
def test_a_damaged_delta_is_refused_whole_or_read_as_int_micros(data):
    writer, receiver = seeded_receiver()
    writer.add(KEYS[0], 5)
    writer.add(KEYS[1], 123_456_789, 3)
    delta = bytearray(writer.flush())
    for _ in range(data.draw(st.integers(1, 3))):
        delta[data.draw(st.integers(0, len(delta) - 1))] = data.draw(st.integers(0, 255))
    before = snapshot(receiver)
    try:
        receiver.apply(bytes(delta))
    except CrdtDecodeError:
        assert snapshot(receiver) == before
    else:
        # A flipped byte can decode to another total: the sync message's digest is what catches it.
        assert all(type(v) is int for values in receiver.by_writer().values() for pn in values.values() for v in pn)


def raw_update(client_id: int, build) -> bytes:
    """An update written with pycrdt directly, as a broken or hostile peer could."""
    doc = Doc(client_id=client_id)
    root = doc.get("w", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    with doc.transaction():
        build(root)
    return updates[0]


def slot(writer: str, values: dict[str, object]):
    def build(root):
        m = Map()
        root[writer] = m
        for k, v in values.items():
            m[k] = v

    return build


@pytest.mark.parametrize(
    "values,message",
    [
        ({"p:x|2026-11-24": "12"}, "not int micros"),
        ({"p:x|2026-11-24": 1.5}, "not int micros"),
        ({"p:x|2026-11-24": -4}, "not int micros"),
        ({"p:x|2026-11-24": 2**53 + 1}, "not int micros"),
        ({"p:x|2026-11-24": True}, "not int micros"),
        ({"p:x|2026-11-24": [1, 2]}, "not int micros"),
        ({"q:x|2026-11-24": 1}, "foreign key"),
        ({"p:": 1}, "foreign key"),
        # a good total next to a bad one: the good one must not stay behind either
        ({"p:ok|2026-11-24": 5, "n:ok|2026-11-24": "x"}, "not int micros"),
    ],
)
def test_an_update_that_breaks_the_counter_rules_is_refused_whole(values, message):
    _, receiver = seeded_receiver()
    before = snapshot(receiver)
    with pytest.raises(CrdtDecodeError, match=message):
        receiver.apply(raw_update(555, slot("evil#0", values)))
    assert snapshot(receiver) == before
    assert "evil" not in receiver.writers()


def test_slot_keys_must_name_a_writer_and_an_epoch():
    _, receiver = seeded_receiver()
    before = snapshot(receiver)
    for bad in ["evil", "evil#", "evil#01", "#3", "evil#-1"]:
        with pytest.raises(CrdtDecodeError, match="not a slot key"):
            receiver.apply(raw_update(555, slot(bad, {"p:" + KEYS[0]: 1})))
        assert snapshot(receiver) == before
    with pytest.raises(ValueError):
        SpendCounter("pop#1", DAY)


def test_a_value_that_is_not_a_slot_is_refused():
    _, receiver = seeded_receiver()
    before = snapshot(receiver)
    with pytest.raises(CrdtDecodeError, match="not a Map"):
        receiver.apply(raw_update(555, lambda root: root.__setitem__("evil#0", 5)))
    assert snapshot(receiver) == before


def test_lowering_a_total_is_a_writer_conflict_and_a_deletion_changes_nothing():
    doc = Doc(client_id=555)
    root = doc.get("w", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    with doc.transaction():
        m = Map()
        root["w5#0"] = m
        m["p:" + KEYS[0]] = 100
        m["p:" + KEYS[1]] = 100
    receiver = replica()
    receiver.apply(updates[0])
    before = snapshot(receiver)
    m["p:" + KEYS[0]] = 99
    with pytest.raises(WriterConflictError, match="went down"):
        receiver.apply(updates[1])
    assert snapshot(receiver) == before
    # A deletion is what a writer's delete set looks like while its new total still waits for an earlier
    # delta: the replica keeps the last total it saw.
    del m["p:" + KEYS[1]]
    receiver.apply(updates[2])
    assert receiver.pn(KEYS[1]) == (100, 0)


def test_a_reused_writer_id_is_a_conflict():
    first = SpendCounter("pop0/worker", DAY, client_id=100)
    again = SpendCounter("pop0/worker", DAY, client_id=200)  # a restart that kept its writer id
    first.add(KEYS[0], 10)
    again.add(KEYS[0], 1)
    receiver = replica()
    receiver.apply(first.flush())
    before = snapshot(receiver)
    with pytest.raises(WriterConflictError, match="only ever added"):
        receiver.apply(again.flush())
    assert snapshot(receiver) == before
    # The other way round the newcomer's slot wins (higher client id) and the old one loses silently in the
    # document, but the replica still notices.
    before = snapshot(again)
    with pytest.raises(WriterConflictError, match="lost"):
        again.apply(first.state())
    assert snapshot(again) == before
    # and a writer never lets anyone else write into its own slot
    low = SpendCounter("pop0/worker", DAY, client_id=50)
    low.add(KEYS[0], 3)
    low.flush()
    with pytest.raises(WriterConflictError, match="this replica's slot"):
        low.apply(again.state())
    assert low.by_writer() == {"pop0/worker": {KEYS[0]: (3, 0)}}


def test_an_update_that_fails_half_way_through_integration_is_rolled_back():
    writer, receiver = seeded_receiver()
    before = snapshot(receiver)

    def varuint(x: int) -> bytes:
        out = bytearray()
        while x > 0x7F:
            out.append((x & 0x7F) | 0x80)
            x >>= 7
        out.append(x)
        return bytes(out)

    # Client 7's first item is a new, empty slot "w7#0" (it integrates), its second names the writer's total
    # 100#1 (a number, not a map) as its parent: yrs refuses it after committing the first.
    good = bytes([0x27, 0x01]) + varuint(1) + b"w" + varuint(4) + b"w7#0" + varuint(1)
    bad = bytes([0x28, 0x00]) + varuint(100) + varuint(1) + varuint(1) + b"q" + bytes([0x01, 0x7D, 0x03])
    update = varuint(1) + varuint(2) + varuint(7) + varuint(0) + good + bad + varuint(0)
    with pytest.raises(CrdtDecodeError, match="does not integrate"):
        receiver.apply(update)
    assert snapshot(receiver) == before
    # The replica goes on as before, including its own writes (its clock continues from its checkpoint).
    writer.add(KEYS[0], 1)
    receiver.apply(writer.flush())
    receiver.add(KEYS[3], 9)
    other = replica("other", 42)
    other.apply(receiver.flush())
    other.apply(writer.own_state())
    assert view(other) == view(receiver)


def test_rollback_replays_the_checkpoint_and_the_log(monkeypatch):
    monkeypatch.setattr(budget_crdt, "_LOG_MIN_BYTES", 64)  # fold the log into a checkpoint every few updates
    writer = SpendCounter("pop0/worker", DAY, client_id=100)
    receiver = replica()
    for i in range(30):
        writer.add(KEYS[i % 4], 1_000 + i)
        receiver.apply(writer.flush())
        receiver.add(KEYS[0], 1)
        receiver.flush()
    before = snapshot(receiver)
    with pytest.raises(CrdtDecodeError):
        receiver.apply(raw_update(555, slot("evil#0", {"p:" + KEYS[0]: "bad"})))
    assert snapshot(receiver) == before


def test_oversized_and_non_bytes_updates_are_refused():
    receiver = replica()
    with pytest.raises(CrdtDecodeError, match="over"):
        receiver.apply(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(CrdtDecodeError, match="bytes"):
        receiver.apply("not bytes")  # type: ignore[arg-type]


# --- keys, periods, state vectors -------------------------------------------------------------------------------


def test_counter_key_round_trip_and_validation():
    assert counter_key("camp-1", DAY) == "camp-1|2026-11-24"
    assert parse_counter_key("camp-1|2026-11-24") == ("camp-1", DAY)
    for campaign, day in [("a|b", DAY), ("", DAY), ("c", "2026-11-24T01"), ("c", "24/11/2026")]:
        with pytest.raises(ValueError):
            counter_key(campaign, day)
    for key in ["c", "c|", "|2026-11-24", "a|b|2026-11-24", "c|2026-1-24"]:
        with pytest.raises(ValueError):
            parse_counter_key(key)


def test_periods_are_days_or_hours():
    assert check_period("2026-11-24") == "2026-11-24"
    assert check_period("2026-11-24T23") == "2026-11-24T23"
    for bad in ["2026-11-24T24", "2026-02-30", "2026-11-24 01", "", "yesterday"]:
        with pytest.raises(ValueError):
            check_period(bad)
    with pytest.raises(ValueError):
        SpendCounter("a", "2026-13-01")
    with pytest.raises(ValueError):
        SpendCounter("a", DAY, client_id=0)
    with pytest.raises(ValueError):
        SpendCounter("", DAY)


@given(st.dictionaries(st.integers(0, 2**53), st.integers(0, 2**40), max_size=5))
def test_state_vector_codec_round_trips(clocks):
    assert decode_state_vector(encode_state_vector(clocks)) == clocks


# --- SpendBook ---------------------------------------------------------------------------------------------------


def test_book_keeps_the_newest_periods_and_sums_across_them():
    book = SpendBook("pop0/worker", keep_periods=2, client_id=5)
    key = counter_key("c1", "2026-11-24")
    book.add("2026-11-24", key, 100)
    book.add("2026-11-25", key, 30, 5)
    assert book.value(key) == 125 and book.totals() == {key: 125}
    assert book.totals(["2026-11-25"]) == {key: 25}
    book.counter("2026-11-26")
    assert book.periods == ("2026-11-25", "2026-11-26")
    with pytest.raises(StalePeriodError):
        book.counter("2026-11-24")
    assert book.drop_older_than("2026-11-26") == ["2026-11-25"]
    with pytest.raises(StalePeriodError):
        book.counter("2026-11-25")
    assert book.periods == ("2026-11-26",)


def test_books_sync_through_messages():
    a, b = SpendBook("a", client_id=1), SpendBook("b", client_id=2)
    key = counter_key("c1", "2026-11-24")
    a.add("2026-11-24", key, 10)
    a.add("2026-11-25", key, 20)
    b.add("2026-11-25", key, 1)
    for message in a.flush() + b.flush():
        target = b if message.writer_id == "a" else a
        assert target.receive(decode_sync(encode_sync(message.writer_id, message.period, message.update, False)))
    assert a.totals() == b.totals() == {key: 31}
    fresh = SpendBook("c", client_id=3)
    for message in a.own_states():
        assert message.full
        fresh.receive(message)
    assert fresh.value(key) == 30
    assert [fresh.counter(p).writers() for p in fresh.periods] == [{"a"}, {"a"}]
    old = SpendBook("d", keep_periods=1, client_id=4)
    old.counter("2026-11-26")
    assert old.receive(SyncMessage("a", "2026-11-24", b"\x00\x00", False)) is False


# --- sync message codec --------------------------------------------------------------------------------------------


def test_sync_message_round_trip():
    writer = SpendCounter("pop0/worker", DAY, client_id=100)
    writer.add(KEYS[0], 12)
    update = writer.flush()
    message = decode_sync(encode_sync("pop0/worker", DAY, update, False))
    assert message == SyncMessage("pop0/worker", DAY, update, False)
    full = decode_sync(encode_sync("pop0/worker", DAY, writer.own_state(), True))
    assert full.full


@FEW
@given(st.data())
def test_any_damaged_byte_of_a_sync_message_is_caught(data):
    encoded = bytearray(encode_sync("pop0/worker", DAY, b"\x01\x02\x03" * 10, False))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CrdtDecodeError):
        decode_sync(bytes(encoded))


@pytest.mark.parametrize(
    "fields,message",
    [
        (["NOPE", 1, "w", DAY, False, b"0" * 16, b""], "magic"),
        (["ADSPN", 2, "w", DAY, False, b"0" * 16, b""], "schema"),
        (["ADSPN", 1, "", DAY, False, b"0" * 16, b""], "writer id"),
        (["ADSPN", 1, "w", "2026-11-24T99", False, b"0" * 16, b""], "period"),
        (["ADSPN", 1, "w", DAY, 0, b"0" * 16, b""], "full must be a bool"),
        (["ADSPN", 1, "w", DAY, False, b"0" * 3, b""], "digest must be"),
        (["ADSPN", 1, "w", DAY, False, b"0" * 16, "text"], "update must be bytes"),
        (["ADSPN", 1, "w", DAY, False, b"0" * 16, b""], "digest mismatch"),
        (["ADSPN", 1, "w", DAY], "7 fields"),
        ({"magic": "ADSPN"}, "msgpack"),
    ],
)
def test_sync_message_errors_name_what_is_wrong(fields, message):
    with pytest.raises(CrdtDecodeError, match=message):
        decode_sync(msgpack.packb(fields, use_bin_type=True))


def test_sync_messages_are_bounded(monkeypatch):
    with pytest.raises(CrdtDecodeError, match="bytes"):
        decode_sync("text")  # type: ignore[arg-type]
    with pytest.raises(CrdtDecodeError, match="msgpack"):
        decode_sync(b"\xc1")
    monkeypatch.setattr(budget_crdt, "MAX_MESSAGE_BYTES", 100)
    with pytest.raises(ValueError, match="over 100"):
        encode_sync("w", DAY, b"x" * 200, True)
    with pytest.raises(CrdtDecodeError, match="over 100"):
        decode_sync(b"x" * 101)


def test_set_all_writes_the_same_document_as_item_assignment_without_its_overhead(monkeypatch) -> None:
    """``set_all`` calls yrs directly (the spend sync flush's writes): the same document, byte for byte, as
    ``Map.__setitem__`` per item; and with this pycrdt it does not go through ``__setitem__`` at all."""
    items = [(f"p:c{i:04d}|2026-11-30|r", i * 1_000 + 7) for i in range(300)] + [("n:c0001|2026-11-30|r", 2**53 - 1)]
    docs = []
    for direct in (True, False):
        doc = Doc(client_id=42)
        root = doc.get("w", type=Map)
        with doc.transaction():
            root["w1#0"] = slot = Map()
        if direct:
            with monkeypatch.context() as m:
                m.setattr(Map, "__setitem__", lambda *_: pytest.fail("went through Map.__setitem__"))
                with doc.transaction() as txn:
                    budget_crdt.set_all(slot, txn, items)
        else:
            with doc.transaction():
                for key, value in items:
                    slot[key] = value
        docs.append(doc)
    assert docs[0].get_update() == docs[1].get_update()
    assert dict(docs[0].get("w", type=Map)["w1#0"]) == dict(items)
