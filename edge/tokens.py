"""Signed, expiring beacon tokens: the only way an impression, click or conversion is counted.

A token is ``base64url(msgpack(claims)) . key_id . base64url(HMAC-SHA256(key, key_id . payload))``.
The key id lets keys rotate: the newest key signs, every listed key verifies until its tokens expire.
Verification is constant-time (``hmac.compare_digest``) and returns a reason instead of raising, so a
forged beacon is a counted, labelled "no" rather than an exception path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import msgpack

from replication.wire import packb


class TokenReason(StrEnum):
    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    WRONG_KIND = "wrong_kind"


@dataclass(frozen=True, slots=True)
class SigningKeys:
    active_kid: str
    keys: Mapping[str, bytes] = field(repr=False)  # secrets stay out of reprs and logs
    # Per key id, an HMAC with the key already absorbed: a token copies it instead of hashing the key's
    # padded blocks again (half of an HMAC over a token-sized message).
    macs: Mapping[str, hmac.HMAC] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.active_kid not in self.keys:
            raise ValueError(f"active key id {self.active_kid!r} is not among the keys")
        for kid, key in self.keys.items():
            if not kid or "." in kid:
                raise ValueError(f"key id {kid!r} must be non-empty and contain no '.'")
            if len(key) < 32:
                raise ValueError(f"key {kid!r} is shorter than 32 bytes")
        # Frozen: ``macs`` is built from these once, so the caller's dict must not change under them. (A
        # SigningKeys cannot be pickled or deep-copied: HMAC objects cannot; nothing needs to.)
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "macs", MappingProxyType({kid: hmac.new(key, digestmod=hashlib.sha256)
                                                           for kid, key in self.keys.items()}))

    @classmethod
    def parse(cls, spec: str) -> SigningKeys:
        """``kid:base64key,kid2:base64key2``; the first is the active signing key."""
        keys: dict[str, bytes] = {}
        first = ""
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            kid, sep, b64 = part.partition(":")
            if not sep:
                raise ValueError("each key must be written kid:base64secret")
            try:
                keys[kid] = base64.b64decode(b64, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"key {kid!r} is not valid base64") from exc
            first = first or kid
        if not keys:
            raise ValueError("no signing keys given")
        return cls(active_kid=first, keys=keys)


@dataclass(frozen=True, slots=True)
class Verified:
    reason: TokenReason
    claims: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.reason == TokenReason.OK


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode's own steps, without its two Python-level calls.
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(keyed: hmac.HMAC, kid: str, payload: str) -> bytes:
    mac = keyed.copy()
    mac.update(f"{kid}.{payload}".encode("ascii"))
    return mac.digest()


def sign(claims: Mapping[str, Any], keys: SigningKeys) -> str:
    """Sign claims; they must include ``exp`` (epoch seconds) and ``k`` (the token kind)."""
    if "exp" not in claims or "k" not in claims:
        raise ValueError("claims need 'exp' and 'k'")
    # msgpack packs dicts only; the ad path passes fresh ones, so only other mappings are copied.
    payload = _b64(packb(claims if type(claims) is dict else dict(claims)))
    kid = keys.active_kid
    return f"{payload}.{kid}.{_b64(_mac(keys.macs[kid], kid, payload))}"


_EMPTY: Mapping[str, Any] = {}


def verify(token: str, keys: SigningKeys, *, now_s: float, kind: str | None = None) -> Verified:
    if not token or len(token) > 4096:
        return Verified(TokenReason.MALFORMED, _EMPTY)
    parts = token.split(".")
    if len(parts) != 3:
        return Verified(TokenReason.MALFORMED, _EMPTY)
    payload, kid, sig = parts
    keyed = keys.macs.get(kid)
    if keyed is None:
        return Verified(TokenReason.UNKNOWN_KEY, _EMPTY)
    try:
        given = _unb64(sig)
    except (binascii.Error, ValueError):
        return Verified(TokenReason.MALFORMED, _EMPTY)
    try:
        expected = _mac(keyed, kid, payload)
    except UnicodeEncodeError:
        return Verified(TokenReason.MALFORMED, _EMPTY)
    if not hmac.compare_digest(given, expected):
        return Verified(TokenReason.BAD_SIGNATURE, _EMPTY)
    try:
        claims = msgpack.unpackb(_unb64(payload), raw=False)
    except Exception:
        return Verified(TokenReason.MALFORMED, _EMPTY)
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
        return Verified(TokenReason.MALFORMED, _EMPTY)
    if now_s >= claims["exp"]:
        return Verified(TokenReason.EXPIRED, claims)
    if kind is not None and claims.get("k") != kind:
        return Verified(TokenReason.WRONG_KIND, claims)
    return Verified(TokenReason.OK, claims)
