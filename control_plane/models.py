"""Campaigns and creatives: validation, lifecycle and rule-based review. Pure: no I/O, clock passed in.

Validation collects every problem and names the field, so an advertiser fixes a form in one round trip.
Only the fields listed here are writable: ``id``, ``advertiser_id``, ``status`` and the review are the
server's, and a request that tries to set them is refused (no mass assignment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from replication.segments import owned_interest
from replication.snapshot import FrequencyCap, SnapshotCampaign, SnapshotCreative
from replication.variants import COMPONENTS, MAX_ALTERNATIVES

MAX_MICROS = 10**15  # a billion currency units: far above any real budget, far below int64 overflow
SIZES = frozenset({"300x250", "728x90", "320x50", "160x600", "300x600", "970x250", "320x100", "336x280"})
DEVICES = frozenset({"desktop", "mobile", "tablet", "ctv"})
OBJECTIVES = frozenset({"awareness", "traffic", "conversions"})
BID_TYPES = frozenset({"cpm", "cpc", "cpa"})
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_GEO = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")
# Same term syntax as the edge's page keywords: letters and digits of any script, spaces, '-' and '_'.
_TERM = re.compile(r"^[^\W_][\w -]{0,63}\Z")
PLACEMENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
BANNED_WORDS = ("guaranteed income", "miracle cure", "free money", "get rich quick")
# Ceilings the automatic review approves without a human: above these a campaign waits as rejected with a
# reason, which is safer than serving a typo'd $5,000 CPM.
MAX_AUTO_CPM_MICROS = 200_000_000
MAX_AUTO_CPC_MICROS = 50_000_000
MAX_AUTO_CPA_MICROS = 1_000_000_000


class Status(StrEnum):
    DRAFT = "draft"
    PENDING_REVIEW = "pending_review"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class ValidationFailed(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


CAMPAIGN_FIELDS = frozenset({
    "name", "objective", "bid_type", "max_bid_micros", "daily_budget_micros", "total_budget_micros",
    "start", "end", "timezone", "targeting", "pacing", "budget_mode", "prior_cvr", "attribution",
    "frequency_caps",
})
# Pacing: "even" follows the traffic-shaped plan (ours), "asap" spends as traffic comes, "step" is the
# LinkedIn-style +-10%-per-minute throttle kept as a comparison baseline.
PACING_MODES = ("even", "asap", "step")
# Budget admission: "allowance" spends only escrowed slices (the product); "counter" admits against the
# replicated spend counter alone: a research baseline that overspends during partitions, refused unless the
# control plane allows baselines (ADSERVER_CP_ALLOW_BASELINES).
BUDGET_MODES = ("allowance", "counter")
REQUIRED_CAMPAIGN_FIELDS = ("name", "bid_type", "max_bid_micros", "daily_budget_micros", "total_budget_micros",
                            "start", "timezone")
TARGETING_FIELDS = frozenset({"countries", "geos", "devices", "interests", "keywords", "placements", "hours"})
CREATIVE_FIELDS = frozenset({"headline", "image_url", "landing_url", "cta", "size", "prior_ctr", "alternatives"})


def _int_micros(value: Any, field: str, errors: list[FieldError], *, allow_zero: bool = False) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(field, "must be an integer number of micros (1 unit = 1,000,000)"))
        return None
    if value < 0 or (value == 0 and not allow_zero) or value > MAX_MICROS:
        errors.append(FieldError(field, f"must be between {0 if allow_zero else 1} and {MAX_MICROS}"))
        return None
    return value


def _text(value: Any, field: str, errors: list[FieldError], max_len: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(FieldError(field, "must be a non-empty string"))
        return None
    if len(value) > max_len:
        errors.append(FieldError(field, f"must be at most {max_len} characters"))
        return None
    if any(ord(ch) < 32 for ch in value):
        errors.append(FieldError(field, "must not contain control characters"))
        return None
    return value.strip()


def _url(value: Any, field: str, errors: list[FieldError]) -> str | None:
    text = _text(value, field, errors, 2048)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
    except ValueError:  # "http://[::1" and other hosts urlsplit refuses (bad brackets, NFKC look-alikes)
        errors.append(FieldError(field, "must be an absolute http(s) URL"))
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append(FieldError(field, "must be an absolute http(s) URL"))
        return None
    return text


def _datetime(value: Any, field: str, tz: ZoneInfo | None, errors: list[FieldError]) -> datetime | None:
    if not isinstance(value, str):
        errors.append(FieldError(field, "must be an ISO 8601 date-time string"))
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        errors.append(FieldError(field, "must be an ISO 8601 date-time such as 2026-11-24T00:00:00"))
        return None
    if parsed.tzinfo is None and tz is not None:
        parsed = parsed.replace(tzinfo=tz)  # a wall-clock time in the campaign's own timezone
    return parsed


def _string_list(
    value: Any, field: str, errors: list[FieldError], pattern: re.Pattern[str], hint: str, normalize: bool
) -> list[str] | None:
    if not isinstance(value, list) or len(value) > 1000:
        errors.append(FieldError(field, "must be a list of at most 1000 strings"))
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            errors.append(FieldError(f"{field}[{i}]", "must be a string"))
            continue
        v = item.strip().lower() if normalize else item.strip()
        if not pattern.match(v):
            errors.append(FieldError(f"{field}[{i}]", f"{item!r} is not {hint}"))
            continue
        out.append(v)
    return sorted(set(out))


# Attribution windows (hours): the industry's common defaults, last click within 7 days else last view
# within 1 day; at most 90 and 30 days, the longest an ad server keeps the user's touches.
ATTRIBUTION_DEFAULTS = {"click_window_hours": 168, "view_window_hours": 24}
_ATTRIBUTION_LIMITS = {"click_window_hours": (1, 90 * 24), "view_window_hours": (0, 30 * 24)}


def validate_attribution(raw: Any, errors: list[FieldError]) -> dict[str, int]:
    if raw is None:
        return dict(ATTRIBUTION_DEFAULTS)
    if not isinstance(raw, dict):
        errors.append(FieldError("attribution", "must be an object with click_window_hours, view_window_hours"))
        return dict(ATTRIBUTION_DEFAULTS)
    out = dict(ATTRIBUTION_DEFAULTS)
    for key in raw:
        if key not in _ATTRIBUTION_LIMITS:
            errors.append(FieldError(f"attribution.{key}", "unknown field"))
    for key, (lo, hi) in _ATTRIBUTION_LIMITS.items():
        value = raw.get(key, out[key])
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            errors.append(FieldError(f"attribution.{key}", f"must be an integer number of hours from {lo} to {hi}"))
            continue
        out[key] = value
    return out


# Frequency caps: per user, at most max_impressions of the campaign (all its creatives) or of each creative in
# any window_minutes. A user's history keeps max_impressions times per capped campaign and creative, so the
# ceiling bounds the region's Redis memory per user; the window is at most 30 days, as long as it keeps them.
FREQUENCY_CAP_SCOPES = ("campaign", "creative")
FREQUENCY_CAP_LIMITS = {"max_impressions": (1, 100), "window_minutes": (1, 30 * 24 * 60)}
MAX_FREQUENCY_CAPS = 4


def validate_frequency_caps(raw: Any, errors: list[FieldError]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_FREQUENCY_CAPS:
        errors.append(FieldError("frequency_caps", f"must be a list of at most {MAX_FREQUENCY_CAPS} caps, each "
                                 "{scope, max_impressions, window_minutes}"))
        return []
    out = []
    for i, cap in enumerate(raw):
        where = f"frequency_caps[{i}]"
        if not isinstance(cap, dict):
            errors.append(FieldError(where, "must be an object with scope, max_impressions, window_minutes"))
            continue
        ok = True
        for key in cap:
            if key not in ("scope", *FREQUENCY_CAP_LIMITS):
                errors.append(FieldError(f"{where}.{key}", "unknown field"))
                ok = False
        scope = cap.get("scope", "campaign")
        if not isinstance(scope, str) or scope not in FREQUENCY_CAP_SCOPES:
            errors.append(FieldError(f"{where}.scope", f"must be one of {list(FREQUENCY_CAP_SCOPES)}"))
            ok = False
        for key, (lo, hi) in FREQUENCY_CAP_LIMITS.items():
            value = cap.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                errors.append(FieldError(f"{where}.{key}", f"must be an integer from {lo} to {hi}"))
                ok = False
        if ok:
            out.append({"scope": scope, "max_impressions": cap["max_impressions"],
                        "window_minutes": cap["window_minutes"]})
    return out


def validate_targeting(raw: Any, errors: list[FieldError]) -> dict[str, list[Any]]:
    if raw is None:
        return {k: [] for k in sorted(TARGETING_FIELDS)}
    if not isinstance(raw, dict):
        errors.append(FieldError("targeting", "must be an object"))
        return {}
    for key in raw:
        if key not in TARGETING_FIELDS:
            errors.append(FieldError(f"targeting.{key}", f"unknown field; allowed: {sorted(TARGETING_FIELDS)}"))
    out: dict[str, list[Any]] = {}
    specs = {
        "countries": (_COUNTRY, "an ISO 3166 alpha-2 country code such as US", False),
        "geos": (_GEO, "a region code such as US-CA", False),
        "interests": (_TERM, "a lowercase term of 1-64 letters, digits, spaces, '-' or '_'", True),
        "keywords": (_TERM, "a lowercase term of 1-64 letters, digits, spaces, '-' or '_'", True),
        "placements": (PLACEMENT_ID, "a placement id of 1-128 letters, digits or _.:-", False),
    }
    for key, (pattern, hint, normalize) in specs.items():
        got = _string_list(raw.get(key, []), f"targeting.{key}", errors, pattern, hint, normalize)
        out[key] = got or []
    devices = raw.get("devices", [])
    if not isinstance(devices, list) or any(not isinstance(d, str) or d not in DEVICES for d in devices):
        errors.append(FieldError("targeting.devices", f"must be a list drawn from {sorted(DEVICES)}"))
        out["devices"] = []
    else:
        out["devices"] = sorted(set(devices))
    hours = raw.get("hours", [])
    if not isinstance(hours, list) or any(
        isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= 23 for h in hours
    ):
        errors.append(FieldError("targeting.hours", "must be a list of hours 0-23 in the campaign's timezone"))
        out["hours"] = []
    else:
        out["hours"] = sorted(set(hours))
    return out


def validate_campaign(data: Any, *, existing: dict[str, Any] | None = None,
                      allow_baselines: bool = False) -> dict[str, Any]:
    """Validate a create (existing=None) or a partial update merged onto ``existing``.

    Returns the campaign's writable fields, complete and normalized; raises ValidationFailed listing every
    bad field.
    """
    errors: list[FieldError] = []
    if not isinstance(data, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    for key in data:
        if key not in CAMPAIGN_FIELDS and key != "creatives":
            errors.append(FieldError(key, "unknown or read-only field"))
    if existing is None:
        for key in REQUIRED_CAMPAIGN_FIELDS:
            if key not in data:
                errors.append(FieldError(key, "is required"))
        merged: dict[str, Any] = {"objective": "traffic", "end": None, "targeting": None,
                                  "pacing": "even", "budget_mode": "allowance", "prior_cvr": 0.02,
                                  "attribution": None, "frequency_caps": None}
    else:
        if "creatives" in data:
            errors.append(FieldError("creatives", "add creatives with POST /v1/campaigns/{id}/creatives"))
        merged = {k: existing[k] for k in CAMPAIGN_FIELDS if k in existing}
    merged.update({k: v for k, v in data.items() if k in CAMPAIGN_FIELDS})

    out: dict[str, Any] = {}
    out["name"] = _text(merged.get("name"), "name", errors, 200)
    objective = merged.get("objective")
    # isinstance first: a JSON object or array is unhashable, and `in` a frozenset would raise TypeError.
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        errors.append(FieldError("objective", f"must be one of {sorted(OBJECTIVES)}"))
    out["objective"] = objective
    bid_type = merged.get("bid_type")
    if not isinstance(bid_type, str) or bid_type not in BID_TYPES:
        errors.append(FieldError("bid_type", f"must be one of {sorted(BID_TYPES)}"))
    out["bid_type"] = bid_type
    out["max_bid_micros"] = _int_micros(merged.get("max_bid_micros"), "max_bid_micros", errors)
    daily = _int_micros(merged.get("daily_budget_micros"), "daily_budget_micros", errors)
    total = _int_micros(merged.get("total_budget_micros"), "total_budget_micros", errors)
    if daily is not None and total is not None and total < daily:
        errors.append(FieldError("total_budget_micros", "must be at least daily_budget_micros"))
    out["daily_budget_micros"], out["total_budget_micros"] = daily, total
    tz_name = merged.get("timezone")
    tz: ZoneInfo | None = None
    try:
        if not isinstance(tz_name, str) or not tz_name:
            raise ZoneInfoNotFoundError
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" is a directory: OSError, not NotFound
        errors.append(FieldError("timezone", "must be an IANA timezone such as Europe/Berlin"))
    out["timezone"] = tz_name
    start = _datetime(merged.get("start"), "start", tz, errors)
    end = None if merged.get("end") is None else _datetime(merged.get("end"), "end", tz, errors)
    if start is not None and end is not None and start.tzinfo and end.tzinfo and end <= start:
        errors.append(FieldError("end", "must be after start"))
    out["start"] = start.isoformat() if start else None
    out["end"] = end.isoformat() if end else None
    out["targeting"] = validate_targeting(merged.get("targeting"), errors)
    pacing = merged.get("pacing")
    if not isinstance(pacing, str) or pacing not in PACING_MODES:
        errors.append(FieldError("pacing", f"must be one of {list(PACING_MODES)}"))
    out["pacing"] = pacing
    budget_mode = merged.get("budget_mode", "allowance")  # records older than the field are allowance
    if not isinstance(budget_mode, str) or budget_mode not in BUDGET_MODES:
        errors.append(FieldError("budget_mode", f"must be one of {list(BUDGET_MODES)}"))
    elif budget_mode != "allowance" and not allow_baselines:
        errors.append(FieldError("budget_mode", f"{budget_mode!r} is a research baseline that can overspend; "
                                 "this control plane does not allow it (ADSERVER_CP_ALLOW_BASELINES)"))
    out["budget_mode"] = budget_mode
    cvr = merged.get("prior_cvr")
    if isinstance(cvr, bool) or not isinstance(cvr, int | float) or not 0 < cvr <= 1:
        errors.append(FieldError("prior_cvr", "must be a number in (0, 1]"))
    out["prior_cvr"] = cvr
    out["attribution"] = validate_attribution(merged.get("attribution"), errors)
    out["frequency_caps"] = validate_frequency_caps(merged.get("frequency_caps"), errors)
    if errors:
        # One message per field: a missing field is reported as missing, not also as malformed.
        first: dict[str, FieldError] = {}
        for e in errors:
            first.setdefault(e.field, e)
        raise ValidationFailed(list(first.values()))
    return out


TEXT_MAX = {"headline": 90, "cta": 30}  # characters; the OpenAPI document reads them from here


def validate_creative(data: Any, field_prefix: str = "") -> dict[str, Any]:
    errors: list[FieldError] = []
    if not isinstance(data, dict):
        raise ValidationFailed([FieldError(field_prefix or "body", "must be a JSON object")])
    p = field_prefix
    for key in data:
        if key not in CREATIVE_FIELDS:
            errors.append(FieldError(f"{p}{key}", "unknown or read-only field"))
    out: dict[str, Any] = {
        "headline": _text(data.get("headline"), f"{p}headline", errors, TEXT_MAX["headline"]),
        "image_url": _url(data.get("image_url"), f"{p}image_url", errors),
        "landing_url": _url(data.get("landing_url"), f"{p}landing_url", errors),
        "cta": _text(data.get("cta", "Learn more"), f"{p}cta", errors, TEXT_MAX["cta"]),
    }
    size = data.get("size")
    if not isinstance(size, str) or size not in SIZES:
        errors.append(FieldError(f"{p}size", f"must be one of {sorted(SIZES)}"))
    out["size"] = size
    ctr = data.get("prior_ctr", 0.01)
    if isinstance(ctr, bool) or not isinstance(ctr, int | float) or not 0 < ctr < 1:
        errors.append(FieldError(f"{p}prior_ctr", "must be a number in (0, 1)"))
    out["prior_ctr"] = ctr
    out["alternatives"] = _alternatives(data.get("alternatives"), out, f"{p}alternatives", errors)
    if errors:
        raise ValidationFailed(errors)
    return out


def _alternatives(raw: Any, own: dict[str, Any], field: str, errors: list[FieldError]) -> dict[str, list[str]]:
    """Other headlines, images and calls to action to try in the creative's place (replication.variants):
    up to MAX_ALTERNATIVES of each; repeats (of another or of the creative's own value) are merged."""
    out: dict[str, list[str]] = {name: [] for name in COMPONENTS}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        errors.append(FieldError(field, f"must be an object with lists under {list(COMPONENTS)}"))
        return out
    for key in raw:
        if key not in COMPONENTS:
            errors.append(FieldError(f"{field}.{key}", f"unknown component; allowed: {list(COMPONENTS)}"))
    for name in COMPONENTS:
        values = raw.get(name, [])
        if not isinstance(values, list) or len(values) > MAX_ALTERNATIVES:
            errors.append(FieldError(f"{field}.{name}", f"must be a list of at most {MAX_ALTERNATIVES} values"))
            continue
        seen = {own.get(name)}
        for i, value in enumerate(values):
            at = f"{field}.{name}[{i}]"
            checked = _url(value, at, errors) if name == "image_url" else _text(value, at, errors, TEXT_MAX[name])
            if checked is None:
                continue
            if checked not in seen:  # a repeat would only be the same variant twice: merged, like term lists
                seen.add(checked)
                out[name].append(checked)
    return out


def review(campaign: dict[str, Any]) -> list[str]:
    """Rule-based review. Returns the reasons to reject; an empty list approves."""
    reasons: list[str] = []
    live = [c for c in campaign.get("creatives", []) if c.get("status") != "rejected"]
    if not live:
        reasons.append("campaign has no creatives")
    ceiling = {"cpm": MAX_AUTO_CPM_MICROS, "cpc": MAX_AUTO_CPC_MICROS, "cpa": MAX_AUTO_CPA_MICROS}
    if campaign["max_bid_micros"] > ceiling[campaign["bid_type"]]:
        reasons.append(f"max_bid_micros above the automatic-approval ceiling for {campaign['bid_type']}")
    for creative in campaign.get("creatives", []):
        reasons.extend(f"creative {creative['id']}: {r}" for r in review_creative(creative))
    return reasons


def check_live_edit(fields: dict[str, Any]) -> None:
    """Edits to an active or paused campaign go live without a new submit: hold them to the review's bid
    ceiling, or a PATCH could raise a reviewed $2 CPM to $2,000 and serve it at once."""
    ceiling = {"cpm": MAX_AUTO_CPM_MICROS, "cpc": MAX_AUTO_CPC_MICROS, "cpa": MAX_AUTO_CPA_MICROS}
    if fields["max_bid_micros"] > ceiling[fields["bid_type"]]:
        raise ValidationFailed([FieldError(
            "max_bid_micros",
            f"above the automatic-approval ceiling of {ceiling[fields['bid_type']]} for a live "
            f"{fields['bid_type']} campaign; pause, lower it, or ask for a manual review",
        )])


def review_creative(creative: dict[str, Any]) -> list[str]:
    reasons = []
    alternatives = creative.get("alternatives") or {}  # older records have none
    headlines = [creative["headline"], *alternatives.get("headline", [])]
    ctas = [creative["cta"], *alternatives.get("cta", [])]
    # Every text a user can be shown: each headline and CTA alone and each headline next to each CTA (a
    # variant shows any pair), never texts that no ad puts side by side.
    texts = [t.lower() for t in (*headlines, *ctas, *(f"{h} {c}" for h in headlines for c in ctas))]
    reasons.extend(f"contains banned phrase {w!r}" for w in BANNED_WORDS if any(w in t for t in texts))
    if not creative["landing_url"].startswith("https://"):
        reasons.append("landing_url must use https")
    if not creative["image_url"].startswith("https://"):
        reasons.append("image_url must use https")
    if not all(url.startswith("https://") for url in alternatives.get("image_url", [])):
        reasons.append("every alternative image_url must use https")
    return reasons


# Which lifecycle actions are allowed from which status.
TRANSITIONS: dict[str, dict[Status, Status]] = {
    "submit": {Status.DRAFT: Status.PENDING_REVIEW, Status.REJECTED: Status.PENDING_REVIEW},
    "pause": {Status.ACTIVE: Status.PAUSED},
    "resume": {Status.PAUSED: Status.ACTIVE},
    "complete": {Status.ACTIVE: Status.COMPLETED, Status.PAUSED: Status.COMPLETED},
}


class TransitionRefused(ValueError):
    pass


def apply_action(campaign: dict[str, Any], action: str) -> dict[str, Any]:
    """Apply a lifecycle action; ``submit`` runs the automatic review straight away."""
    allowed = TRANSITIONS.get(action)
    if allowed is None:
        raise TransitionRefused(f"unknown action {action!r}")
    current = Status(campaign["status"])
    if current not in allowed:
        raise TransitionRefused(f"cannot {action} a campaign that is {current.value}")
    updated = dict(campaign)
    updated["status"] = allowed[current].value
    if action == "submit":
        reasons = review(updated)
        updated["review"] = {"approved": not reasons, "reasons": reasons}
        updated["status"] = (Status.REJECTED if reasons else Status.ACTIVE).value
    return updated


def epoch_s(iso: str | None) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0


@dataclass(frozen=True, slots=True)
class PriorCeilings:
    """The most an advertiser's declared priors count for in the auction. A creative's prior CTR ranks it
    until the click model has seen enough of it, and a campaign's prior CVR turns its CPA bid into an eCPM
    for good (the model does not learn conversions yet): unbounded, a claim of 0.99 would buy the top of
    every ranking at a per-unit price divided by it. The API keeps what the advertiser declared."""

    ctr: float = 1.0
    cvr: float = 1.0


NO_CEILINGS = PriorCeilings()


def declared_ctr(creative: dict[str, Any], ceilings: PriorCeilings) -> float:
    """The click-through rate a creative declares, capped (``CP_MAX_PRIOR_CTR``)."""
    return min(float(creative["prior_ctr"]), ceilings.ctr)


def declared_cvr(campaign: dict[str, Any], ceilings: PriorCeilings) -> float:
    """The conversion rate a campaign declares, capped (``CP_MAX_PRIOR_CVR``)."""
    return min(float(campaign.get("prior_cvr", 0.02)), ceilings.cvr)


def to_snapshot_campaign(campaign: dict[str, Any], revision: int, ceilings: PriorCeilings = NO_CEILINGS,
                         learned_cvr: float | None = None) -> SnapshotCampaign:
    """The campaign as the snapshot carries it. Its ``prior_cvr`` is the learned conversion rate if there is
    one (``control_plane.cvr``), else the declared one, capped."""
    t = campaign["targeting"]
    attribution = {**ATTRIBUTION_DEFAULTS, **(campaign.get("attribution") or {})}  # older records have none
    return SnapshotCampaign(
        campaign_id=campaign["id"],
        advertiser_id=campaign["advertiser_id"],
        revision=revision,
        bid_type=campaign["bid_type"],
        max_bid_micros=campaign["max_bid_micros"],
        daily_budget_micros=campaign["daily_budget_micros"],
        total_budget_micros=campaign["total_budget_micros"],
        start_s=epoch_s(campaign["start"]),
        end_s=epoch_s(campaign["end"]),
        timezone=campaign["timezone"],
        hours=frozenset(t.get("hours", [])),
        countries=frozenset(t.get("countries", [])),
        geos=frozenset(t.get("geos", [])),
        devices=frozenset(t.get("devices", [])),
        keywords=frozenset(t.get("keywords", [])),
        interests=frozenset(owned_interest(campaign["advertiser_id"], i) for i in t.get("interests", [])),
        placements=frozenset(t.get("placements", [])),
        prior_cvr=learned_cvr if learned_cvr is not None else declared_cvr(campaign, ceilings),
        click_window_s=attribution["click_window_hours"] * 3600,
        view_window_s=attribution["view_window_hours"] * 3600,
        pacing=campaign.get("pacing", "even"),
        budget_mode=campaign.get("budget_mode", "allowance"),
        frequency_caps=tuple(FrequencyCap(c["scope"], c["max_impressions"], c["window_minutes"] * 60)
                             for c in campaign.get("frequency_caps") or ()),  # older records have none
        creatives=tuple(
            SnapshotCreative(
                creative_id=k["id"], format=k["size"], headline=k["headline"], image_url=k["image_url"],
                landing_url=k["landing_url"], cta=k["cta"], prior_ctr=declared_ctr(k, ceilings),
                alternatives=tuple(tuple((k.get("alternatives") or {}).get(name, ())) for name in COMPONENTS),
            )
            for k in campaign.get("creatives", [])
            if k.get("status") == "active"
        ),
    )


def is_servable(campaign: dict[str, Any], now_s: float) -> bool:
    if campaign.get("status") != Status.ACTIVE.value:
        return False
    end = epoch_s(campaign.get("end"))
    return not (end and now_s >= end)
