"""The TCF v2 reader against strings whose contents an independent implementation decoded (the Perl
GDPR::IAB::TCFv2 distribution's tests): purposes, and vendor consents in both encodings."""

from __future__ import annotations

import pytest

from edge.tcf import BadConsent, decode, encode

# Bitfield vendor encoding: purposes 1, 3, 9, 10; vendors up to 115.
BITFIELD = "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
BITFIELD_VENDORS = {2, 3, 6, 7, 8, 10, 12, 13, 14, 15, 16, 21, 25, 27, 30, 31, 34, 35, 37, 38, 39, 42, 43, 49, 52,
                    54, 55, 56, 57, 59, 60, 63, 64, 65, 66, 67, 68, 69, 73, 74, 76, 78, 83, 86, 87, 89, 90, 92, 96,
                    99, 100, 106, 109, 110, 114, 115}
# Range vendor encoding: no purposes; vendors 23, 42, 126-128, 587, 613, 626.
RANGES = "COyfVVoOyfVVoADACHENAwCAAAAAAAAAAAAAE5QBgALgAqgD8AQACSwEygJyAnSAMABgAFkAgQCDASeAmYBOgAA"
RANGE_VENDORS = {23, 42, 126, 127, 128, 587, 613, 626}


def test_purposes_and_bitfield_vendors():
    consent = decode(BITFIELD)
    assert consent.purposes == {1, 3, 9, 10}
    assert {v for v in range(1, 130) if consent.vendor(v)} == BITFIELD_VENDORS
    assert not consent.allows_profiling()  # no purpose 4: no personalised ads


def test_range_vendors_and_no_purposes():
    consent = decode(RANGES)
    assert consent.purposes == frozenset()
    assert {v for v in range(1, 700) if consent.vendor(v)} == RANGE_VENDORS


def test_a_publisher_segment_after_the_core_is_ignored():
    assert decode(BITFIELD + ".argAC0gAAAAAAAAAAAA").purposes == {1, 3, 9, 10}


@pytest.mark.parametrize(("tc_string", "says"), [
    ("not*base64", "not base64url"),
    ("CLcVDxRMWfGmWAVAHCENAXCk", "too short"),
    ("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", "TCF version 1"),  # a v1.1 string
])
def test_what_is_not_a_tcf_v2_string_is_named(tc_string, says):
    with pytest.raises(BadConsent, match=says):
        decode(tc_string)


def test_encode_makes_strings_the_reader_reads_back():
    consent = decode(encode([1, 3, 4], vendors=[7, 700]))
    assert consent.purposes == {1, 3, 4} and consent.allows_profiling()
    assert consent.allows_profiling(vendor_id=700) and not consent.allows_profiling(vendor_id=8)
    assert not decode(encode([1, 3])).allows_profiling()
    assert encode([1, 3, 4]).startswith("C")  # version 2 in the first six bits, as CMPs' strings start


def test_a_vendor_section_cut_short_grants_nothing():
    assert decode(BITFIELD).vendor(2)
    cut = decode(BITFIELD[:50])  # the vendor bitfield promises 115 bits; 66 are there
    assert cut.purposes == {1, 3, 9, 10} and not cut.vendor(2) and not cut.vendor(115)
    assert not decode(RANGES[:50]).vendor(23)  # its range entries are cut off
