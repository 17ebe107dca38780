"""Signed beacon tokens: round trip, tampering, expiry, kinds, key rotation, and malformed input as values."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.tokens import SigningKeys, TokenReason, sign, verify

KEY_A = b"a" * 32
KEY_B = b"b" * 48
NOW = 1_700_000_000


def keys(*pairs: tuple[str, bytes]) -> SigningKeys:
    return SigningKeys(active_kid=pairs[0][0], keys=dict(pairs))


KEYS = keys(("k1", KEY_A))


def claims(**extra):
    return {"k": "i", "exp": NOW + 60, "imp": "auc-0", "px": 1234, **extra}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- round trip ----------------------------------------------------------------------------------------------


def test_sign_then_verify_returns_the_claims():
    token = sign(claims(), KEYS)
    result = verify(token, KEYS, now_s=NOW, kind="i")
    assert result.ok
    assert result.reason is TokenReason.OK
    assert dict(result.claims) == claims()


def test_token_has_payload_key_id_and_signature():
    payload, kid, sig = sign(claims(), KEYS).split(".")
    assert kid == "k1"
    assert payload and sig
    assert "=" not in payload + sig  # unpadded base64url, safe in a query string


def test_signature_is_plain_hmac_sha256_of_key_id_and_payload_every_time():
    """The key's HMAC state is kept and copied per token (SigningKeys.macs): a copy that leaked the previous
    token's bytes into the next would still verify against itself, so compare with a fresh HMAC each time."""
    import hmac
    from hashlib import sha256

    for i in range(3):
        for keyset, kid, key in ((KEYS, "k1", KEY_A), (keys(("k2", KEY_B)), "k2", KEY_B)):
            payload, _, sig = sign(claims(imp=f"auc-{i}"), keyset).split(".")
            expected = hmac.new(key, f"{kid}.{payload}".encode(), sha256).digest()
            assert base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) == expected


def test_payload_is_the_standard_unpadded_base64url_of_the_msgpack_claims():
    """``_b64`` spells out urlsafe_b64encode's steps: same characters ('-' and '_' among them) for every
    length of input modulo 3, padding stripped."""
    import os

    import msgpack

    from edge.tokens import _b64

    for n in range(0, 200):
        data = os.urandom(n) + b"\xfb\xff\xfe"[: n % 3]  # bytes that encode to '+' or '/' in plain base64
        assert _b64(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    payload = sign(claims(), KEYS).split(".")[0]
    assert payload == base64.urlsafe_b64encode(msgpack.packb(claims(), use_bin_type=True)).rstrip(b"=").decode()


def test_verify_without_kind_accepts_any_kind():
    assert verify(sign(claims(k="c"), KEYS), KEYS, now_s=NOW).ok


def test_sign_requires_exp_and_kind():
    with pytest.raises(ValueError):
        sign({"k": "i"}, KEYS)
    with pytest.raises(ValueError):
        sign({"exp": NOW}, KEYS)


# --- refusals ------------------------------------------------------------------------------------------------


def test_tampered_payload_is_a_bad_signature():
    _, kid, sig = sign(claims(px=1), KEYS).split(".")
    forged_payload = sign(claims(px=1_000_000), KEYS).split(".")[0]
    result = verify(f"{forged_payload}.{kid}.{sig}", KEYS, now_s=NOW)
    assert result.reason is TokenReason.BAD_SIGNATURE
    assert not result.ok
    assert dict(result.claims) == {}


def test_tampered_signature_is_a_bad_signature():
    payload, kid, sig = sign(claims(), KEYS).split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert verify(f"{payload}.{kid}.{flipped}", KEYS, now_s=NOW).reason is TokenReason.BAD_SIGNATURE


def test_signature_from_another_key_is_a_bad_signature():
    other = keys(("k1", KEY_B))
    assert verify(sign(claims(), other), KEYS, now_s=NOW).reason is TokenReason.BAD_SIGNATURE


def test_unknown_key_id():
    token = sign(claims(), keys(("k9", KEY_A)))
    assert verify(token, KEYS, now_s=NOW).reason is TokenReason.UNKNOWN_KEY


def test_expired_at_exactly_exp():
    token = sign(claims(exp=NOW), KEYS)
    assert verify(token, KEYS, now_s=NOW - 0.001).ok
    result = verify(token, KEYS, now_s=NOW)
    assert result.reason is TokenReason.EXPIRED
    assert result.claims["imp"] == "auc-0"  # expired claims are still reported, for the reason label


def test_wrong_kind():
    token = sign(claims(k="c"), KEYS)
    assert verify(token, KEYS, now_s=NOW, kind="i").reason is TokenReason.WRONG_KIND


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", TokenReason.MALFORMED),
        ("abc", TokenReason.MALFORMED),
        ("a.b", TokenReason.MALFORMED),
        ("a.k1.c.d", TokenReason.MALFORMED),
        ("x" * 5000, TokenReason.MALFORMED),
        ("a.k1.a", TokenReason.MALFORMED),  # one base64 character cannot encode a byte
        ("é.k1.abcd", TokenReason.MALFORMED),  # non-ASCII payload
        ("a.k1.é", TokenReason.MALFORMED),  # non-ASCII signature
        ("..", TokenReason.UNKNOWN_KEY),  # empty key id
        ("a.k1.@@@@", TokenReason.BAD_SIGNATURE),  # decodes to nothing
    ],
)
def test_malformed_strings(token, reason):
    result = verify(token, KEYS, now_s=NOW)
    assert result.reason is reason
    assert not result.ok
    assert dict(result.claims) == {}


