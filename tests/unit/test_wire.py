"""``replication.wire.packb``: the kept Packer gives msgpack.packb's bytes, also after a failed call."""

import msgpack
import pytest

from replication.wire import packb

SAMPLES = [
    {"imp": "a1-0", "px": 123_456, "iat": 1764420000.123, "k": "i", "exp": 1764423600},
    ["dec:a1-0", 3, 1_764_420_000_123, "eu", "pop1", b"\x00\xff", None, True, -1, 2**63 - 1],
    "x" * 300_000,  # larger than the Packer's initial buffer (256 KiB)
]


def test_same_bytes_as_msgpack_packb() -> None:
    for obj in SAMPLES:
        assert packb(obj) == msgpack.packb(obj, use_bin_type=True)


def test_a_failed_call_leaves_nothing_for_the_next() -> None:
    with pytest.raises(TypeError):
        packb({"half": "packed", "then": object()})
    assert packb(SAMPLES[0]) == msgpack.packb(SAMPLES[0], use_bin_type=True)
