"""The snapshot: index compilation, and a codec that rejects anything but a whole, current-schema snapshot."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest

from replication.snapshot import (
    DIMENSIONS,
    MAGIC,
    SCHEMA_VERSION,
    SnapshotDecodeError,
    build_snapshot,
    decode_snapshot,
    empty_snapshot,
    encode_snapshot,
    unit_cost_ceiling,
)


@pytest.fixture
def sample(make_campaign, make_creative):
    return build_snapshot(
        [
            make_campaign("c2", placements=["home"], countries=["US"], geos=["US-CA"], devices=["mobile"],
                          keywords=["shoes", "boots"], interests=["running"], hours=[7, 8], timezone="America/New_York",
                          creatives=[make_creative("k1", format="300x250"), make_creative("k2", format="728x90")]),
            make_campaign("c1", bid_type="cpc", max_bid_micros=400_000, end_s=2_000_000_000),
            make_campaign("c3", placements=["home", "sports"], creatives=[]),
        ],
        version=7,
        created_ms=1_700_000_000_000,
        reserve_cpm_micros=100_000,
    )


def envelope(body: bytes, *, magic=MAGIC, schema=SCHEMA_VERSION, digest=None) -> bytes:
    digest = hashlib.sha256(body).digest() if digest is None else digest
    return msgpack.packb([magic, schema, digest, body], use_bin_type=True)


def body_of(data: bytes) -> dict:
    return msgpack.unpackb(msgpack.unpackb(data, raw=False)[3], raw=False, strict_map_key=False)


# --- build ---------------------------------------------------------------------------------------------------


def test_campaigns_are_ordered_by_id(sample):
    assert [c.campaign_id for c in sample.campaigns] == ["c1", "c2", "c3"]


def test_postings_point_at_the_right_positions(sample):
    # positions: c1=0, c2=1, c3=2
    p = sample.postings
    assert p["placement"] == {"home": {1, 2}, "sports": {2}}
    assert p["country"] == {"US": {1}}
    assert p["geo"] == {"US-CA": {1}}
    assert p["device"] == {"mobile": {1}}
    assert p["keyword"] == {"shoes": {1}, "boots": {1}}
    assert p["interest"] == {"running": {1}}
    # Format postings come from the creatives' sizes (c1 has the default 300x250 creative).
    assert p["format"] == {"300x250": {0, 1}, "728x90": {1}}


def test_unconstrained_dimensions_are_unrestricted(sample):
    u = sample.unrestricted
    assert set(u) == set(DIMENSIONS)
    assert u["placement"] == {0}
    assert u["country"] == {0, 2}
    assert u["keyword"] == {0, 2}
    assert u["format"] == {2}  # no creatives: not constrained by size (the auction filters it by FORMAT)


def test_every_position_is_either_posted_or_unrestricted_in_every_dimension(sample):
    for dim in DIMENSIONS:
        posted = set().union(*sample.postings[dim].values()) if sample.postings[dim] else set()
        assert posted | sample.unrestricted[dim] == {0, 1, 2}
        assert not posted & sample.unrestricted[dim]


def test_index_is_read_only(sample):
    with pytest.raises(TypeError):
        sample.postings["placement"]["x"] = frozenset()  # type: ignore[index]


def test_campaign_lookup(sample):
    assert sample.campaign("c2").timezone == "America/New_York"
    assert sample.campaign("nope") is None


def test_unit_cost_ceiling_rounds_cpm_up_per_impression():
    assert unit_cost_ceiling("cpm", 2_000_000) == 2_000
    assert unit_cost_ceiling("cpm", 2_000_001) == 2_001
    assert unit_cost_ceiling("cpm", 1) == 1
    assert unit_cost_ceiling("cpc", 400_000) == 400_000
    assert unit_cost_ceiling("cpa", 7) == 7


# --- codec ---------------------------------------------------------------------------------------------------


def test_round_trip_is_equal(sample):
    decoded = decode_snapshot(encode_snapshot(sample))
    assert decoded == sample
    assert decoded.campaigns == sample.campaigns
    assert decoded.postings == sample.postings
    assert decoded.unrestricted == sample.unrestricted
    assert (decoded.version, decoded.created_ms, decoded.reserve_cpm_micros) == (7, 1_700_000_000_000, 100_000)


def test_placement_reserves_and_the_quality_floor_round_trip(sample):
    floored = dataclasses.replace(sample, placement_reserves={"home": 250_000, "sports": 0}, min_ctr=0.0005)
    decoded = decode_snapshot(encode_snapshot(floored))
    assert dict(decoded.placement_reserves) == {"home": 250_000, "sports": 0} and decoded.min_ctr == 0.0005
    # A body from a builder older than the fields: no placement reserves, no floor.
    raw = body_of(encode_snapshot(floored))
    del raw["placement_reserves"], raw["min_ctr"]
    older = decode_snapshot(envelope(msgpack.packb(raw, use_bin_type=True)))
    assert dict(older.placement_reserves) == {} and older.min_ctr == 0.0


@pytest.mark.parametrize(("field", "value", "says"), [
    ("placement_reserves", {"home": -1}, "placement_reserves"),
    ("placement_reserves", {"home": 1.5}, "placement_reserves"),
    ("placement_reserves", [["home", 1]], "placement_reserves"),
    ("min_ctr", 1.0, "min_ctr"),
    ("min_ctr", "0.1", "min_ctr"),
])
def test_bad_placement_reserves_or_quality_floor_are_decode_errors(sample, field, value, says):
    raw = body_of(encode_snapshot(sample))
    raw[field] = value
    with pytest.raises(SnapshotDecodeError, match=says):
        decode_snapshot(envelope(msgpack.packb(raw, use_bin_type=True)))


def test_empty_snapshot_round_trips():
    empty = empty_snapshot(version=3)
    assert decode_snapshot(encode_snapshot(empty)) == empty


def test_checksum_mismatch(sample):
    data = encode_snapshot(sample)
    _, _, digest, body = msgpack.unpackb(data, raw=False)
    with pytest.raises(SnapshotDecodeError, match="checksum"):
        decode_snapshot(envelope(body, digest=bytes(32)))
    flipped = body[:-1] + bytes([body[-1] ^ 0x01])
    with pytest.raises(SnapshotDecodeError, match="checksum"):
        decode_snapshot(envelope(flipped, digest=digest))


def test_bad_magic(sample):
    body = msgpack.unpackb(encode_snapshot(sample), raw=False)[3]
    with pytest.raises(SnapshotDecodeError, match="magic"):
        decode_snapshot(envelope(body, magic="NOTSNAP"))


def test_wrong_schema_version(sample):
    body = msgpack.unpackb(encode_snapshot(sample), raw=False)[3]
    with pytest.raises(SnapshotDecodeError, match="schema"):
        decode_snapshot(envelope(body, schema=SCHEMA_VERSION + 1))


@pytest.mark.parametrize("cut", [0, 1, 10, 0.5, -1])
def test_truncated_data(sample, cut):
    data = encode_snapshot(sample)
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot(data[:n])


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"hello", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1})])
def test_foreign_bytes(garbage):
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot(garbage)


@pytest.mark.parametrize("bad", [3, -1, 99])
def test_posting_position_out_of_range(sample, bad):
    raw = body_of(encode_snapshot(sample))
    raw["postings"]["placement"]["home"].append(bad)
    with pytest.raises(SnapshotDecodeError, match="not in the snapshot"):
        decode_snapshot(envelope(msgpack.packb(raw, use_bin_type=True)))


def test_unrestricted_position_out_of_range(sample):
    raw = body_of(encode_snapshot(sample))
    raw["unrestricted"]["device"].append(len(sample.campaigns))
    with pytest.raises(SnapshotDecodeError, match="not in the snapshot"):
        decode_snapshot(envelope(msgpack.packb(raw, use_bin_type=True)))


def _no_campaigns_key(sample):
    raw = body_of(encode_snapshot(sample))
    del raw["campaigns"]
    return envelope(msgpack.packb(raw, use_bin_type=True))


def _short_campaign_row(sample):
    raw = body_of(encode_snapshot(sample))
    raw["campaigns"][0] = raw["campaigns"][0][:5]
    return envelope(msgpack.packb(raw, use_bin_type=True))


def _string_position(sample):
    raw = body_of(encode_snapshot(sample))
    raw["postings"]["placement"]["home"].append("0")
    return envelope(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda s: envelope(msgpack.packb(42)), id="body-not-a-map"),
        pytest.param(_no_campaigns_key, id="missing-campaigns"),
        pytest.param(_short_campaign_row, id="short-campaign-row"),
        pytest.param(_string_position, id="non-integer-position"),
        pytest.param(lambda s: msgpack.packb([MAGIC, SCHEMA_VERSION, b"x" * 32, "text body"]), id="body-not-bytes"),
    ],
)
def test_well_checksummed_but_malformed_body_is_a_decode_error(sample, make_bad):
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot(make_bad(sample))
