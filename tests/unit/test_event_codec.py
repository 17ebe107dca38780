"""The billing event codec: lossless round trip, poison messages refused with EventDecodeError, stable ids."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.events import (
    MAX_INT,
    SCHEMA_VERSION,
    BidType,
    Event,
    EventDecodeError,
    EventType,
    InvalidReason,
    click_event_id,
    conversion_event_id,
    decision_event_id,
    decode_event,
    encode_event,
    event_as_dict,
    impression_event_id,
    viewable_event_id,
)

FIELD_NAMES = [f.name for f in dataclasses.fields(Event)]


def event(**kw) -> Event:
    base = {
        "event_id": "imp:auc-0", "type": EventType.IMPRESSION, "ts_ms": 1_700_000_000_000, "region": "eu",
        "pop": "pop1", "auction_id": "auc", "impression_id": "auc-0", "campaign_id": "c1", "creative_id": "k1",
        "advertiser_id": "a1", "placement": "home", "bid_type": BidType.CPM, "price_micros": 2_000,
        "cost_micros": 2_000,
    }
    base.update(kw)
    return Event(**base)


def wire(values: list, version=SCHEMA_VERSION) -> bytes:
    return msgpack.packb([version, values], use_bin_type=True)


def values_of(e: Event) -> list:
    return [getattr(e, n) for n in FIELD_NAMES]


def test_round_trip():
    e = event(value_micros=5, invalid_reason=InvalidReason.DUPLICATE, geo="US-CA", device="mobile")
    decoded = decode_event(encode_event(e))
    assert decoded == e
    assert isinstance(decoded.type, EventType)
    assert isinstance(decoded.bid_type, BidType)
    assert isinstance(decoded.invalid_reason, InvalidReason)


_int64 = st.integers(0, MAX_INT)


@settings(max_examples=200, deadline=None)
@given(
    event_id=st.text(min_size=1, max_size=40),
    type_=st.sampled_from(EventType),
    bid_type=st.sampled_from(BidType),
    invalid=st.sampled_from(InvalidReason),
    ints=st.tuples(_int64, _int64, _int64, _int64),
    texts=st.lists(st.text(max_size=20), min_size=10, max_size=10),
)
def test_round_trip_property(event_id, type_, bid_type, invalid, ints, texts):
    e = Event(
        event_id=event_id, type=type_, ts_ms=ints[0], region=texts[0], pop=texts[1], auction_id=texts[2],
        impression_id=texts[3], campaign_id=texts[4], creative_id=texts[5], advertiser_id=texts[6],
        placement=texts[7], bid_type=bid_type, price_micros=ints[1], cost_micros=ints[2], value_micros=ints[3],
        invalid_reason=invalid, geo=texts[8], device=texts[9],
    )
    assert decode_event(encode_event(e)) == e


def test_billable_only_when_costed_and_valid():
    assert event(cost_micros=1).billable
    assert not event(cost_micros=0).billable
    assert not event(cost_micros=5, invalid_reason=InvalidReason.DUPLICATE).billable


def test_event_as_dict_uses_plain_strings():
    d = event_as_dict(event())
    assert d["type"] == "impression" and type(d["type"]) is str
    assert type(d["bid_type"]) is str and type(d["invalid_reason"]) is str
    assert d["price_micros"] == 2_000


# --- poison messages -----------------------------------------------------------------------------------------


def test_wrong_version():
    with pytest.raises(EventDecodeError, match="version"):
        decode_event(wire(values_of(event()), version=SCHEMA_VERSION + 1))


@pytest.mark.parametrize("delta", [-5, 17])
def test_wrong_field_count(delta):
    values = values_of(event())
    values = values[:delta] if delta < 0 else [*values, *["extra"] * delta]
    with pytest.raises(EventDecodeError, match="number of event fields"):
        decode_event(wire(values))


def test_a_newer_writers_extra_fields_are_ignored_and_unused_new_fields_are_not_written():
    # Rolling upgrades: an edge newer than the collector may add fields; an event that does not use the
    # fields added since version 1 is written without them, so an older collector still reads it.
    values = values_of(dataclasses.replace(event(), user_key="u1", variant="1.0.0", site="a.example",
                                           segments="kw-a,kw-b"))
    decoded = decode_event(wire([*values, "from", "the", "future"]))
    assert (decoded.variant, decoded.site, decoded.segments) == ("1.0.0", "a.example", "kw-a,kw-b")
    _, written = msgpack.unpackb(encode_event(event()))
    assert len(written) == len(values) - 4
    _, written = msgpack.unpackb(encode_event(dataclasses.replace(event(), user_key="u1")))
    assert len(written) == len(values) - 3
    _, written = msgpack.unpackb(encode_event(dataclasses.replace(event(), site="a.example")))
    assert len(written) == len(values) - 1


def test_an_event_from_before_user_key_decodes_with_no_user():
    # Messages written before user_key existed may still sit in a region's stream for days.
    values = values_of(dataclasses.replace(event(), user_key="u1"))
    assert decode_event(wire(values)).user_key == "u1"
    assert decode_event(wire(values[:-4])) == dataclasses.replace(event(), user_key="")


def test_values_not_a_list():
    with pytest.raises(EventDecodeError):
        decode_event(wire(dict.fromkeys(FIELD_NAMES, "x")))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("ts_ms", "123"),
        ("ts_ms", 1.5),
        ("price_micros", True),
        ("cost_micros", None),
        ("value_micros", [1]),
        ("event_id", 7),
        ("region", None),
        ("geo", b"US"),
        ("type", "view"),
        ("type", [1]),
        ("bid_type", "cpx"),
        ("invalid_reason", "bot"),
        ("event_id", ""),
        ("site", 5),
        ("site", "s" * 254),
        ("segments", ["kw-a"]),
        ("segments", "k" * 1025),
    ],
)
def test_wrong_types(field, bad):
    values = values_of(event())
    values[FIELD_NAMES.index(field)] = bad
    with pytest.raises(EventDecodeError):
        decode_event(wire(values))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"not msgpack at all", msgpack.packb(1), msgpack.packb([1, 2, 3])])
def test_not_an_event_envelope(data):
    with pytest.raises(EventDecodeError):
        decode_event(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_event_decode_error(data):
    with contextlib.suppress(EventDecodeError):
        decode_event(data)


# --- ids -----------------------------------------------------------------------------------------------------


def test_event_ids_are_deterministic_and_distinct_per_kind():
    assert impression_event_id("auc-0") == impression_event_id("auc-0") == "imp:auc-0"
    assert click_event_id("auc-0") == "clk:auc-0"
    assert decision_event_id("auc-0") == "dec:auc-0"
    assert conversion_event_id("auc-0") == "cnv:auc-0"
    ids = {impression_event_id("x"), click_event_id("x"), decision_event_id("x"), conversion_event_id("x"),
           viewable_event_id("x")}
    assert len(ids) == 5


def test_out_of_range_money_is_refused():
    for bad in (-1, MAX_INT + 1):
        with pytest.raises(EventDecodeError, match="out of range"):
            decode_event(encode_event(event(cost_micros=bad)))


@pytest.mark.parametrize("size", [1, 15, 16, 17, 1024])
def test_a_batch_joined_from_rows_encoded_one_by_one_is_the_batch_packed_whole(size):
    """The edge encodes each decision as it is made and joins the bytes at the tick: around the sizes where
    msgpack's array header changes form (15/16) the join must still equal packing the batch in one go."""
    from replication.events import encode_event_batch, encode_event_row, join_event_rows

    batch = [dataclasses.replace(event(), event_id=f"dec:a-{i}", impression_id=f"a-{i}", user_key=f"u{i % 3}",
                                 variant="0.1.0", site="a.example", segments="kw-a")
             for i in range(size)]
    whole = msgpack.packb([SCHEMA_VERSION, "batch", [values_of(e) for e in batch]], use_bin_type=True)
    assert join_event_rows([encode_event_row(e) for e in batch]) == whole
    assert encode_event_batch(batch) == whole
    with pytest.raises(ValueError):
        join_event_rows([])


