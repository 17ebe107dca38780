"""Advertiser bearer tokens: minted once, stored only as a SHA-256 hash, compared in constant time.

A token reads ``<advertiser_id>.<secret>``: the id finds the record, the secret is checked against the
stored hash with ``hmac.compare_digest``. The secret has 256 bits of entropy, so a plain hash (no slow KDF)
is the right tool, as for GitHub or Stripe API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_ID = re.compile(r"^[a-z0-9]{6,32}$")


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


def mint_token(advertiser_id: str) -> tuple[str, str]:
    """Return (token to hand out once, hash to store)."""
    token = f"{advertiser_id}.{secrets.token_urlsafe(32)}"
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_bearer(header: str | None) -> tuple[str, str] | None:
    """``Bearer <id>.<secret>`` -> (advertiser id, whole token), or None when malformed."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":  # the auth scheme is case-insensitive (RFC 9110)
        return None
    token = token.strip()
    advertiser_id, sep, secret = token.partition(".")
    if not sep or not secret or not _ID.match(advertiser_id) or len(token) > 256:
        return None
    return advertiser_id, token


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)
