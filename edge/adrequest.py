"""Parse and validate a publisher's ad request. Pure: query parameters in, AdRequest or field errors out.

Patterns use ``fullmatch``: ``$`` would also accept a trailing newline, and ``str.isdigit`` accepts
non-ASCII digits that ``int`` then rejects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from edge.auction import AdRequest
from edge.tcf import BadConsent
from edge.tcf import decode as decode_consent
from replication.ctr_model import site_of
from replication.segments import KEYWORD_PREFIX, RETARGETING_PREFIX

_PLACEMENT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_FORMAT = re.compile(r"[0-9]{1,4}x[0-9]{1,4}")
_SLOTS = re.compile(r"[0-9]{1,3}")
_GEO = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
# Letters and digits of any script ("café", "fußball"), then spaces, '-' or '_': up to 64 characters.
_TERM = re.compile(r"[^\W_][\w -]{0,63}")
DEVICES = frozenset({"desktop", "mobile", "tablet", "ctv"})
KNOWN = frozenset({"placement", "slots", "format", "user", "geo", "device", "keywords", "interests", "url",
                   "explain", "gdpr", "gdpr_consent", "gpc"})
_CONSENT = re.compile(r"[A-Za-z0-9_.~-]{1,4096}")


class RepeatedParameter(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def query_dict(raw: bytes) -> dict[str, str]:
    """A query string as a plain dict, what Starlette's ``QueryParams`` gives but at a fraction of the cost on
    the ad path: its ``get`` goes through ``Mapping``'s Python-level method per call. A query without escapes
    ('%' or '+') splits directly, with exactly ``parse_qsl``'s result; any other goes through ``parse_qsl`` as
    Starlette does (latin-1 bytes, blank values kept). A name given twice raises ``RepeatedParameter``:
    Starlette would keep the last, so "explain=<bad>&explain=" passed a value nobody checked."""
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
    else:
        pairs = [(name, value) for name, _, value in (part.partition("=") for part in text.split("&") if part)]
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        raise RepeatedParameter(next(name for name, _ in pairs if name in seen or seen.add(name)))
    return found


@dataclass(frozen=True, slots=True)
class ParamError:
    field: str
    message: str


def _terms(raw: str, field: str, errors: list[ParamError]) -> tuple[str, ...]:
    if not raw:
        return ()
    segments = raw.split(",")
    # Empty segments count: the documented pattern (edge.openapi) allows 50 segments, some of them empty.
    if len(segments) > 50:
        errors.append(ParamError(field, "at most 50 comma-separated terms (empty ones count)"))
        return ()
    terms = [t.strip().lower() for t in segments if t.strip()]
    bad = [t for t in terms if not _TERM.fullmatch(t)]
    if bad:
        errors.append(ParamError(field, f"{bad[0]!r} is not a term of 1-64 letters, digits, spaces, '-' or '_'"))
        return ()
    return tuple(dict.fromkeys(terms))


def _page_keywords(raw: str) -> tuple[str, ...]:
    """Keywords come from the publisher's page (its meta tags): keep the usable terms and drop the rest,
    because one odd term ("c++") must not cost the page all of its ads."""
    terms = [t.strip().lower() for t in raw.split(",")]
    return tuple(dict.fromkeys(t for t in terms if _TERM.fullmatch(t)))[:50]


def _unknown(params: Mapping[str, str], known: frozenset[str]) -> list[ParamError]:
    """A list of errors, started with the first parameter this endpoint does not take (if any)."""
    if params.keys() <= known:  # the usual case, one C-level set comparison
        return []
    unknown = sorted(k for k in params if k not in known)
    return [ParamError(unknown[0], f"unknown parameter; allowed: {sorted(known)}")] if unknown else []


def consented(params: Mapping[str, str], errors: list[ParamError], vendor_id: int = 0) -> bool:
    """Whether the user may be profiled: not under Global Privacy Control (gpc=1), and under GDPR (gdpr=1)
    only with a TCF v2 consent string that grants purposes 1, 3 and 4, and the vendor ``vendor_id`` if given
    (``edge.tcf``). Bad flag values, and under GDPR a string that is not a TCF v2 one, are added to
    ``errors``; where GDPR does not apply the string is not read."""
    flags = {}
    for name in ("gdpr", "gpc"):
        raw = params.get(name, "0")
        if raw not in ("0", "1"):
            errors.append(ParamError(name, "must be 0 or 1"))
        flags[name] = raw == "1"
    raw_consent = params.get("gdpr_consent", "")
    if raw_consent and not _CONSENT.fullmatch(raw_consent):
        errors.append(ParamError("gdpr_consent", "must be a TCF consent string (base64url, at most 4096 chars)"))
        return False
    if flags["gpc"]:
        return False
    if not flags["gdpr"]:
        return True  # the string decides nothing, and is not read
    if not raw_consent:
        return False
    try:
        return decode_consent(raw_consent).allows_profiling(vendor_id)
    except BadConsent as exc:
        errors.append(ParamError("gdpr_consent", f"not a TCF v2 consent string: {exc}"))
        return False


_ADVERTISER = re.compile(r"[A-Za-z0-9_-]{1,64}")
PIXEL_KNOWN = frozenset({"adv", "seg", "user", "gdpr", "gdpr_consent", "gpc"})


@dataclass(frozen=True, slots=True)
class PixelHit:
    advertiser_id: str
    segment: str
    user: str  # empty without consent: nothing is recorded


def parse_pixel(params: Mapping[str, str], vendor_id: int = 0) -> PixelHit | list[ParamError]:
    """A retargeting pixel: ``adv`` (the advertiser's id), ``seg`` (its list's name, a term), ``user``."""
    errors = _unknown(params, PIXEL_KNOWN)
    advertiser = params.get("adv", "")
    if not _ADVERTISER.fullmatch(advertiser):
        errors.append(ParamError("adv", "required: the advertiser id, 1-64 letters, digits, '_' or '-'"))
    segment = params.get("seg", "").strip().lower()
    if not _TERM.fullmatch(segment):
        errors.append(ParamError("seg", "required: a list name of 1-64 letters, digits, spaces, '-' or '_'"))
    user = params.get("user", "")
    if not 1 <= len(user) <= 128:
        errors.append(ParamError("user", "required: 1-128 characters"))
    personalized = consented(params, errors, vendor_id)
    if errors:
        return errors
    return PixelHit(advertiser, segment, user if personalized else "")


def parse_ad_request(params: Mapping[str, str], max_slots: int, vendor_id: int = 0) -> AdRequest | list[ParamError]:
    errors = _unknown(params, KNOWN)
    placement = params.get("placement", "")
    if not _PLACEMENT.fullmatch(placement):
        errors.append(ParamError("placement", "required: 1-128 letters, digits or _.:-"))
    fmt = params.get("format", "")
    if not _FORMAT.fullmatch(fmt):
        errors.append(ParamError("format", "required: WIDTHxHEIGHT such as 300x250"))
    elif fmt in ("0x0", "1x1"):
        errors.append(ParamError("format", "0x0 and 1x1 placements cannot show ads"))
    slots_raw = params.get("slots", "1")
    slots = 1
    if not _SLOTS.fullmatch(slots_raw) or not 1 <= int(slots_raw) <= max_slots:
        errors.append(ParamError("slots", f"must be an integer from 1 to {max_slots}"))
    else:
        slots = int(slots_raw)
    geo = params.get("geo", "").upper()
    if geo and not _GEO.fullmatch(geo):
        errors.append(ParamError("geo", "must be a country (US) or region (US-CA) code"))
    device = params.get("device", "").lower()
    if device and device not in DEVICES:
        errors.append(ParamError("device", f"must be one of {sorted(DEVICES)}"))
    user = params.get("user", "")
    if len(user) > 128:
        errors.append(ParamError("user", "at most 128 characters"))
    url = params.get("url", "")
    if len(url) > 2048:
        errors.append(ParamError("url", "at most 2048 characters"))
    keywords = _page_keywords(params.get("keywords", ""))
    # Behavioural segments come from the user's profile only: a publisher must not claim that its reader is
    # on an advertiser's retargeting list (or in a keyword segment) by naming it.
    interests = tuple(t for t in _terms(params.get("interests", ""), "interests", errors)
                      if not t.startswith((KEYWORD_PREFIX, RETARGETING_PREFIX)))
    personalized = consented(params, errors, vendor_id)
    if errors:
        return errors
    # Without consent the request is contextual only: no user id (frequency caps, profiles) and no
    # interest segments; page keywords, placement, geo and device still target.
    return AdRequest(placement=placement, slots=slots, format=fmt, user=user if personalized else "", geo=geo,
                     device=device, keywords=keywords, interests=interests if personalized else (), url=url,
                     personalized=personalized, site=site_of(url) if url else "")