_TEXT = st.text(max_size=12)


@given(ids=st.tuples(_TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT,
                    _TEXT, _TEXT),
       ts_ms=st.integers(0, 2**50), price=st.integers(0, 10**12), bid_type=st.sampled_from(list(BidType)))
@settings(max_examples=200, deadline=None)
def test_a_decision_row_is_the_decision_event_encoded(ids, ts_ms, price, bid_type):
    """The edge encodes its decisions without building Events: the bytes must be the Event's, field for
    field (a reordered or missing field decodes into the wrong column)."""
    from replication.events import encode_decision_row, encode_event_row

    (event_id, region, pop, auction_id, impression_id, campaign_id, creative_id, advertiser_id, placement, geo,
     device, user_key, variant, site, segments) = ids
    row = encode_decision_row(event_id, ts_ms, region, pop, auction_id, impression_id, campaign_id, creative_id,
                              advertiser_id, placement, str(bid_type), price, geo, device, user_key, variant, site,
                              segments)
    expected = Event(event_id=event_id, type=EventType.DECISION, ts_ms=ts_ms, region=region, pop=pop,
                     auction_id=auction_id, impression_id=impression_id, campaign_id=campaign_id,
                     creative_id=creative_id, advertiser_id=advertiser_id, placement=placement, bid_type=bid_type,
                     price_micros=price, cost_micros=0, geo=geo, device=device, user_key=user_key, variant=variant,
                     site=site, segments=segments)
    assert row == encode_event_row(expected)


def test_a_batch_carries_each_event_with_its_own_id_and_a_bad_one_refuses_it_whole():
    from replication.events import MAX_BATCH, decode_events, encode_event_batch
    from replication.subjects import event_batch_subject, events_in

    batch = [dataclasses.replace(event(), event_id=f"dec:a-{i}", impression_id=f"a-{i}") for i in range(6)]
    assert decode_events(encode_event_batch(batch)) == batch
    assert decode_events(encode_event(batch[0])) == [batch[0]]  # a single event is a message of one
    with pytest.raises(ValueError):
        encode_event_batch([batch[0]] * (MAX_BATCH + 1))
    bad = msgpack.packb([SCHEMA_VERSION, "batch", [values_of(batch[0]), ["not", "an", "event"]]])
    with pytest.raises(EventDecodeError):
        decode_events(bad)
    # The stream's per-subject counts add up to events: a batch subject names how many it holds.
    subject = event_batch_subject("eu", EventType.DECISION, 6)
    assert subject == "ads.ev.eu.decision.6"
    assert events_in({subject: 10, "ads.ev.eu.impression": 7, "ads.ev.eu.decision.1": 3}) == 60 + 7 + 3
