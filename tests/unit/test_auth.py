"""Advertiser bearer tokens: minted once, stored hashed, parsed strictly."""

from __future__ import annotations

import pytest

from control_plane.auth import hash_token, mint_token, new_id, parse_bearer, token_matches


def test_minted_token_carries_the_advertiser_id_and_matches_its_hash():
    token, stored = mint_token("adv123")
    assert token.startswith("adv123.")
    assert stored == hash_token(token)
    assert token_matches(token, stored)


def test_stored_hash_is_not_the_token():
    token, stored = mint_token("adv123")
    assert token not in stored
    assert len(stored) == 64  # hex SHA-256


def test_two_mints_differ():
    assert mint_token("adv123")[0] != mint_token("adv123")[0]


def test_wrong_token_does_not_match():
    token, stored = mint_token("adv123")
    assert not token_matches(token + "x", stored)
    assert not token_matches(mint_token("adv123")[0], stored)


def test_minted_token_parses_back():
    token, _ = mint_token("adv123")
    assert parse_bearer(f"Bearer {token}") == ("adv123", token)


def test_new_id_has_prefix_and_is_unique():
    a, b = new_id("cmp"), new_id("cmp")
    assert a.startswith("cmp") and len(a) == 3 + 16
    assert a != b


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWRtaW46YWRtaW4=",
        "Token adv123.secret",
        "Bearer adv123",  # no secret part
        "Bearer adv123.",  # empty secret
        "Bearer .secret",  # empty id
        "Bearer adv12.secret",  # id too short
        "Bearer ADV123.secret",  # id must be lowercase
        "Bearer adv-123.secret",  # id charset
        "Bearer " + "a" * 33 + ".secret",  # id too long
        "Bearer adv123." + "s" * 300,  # whole token too long
    ],
)
def test_parse_bearer_rejects_malformed_headers(header):
    assert parse_bearer(header) is None


def test_parse_bearer_trims_whitespace_around_the_token():
    assert parse_bearer("Bearer   adv123.secret  ") == ("adv123", "adv123.secret")


def test_secret_may_contain_dots():
    assert parse_bearer("Bearer adv123.se.cret") == ("adv123", "adv123.se.cret")