def test_signed_payload_that_is_not_msgpack_is_malformed():
    import hmac
    from hashlib import sha256

    payload = base64.urlsafe_b64encode(b"\xc1\xc1").rstrip(b"=").decode()  # 0xc1 is never valid msgpack
    sig = base64.urlsafe_b64encode(hmac.new(KEY_A, f"k1.{payload}".encode(), sha256).digest()).rstrip(b"=")
    assert verify(f"{payload}.k1.{sig.decode()}", KEYS, now_s=NOW).reason is TokenReason.MALFORMED


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_never_raises_and_is_never_ok(text):
    assert not verify(text, KEYS, now_s=NOW).ok


@settings(max_examples=200, deadline=None)
@given(payload=st.text(max_size=100), sig=st.text(max_size=100))
def test_arbitrary_parts_with_a_known_key_id_never_raise_and_are_never_ok(payload, sig):
    assert not verify(f"{payload}.k1.{sig}", KEYS, now_s=NOW).ok


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_character_change_breaks_a_valid_token(data):
    token = sign(claims(), KEYS)
    i = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda ch: ch != token[i]))
    mutated = token[:i] + replacement + token[i + 1:]
    # base64 ignores the spare low bits of the last character, so only a change that alters the decoded
    # bytes must be refused; anything else must still verify to the very same claims.
    result = verify(mutated, KEYS, now_s=NOW)
    assert not result.ok or dict(result.claims) == claims()


# --- key rotation --------------------------------------------------------------------------------------------


def test_old_key_verifies_while_listed_and_fails_once_removed():
    old = keys(("old", KEY_A))
    token = sign(claims(), old)
    rotated = keys(("new", KEY_B), ("old", KEY_A))
    assert verify(token, rotated, now_s=NOW).ok
    assert sign(claims(), rotated).split(".")[1] == "new"  # the newest key signs
    retired = keys(("new", KEY_B))
    assert verify(token, retired, now_s=NOW).reason is TokenReason.UNKNOWN_KEY


# --- SigningKeys ---------------------------------------------------------------------------------------------


def test_parse_first_key_is_active():
    parsed = SigningKeys.parse(f"k2:{b64(KEY_B)}, k1:{b64(KEY_A)}")
    assert parsed.active_kid == "k2"
    assert parsed.keys == {"k2": KEY_B, "k1": KEY_A}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (f"k1:{b64(b'x' * 31)}", "shorter than 32 bytes"),
        ("k1:not*base64!", "not valid base64"),
        (b64(KEY_A), "kid:base64secret"),
        ("", "no signing keys"),
        (" , ", "no signing keys"),
        (f"a.b:{b64(KEY_A)}", "contain no '.'"),
        (f":{b64(KEY_A)}", "non-empty"),
    ],
)
def test_parse_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        SigningKeys.parse(spec)


def test_parse_error_does_not_echo_the_secret():
    secret = b64(b"s" * 20)
    with pytest.raises(ValueError) as info:
        SigningKeys.parse(f"k1:{secret}")
    assert secret not in str(info.value)


def test_active_kid_must_be_listed():
    with pytest.raises(ValueError, match="not among the keys"):
        SigningKeys(active_kid="k2", keys={"k1": KEY_A})
