"""The control plane's OpenAPI 3.0 document, written by hand because the contract is the point.

It states what the server really does, checked by a fuzzer (tests/e2e/test_api_contract.py): every route,
every status code a handler or the request limits (control_plane/limits.py) can answer, and request schemas
with the same bounds, enums and patterns as the validators in control_plane/models.py. Where a validator
normalizes before it checks (strip, lower), the pattern accepts what the server accepts, not only the
normalized form, so a fuzzer's "invalid" value is one the server really refuses.

OpenAPI 3.0 rather than 3.1 because its schema dialect says what the server does with numbers: an "integer"
is written without a fraction (the validators refuse 460.0 for micros), where JSON Schema 2020-12 would call
460.0 an integer too.

Rules a JSON Schema cannot state (total >= daily budget, end after start, `to` after `from`, a PATCH merged
onto the stored campaign) are written in the descriptions and answered with 422 or 400.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from control_plane import models
from replication.openapi import ERROR_REF, TERM_PATTERN, error_schema
from replication.openapi import json_response as _json
from replication.openapi import response_ref as _ref
from replication.variants import COMPONENTS, MAX_ALTERNATIVES

# --- pattern building blocks ---------------------------------------------------------------------------
# Python's str.strip() removes exactly the characters for which str.isspace() is true; regex \s differs
# between engines (ECMA-262 also matches U+FEFF), so the classes are spelled out.
_WS = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# models._text refuses any character below U+0020, so only the other whitespace may surround a text value.
_TEXT_WS = r" \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NOT_CONTROL = r"[^\x00-\x1f]"
_VISIBLE = rf"[^\x00-\x1f{_TEXT_WS}]"  # neither a control character nor whitespace


def _text(max_len: int, description: str) -> dict[str, Any]:
    """models._text: a string with a non-blank character, no control characters, at most max_len long."""
    return {"type": "string", "maxLength": max_len, "pattern": f"^{_NOT_CONTROL}*{_VISIBLE}{_NOT_CONTROL}*$",
            "description": f"{description}; surrounding whitespace is trimmed"}


# models._url: a text whose stripped form urlsplit() reads as http(s) with a network location. urlsplit refuses
# a host with brackets that are not a valid IPv6 literal, and one with characters that NFKC-normalize to one of
# "/?#@:" (such as U+FF0F); neither may appear before the path here. (A bracketed IPv6 host is accepted by the
# server but left out of the pattern, which cannot tell a valid one.)
_NFKC_DELIMITERS = (r"\u2047-\u2049\u2100\u2101\u2105\u2106\u2a74\ufe13\ufe16\ufe55\ufe56\ufe5f\ufe6b"
                    r"\uff03\uff0f\uff1a\uff1f\uff20")
_HOST_CHAR = rf"/?#\[\]\x00-\x1f{_NFKC_DELIMITERS}"
_URL = {"type": "string", "maxLength": 2048,
        "pattern": rf"^[{_TEXT_WS}]*[Hh][Tt][Tt][Pp][Ss]?://[^{_HOST_CHAR}{_TEXT_WS}][^{_HOST_CHAR}]*"
                   rf"([/?#]{_NOT_CONTROL}*)?$",
        "description": "absolute http(s) URL (review approves only https)", "example": "https://example.com/a"}


def _term_list(pattern: str, hint: str, *, case_insensitive_input: bool = False) -> dict[str, Any]:
    """models._string_list: each item is stripped (and lowercased for terms) before it is matched."""
    note = "; matched after trimming whitespace" + (" and lowercasing" if case_insensitive_input else "")
    return {"type": "array", "maxItems": 1000, "description": f"{hint}{note}; duplicates are merged",
            "items": {"type": "string", "pattern": f"^[{_WS}]*{pattern}[{_WS}]*$"}}


_TERM = _term_list(TERM_PATTERN,
                   "terms of 1-64 letters or digits of any script, spaces, '-' or '_', not starting with one of "
                   "the last three", case_insensitive_input=True)
_MICROS = {"type": "integer", "minimum": 1, "maximum": models.MAX_MICROS,
           "description": "integer micros: 1 currency unit = 1,000,000"}
_DATETIME = {"type": "string", "format": "date-time", "example": "2026-11-24T00:00:00+01:00",
             "description": "ISO 8601 date-time; without an offset it is read in the campaign's timezone"}
# The exact set the server's zoneinfo accepts, computed in the server so the two cannot drift apart.
TIMEZONE = {"type": "string", "enum": sorted(available_timezones()), "example": "Europe/Berlin",
            "description": "an IANA timezone; the schedule, hours targeting and offset-less times use it"}

TARGETING = {
    "type": "object", "nullable": True, "additionalProperties": False,
    "description": "every list is optional; an empty list means 'any'; null clears all targeting",
    "properties": {
        "countries": _term_list("[A-Z]{2}", "ISO 3166 alpha-2 country codes such as US"),
        "geos": _term_list("[A-Z]{2}-[A-Z0-9]{1,3}", "region codes such as US-CA"),
        "devices": {"type": "array", "items": {"enum": sorted(models.DEVICES)}},
        "interests": _TERM,
        "keywords": _TERM,
        "placements": _term_list("[A-Za-z0-9_.:-]{1,128}", "placement ids of 1-128 letters, digits or _.:-"),
        "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23},
                  "description": "hours of the day in the campaign's timezone"},
    },
}

ALTERNATIVES = {
    "type": "object", "additionalProperties": False, "nullable": True,
    "description": "other headlines, images and calls to action to try: the edge shows combinations of them "
                   "and learns per device class which gets clicked (Thompson sampling); a value repeating the "
                   "creative's own or another is merged; null means none",
    "properties": {
        "headline": {"type": "array", "maxItems": MAX_ALTERNATIVES,
                     "items": _text(models.TEXT_MAX["headline"], "a headline")},
        "image_url": {"type": "array", "maxItems": MAX_ALTERNATIVES, "items": _URL},
        "cta": {"type": "array", "maxItems": MAX_ALTERNATIVES,
                "items": _text(models.TEXT_MAX["cta"], "a call to action")},
    },
}

CREATIVE_INPUT = {
    "type": "object", "additionalProperties": False, "required": ["headline", "image_url", "landing_url", "size"],
    "properties": {
        "headline": _text(models.TEXT_MAX["headline"], "headline shown on the ad"),
        "image_url": _URL,
        "landing_url": _URL,
        "cta": {**_text(models.TEXT_MAX["cta"], "call to action"), "default": "Learn more"},
        "size": {"enum": sorted(models.SIZES)},
        "prior_ctr": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1,
                      "exclusiveMaximum": True, "default": 0.01,
                      "description": "click-through rate to assume before the campaign has data; the auction "
                                     "counts it for at most the platform's ceiling (ADSERVER_CP_MAX_PRIOR_CTR)"},

        "alternatives": ALTERNATIVES,
    },
}

_CAMPAIGN_FIELDS: dict[str, Any] = {
    "name": _text(200, "campaign name"),
    "objective": {"enum": sorted(models.OBJECTIVES), "default": "traffic"},
    "bid_type": {"enum": sorted(models.BID_TYPES)},
    "max_bid_micros": {**_MICROS, "description": "highest bid: per mille for cpm, per click for cpc, "
                                                 "per conversion for cpa (micros)"},
    "daily_budget_micros": _MICROS,
    "total_budget_micros": {**_MICROS, "description": "lifetime budget in micros; at least daily_budget_micros"},
    "start": _DATETIME,
    "end": {**_DATETIME, "nullable": True, "example": "2026-12-24T00:00:00+01:00",
            "description": "after start, or null for no end"},
    "timezone": {"$ref": "#/components/schemas/Timezone"},
    "pacing": {"enum": ["asap", "even", "step"], "default": "even",
               "description": "even: follow the traffic-shaped daily plan; asap: spend as traffic comes; "
                              "step: the +-10%-per-minute throttle, a comparison baseline"},
    "budget_mode": {"enum": ["allowance", "counter"], "default": "allowance",
                    "description": "allowance: spend only escrowed slices (never more than the budget); counter: "
                                   "a research baseline that can overspend, accepted only when the control plane "
                                   "allows baselines (otherwise 422)"},
    "prior_cvr": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 0.02,
                  "description": "conversion rate to assume before the campaign has data; the auction counts it "
                                 "for at most the platform's ceiling (ADSERVER_CP_MAX_PRIOR_CVR)"},
    "targeting": {"$ref": "#/components/schemas/Targeting"},
    "attribution": {"$ref": "#/components/schemas/Attribution"},
    "frequency_caps": {
        "type": "array", "maxItems": models.MAX_FREQUENCY_CAPS, "default": [],
        "description": "per consenting user, at most max_impressions of the campaign (scope campaign: all its "
                       "creatives together) or of each creative (scope creative) in any window_minutes; users "
                       "without consent are not capped",
        "items": {"$ref": "#/components/schemas/FrequencyCap"},
    },
}

FREQUENCY_CAP = {
    "type": "object", "additionalProperties": False, "required": ["max_impressions", "window_minutes"],
    "properties": {
        "scope": {"enum": list(models.FREQUENCY_CAP_SCOPES), "default": "campaign"},
        **{k: {"type": "integer", "minimum": lo, "maximum": hi}
           for k, (lo, hi) in models.FREQUENCY_CAP_LIMITS.items()},
    },
}

ATTRIBUTION = {
    "type": "object", "additionalProperties": False,
    "description": "conversion attribution: the last click within click_window_hours, else the last viewed "
                   "impression within view_window_hours (0: no view-through conversions)",
    "properties": {
        "click_window_hours": {"type": "integer", "minimum": 1, "maximum": 90 * 24, "default": 168},
        "view_window_hours": {"type": "integer", "minimum": 0, "maximum": 30 * 24, "default": 24},
    },
}

CAMPAIGN_CREATE = {
    "type": "object", "additionalProperties": False,
    "required": list(models.REQUIRED_CAMPAIGN_FIELDS),
    "description": "total_budget_micros must be at least daily_budget_micros and end after start (else 422). "
                   "id, advertiser_id, status, review and revision are the server's: sending them is a 422.",
    "properties": {**_CAMPAIGN_FIELDS,
                   "creatives": {"type": "array", "maxItems": 50,
                                 "items": {"$ref": "#/components/schemas/CreativeInput"}}},
}

CAMPAIGN_PATCH = {
    "type": "object", "additionalProperties": False,
    "description": "Any subset of the writable fields, merged onto the stored campaign and validated whole: a "
                   "field that is valid alone is still a 422 when the merged campaign breaks a rule (a daily "
                   "budget above the stored total, an end before the stored start, a bid above the automatic "
                   "review's ceiling on a live campaign). Creatives are added with "
                   "POST /v1/campaigns/{campaign_id}/creatives; id, advertiser_id, status, review and revision "
                   "are read-only (422).",
    "properties": _CAMPAIGN_FIELDS,
}

_STATUSES = [s.value for s in models.Status]

CREATIVE = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "status", "headline", "image_url", "landing_url", "cta", "size", "prior_ctr"],
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": ["active", "rejected"]},
        "review_reasons": {"type": "array", "items": {"type": "string"},
                           "description": "why a creative added to a live campaign was rejected"},
        "headline": {"type": "string"}, "image_url": {"type": "string"}, "landing_url": {"type": "string"},
        "cta": {"type": "string"}, "size": {"enum": sorted(models.SIZES)}, "prior_ctr": {"type": "number"},
        "alternatives": {"type": "object", "additionalProperties": False, "properties": {
            name: {"type": "array", "items": {"type": "string"}} for name in COMPONENTS}},
    },
}

CAMPAIGN = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "advertiser_id", "revision", "status", "name", "objective", "bid_type", "max_bid_micros",
                 "daily_budget_micros", "total_budget_micros", "start", "end", "timezone", "pacing", "prior_cvr",
                 "targeting", "creatives", "review", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string", "example": "cmp0123456789abcdef"},
        "advertiser_id": {"type": "string"},
        "revision": {"type": "integer", "minimum": 1,
                     "description": "send it back as If-Match: \"<revision>\" to change this version"},
        "status": {"enum": _STATUSES},
        "name": {"type": "string"},
        "objective": {"enum": sorted(models.OBJECTIVES)},
        "bid_type": {"enum": sorted(models.BID_TYPES)},
        "max_bid_micros": {"type": "integer"},
        "daily_budget_micros": {"type": "integer"},
        "total_budget_micros": {"type": "integer"},
        "start": {"type": "string"},
        "end": {"type": "string", "nullable": True},
        "timezone": {"type": "string"},
        "pacing": {"enum": ["asap", "even", "step"]},
        "budget_mode": {"enum": ["allowance", "counter"]},
        "prior_cvr": {"type": "number"},
        "attribution": {
            "type": "object", "additionalProperties": False,
            "required": ["click_window_hours", "view_window_hours"],
            "description": "absent on campaigns created before attribution windows existed (they use 168 and 24)",
            "properties": {"click_window_hours": {"type": "integer"}, "view_window_hours": {"type": "integer"}},
        },
        "frequency_caps": {"type": "array", "items": {"$ref": "#/components/schemas/FrequencyCap"},
                           "description": "absent on campaigns created before frequency caps existed (none)"},
        "targeting": {
            "type": "object", "additionalProperties": False,
            "required": sorted(models.TARGETING_FIELDS),
            "properties": {
                **{k: {"type": "array", "items": {"type": "string"}}
                   for k in ("countries", "geos", "devices", "interests", "keywords", "placements")},
                "hours": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "creatives": {"type": "array", "items": {"$ref": "#/components/schemas/Creative"}},
        "review": {
            "type": "object", "nullable": True, "additionalProperties": False, "required": ["approved", "reasons"],
            "description": "the automatic review's verdict, set on submit",
            "properties": {"approved": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}}},
        },
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
    },
}

# One reporting bucket: counters are integers, rates are numbers; a new counter may appear without notice.
_METRIC_COUNTERS = ["impressions", "clicks", "conversions", "spend_micros", "invalid_impressions",
                    "invalid_clicks", "invalid_conversions", "gross_impressions", "gross_clicks", "viewable"]
METRICS = {
    "type": "object", "additionalProperties": False,
    "required": ["campaign_id", "from", "to", "granularity", "totals", "series", "budget"],
    "properties": {
        "campaign_id": {"type": "string"},
        "from": {"type": "integer", "description": "epoch milliseconds"},
        "to": {"type": "integer", "description": "epoch milliseconds"},
        "granularity": {"enum": ["minute", "hour", "day"]},
        "totals": {"type": "object", "required": ["ctr"], "additionalProperties": {"type": "integer"},
                   "description": "sums of the series' counters (absent when the series is empty) and the ctr",
                   "properties": {"ctr": {"type": "number"}, **{k: {"type": "integer"} for k in _METRIC_COUNTERS}}},
        "series": {"type": "array", "items": {
            "type": "object", "additionalProperties": {"type": "number"},
            "required": ["bucket_start_ms", *_METRIC_COUNTERS[:-1], "ctr"],
            "properties": {"bucket_start_ms": {"type": "integer"}, "ctr": {"type": "number"},
                           "viewability": {"type": "number"},
                           **{k: {"type": "integer"} for k in _METRIC_COUNTERS}}}},
        "budget": {"type": "object", "additionalProperties": False,
                   "required": ["daily_budget_micros", "total_budget_micros"],
                   "properties": {"daily_budget_micros": {"type": "integer"},
                                  "total_budget_micros": {"type": "integer"}}},
    },
}

ERROR = error_schema(
    'a human-readable message naming what was wrong', 'creatives[0].landing_url',
    ['per_token', 'per_ip', 'body_bytes', 'header_count', 'header_bytes'],
)


RESPONSES = {
    "BadRequest": _json(ERROR_REF, "malformed request: empty or non-JSON body, bad If-Match, bad query"),
    "Unauthorized": _json(ERROR_REF, "missing, malformed or unknown bearer token"),
    "NotFound": _json(ERROR_REF, "no such campaign for this advertiser (another tenant's campaign included)"),
    "Conflict": _json(ERROR_REF, "stale If-Match revision, concurrent change, or not allowed in this status"),
    "TooLarge": _json(ERROR_REF, "request body larger than ADSERVER_CP_MAX_BODY_BYTES (default 65536); "
                                  "answered before the body is read, also for chunked bodies"),
    "Invalid": _json(ERROR_REF, "validation failed: `fields` names every bad field; nothing is stored"),
    "RateLimited": _json(ERROR_REF, "a per-token or per-IP rate limit is exhausted; `limit` names which",
                         {"Retry-After": {"description": "seconds until a request is admitted again",
                                          "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}),
    "HeadersTooLarge": _json(ERROR_REF, "too many request headers or too many header bytes (the HTTP server "
                                         "itself answers 431 with an empty body past 100 headers)"),
    "StoreNoAnswer": _json(ERROR_REF, "the campaign store (NATS JetStream) did not confirm a change in time: "
                                       "it may or may not have been stored; read it back (or list your "
                                       "campaigns) before retrying it, or it may be applied twice"),
    "NoReports": _json(ERROR_REF, "reporting store not configured in this process, or the campaign store did "
                                   "not answer (retry after Retry-After seconds)"),
    "StoreUnavailable": _json(ERROR_REF, "the campaign store (NATS JetStream) is unavailable: a read that got "
                                          "no answer, or a call that never reached it (nothing was changed); "
                                          "retry after Retry-After seconds",
                              {"Retry-After": {"description": "seconds to wait before retrying",
                                               "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}),
}

_LIMITS = {"413": _ref("TooLarge"), "429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}
_STORE = {"503": _ref("StoreUnavailable")}
_STORE_WRITE = {**_STORE, "504": _ref("StoreNoAnswer")}
_PUBLIC_LIMITS = {"429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}
_ETAG = {"ETag": {"description": "the campaign's revision, quoted", "schema": {"type": "string",
                                                                              "pattern": '^"[0-9]+"$'}}}
_CAMPAIGN_REF = {"$ref": "#/components/schemas/Campaign"}
_CAMPAIGN_ID = {"name": "campaign_id", "in": "path", "required": True,
                "description": "a campaign id as returned on create; any other value is a 404",
                "schema": {"type": "string", "example": "cmp0123456789abcdef"}}


def _campaign_links() -> dict[str, Any]:
    """Links from a response carrying a campaign to every call on it (stateful fuzzing follows them)."""
    ids = {"campaign_id": "$response.body#/id"}
    return {
        "GetCampaign": {"operationId": "getCampaign", "parameters": ids},
        "PatchCampaign": {"operationId": "patchCampaign",
                          "parameters": {**ids, "header.If-Match": "$response.header.ETag"}},
        "AddCreative": {"operationId": "addCreative", "parameters": ids},
        "SubmitCampaign": {"operationId": "submitCampaign", "parameters": ids},
        "PauseCampaign": {"operationId": "pauseCampaign", "parameters": ids},
        "ResumeCampaign": {"operationId": "resumeCampaign", "parameters": ids},
        "CompleteCampaign": {"operationId": "completeCampaign", "parameters": ids},
        "CampaignMetrics": {"operationId": "campaignMetrics", "parameters": ids},
    }


def _campaign_ok(status: str, description: str) -> dict[str, Any]:
    response = _json(_CAMPAIGN_REF, description, _ETAG)
    response["links"] = _campaign_links()
    return {status: response}


def _lifecycle(action: str, summary: str) -> dict[str, Any]:
    return {
        "parameters": [_CAMPAIGN_ID],
        "post": {
            "operationId": f"{action}Campaign", "summary": summary, "tags": ["campaigns"],
            "description": "Takes no body. The transitions: submit from draft or rejected (the automatic review "
                           "then makes it active or rejected with reasons), pause from active, resume from "
                           "paused, complete from active or paused (final); anything else is a 409.",
            "responses": {**_campaign_ok("200", "the campaign in its new status"), "401": _ref("Unauthorized"),
                          "404": _ref("NotFound"), "409": _ref("Conflict"), **_LIMITS, **_STORE_WRITE},
        },
    }


# Free-form on purpose: the server accepts epoch milliseconds or anything datetime.fromisoformat reads, and
# answers 400 for the rest, which no pattern states exactly.
_TIME_QUERY = {"type": "string", "example": "1767225600000",
               "description": "epoch milliseconds or an ISO 8601 date or date-time (UTC without an offset); "
                              "anything else is a 400"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "edge-adserver control plane", "version": "1",
        "description": "The advertiser API. Money is integer micros (1 unit = 1,000,000). Every /v1/campaigns "
                       "call is scoped to the advertiser of the bearer token: another advertiser's campaign is a "
                       "404. Requests are limited per token and per client IP (429 with Retry-After), by body "
                       "size (413) and by header count and size (431).",
    },
    "tags": [{"name": "campaigns"}, {"name": "operations"}],
    "components": {
        "securitySchemes": {
            "advertiserToken": {"type": "http", "scheme": "bearer", "bearerFormat": "<advertiser_id>.<secret>",
                                "description": "printed once by `adserver admin create-advertiser`"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "ADSERVER_CP_ADMIN_TOKEN"},
        },
        "schemas": {"Error": ERROR, "Timezone": TIMEZONE, "Targeting": TARGETING, "Attribution": ATTRIBUTION,
                    "FrequencyCap": FREQUENCY_CAP, "CreativeInput": CREATIVE_INPUT,
                    "CampaignCreate": CAMPAIGN_CREATE, "CampaignPatch": CAMPAIGN_PATCH, "Creative": CREATIVE,
                    "Campaign": CAMPAIGN, "Metrics": METRICS},
        "responses": RESPONSES,
    },
    "security": [{"advertiserToken": []}],
    "paths": {
        "/v1/campaigns": {
            "get": {
                "operationId": "listCampaigns", "summary": "List your campaigns, oldest first", "tags": ["campaigns"],
                "responses": {
                    "200": _json({"type": "object", "additionalProperties": False, "required": ["campaigns"],
                                  "properties": {"campaigns": {"type": "array", "items": _CAMPAIGN_REF}}},
                                 "your campaigns"),
                    "401": _ref("Unauthorized"), **_LIMITS, **_STORE},
            },
            "post": {
                "operationId": "createCampaign", "summary": "Create a campaign (status draft)", "tags": ["campaigns"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CampaignCreate"}}}},
                "responses": {**_campaign_ok("201", "created, in status draft"), "400": _ref("BadRequest"),
                              "401": _ref("Unauthorized"), "422": _ref("Invalid"), **_LIMITS, **_STORE_WRITE},
            },
        },
        "/v1/campaigns/{campaign_id}": {
            "parameters": [_CAMPAIGN_ID],
            "get": {
                "operationId": "getCampaign", "summary": "Read a campaign", "tags": ["campaigns"],
                "responses": {**_campaign_ok("200", "the campaign"), "401": _ref("Unauthorized"),
                              "404": _ref("NotFound"), **_LIMITS, **_STORE},
            },
            "patch": {
                "operationId": "patchCampaign", "summary": "Change a campaign (compare-and-set with If-Match)",
                "tags": ["campaigns"],
                "parameters": [{"name": "If-Match", "in": "header", "required": False,
                                "description": "the revision you read, e.g. \"12\": a stale one is a 409; "
                                               "without it the revision just read is used",
                                "schema": {"type": "string", "pattern": '^[ \\t]*"*[0-9]{1,19}"*[ \\t]*$'}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CampaignPatch"}}}},
                "responses": {**_campaign_ok("200", "updated"), "400": _ref("BadRequest"),
                              "401": _ref("Unauthorized"), "404": _ref("NotFound"), "409": _ref("Conflict"),
                              "422": _ref("Invalid"), **_LIMITS, **_STORE_WRITE},
            },
        },
        "/v1/campaigns/{campaign_id}/creatives": {
            "parameters": [_CAMPAIGN_ID],
            "post": {
                "operationId": "addCreative", "summary": "Add a creative (reviewed on its own if the campaign is live)",
                "tags": ["campaigns"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CreativeInput"}}}},
                "responses": {**_campaign_ok("201", "the campaign with the new creative"),
                              "400": _ref("BadRequest"), "401": _ref("Unauthorized"), "404": _ref("NotFound"),
                              "409": _ref("Conflict"),
                              "422": _json(ERROR_REF, "validation failed, or the campaign has 50 creatives"),
                              **_LIMITS, **_STORE_WRITE},
            },
        },
        "/v1/campaigns/{campaign_id}/submit": _lifecycle("submit", "Submit for review"),
        "/v1/campaigns/{campaign_id}/pause": _lifecycle("pause", "Pause an active campaign"),
        "/v1/campaigns/{campaign_id}/resume": _lifecycle("resume", "Resume a paused campaign"),
        "/v1/campaigns/{campaign_id}/complete": _lifecycle("complete", "End a campaign for good"),
        "/v1/campaigns/{campaign_id}/metrics": {
            "parameters": [_CAMPAIGN_ID],
            "get": {
                "operationId": "campaignMetrics", "tags": ["campaigns"],
                "summary": "Impressions, clicks, conversions, spend, CTR, gross and invalid counts per bucket",
                "parameters": [
                    {"name": "from", "in": "query", "schema": {**_TIME_QUERY, "description":
                        _TIME_QUERY["description"] + "; default 24 hours ago"}},
                    {"name": "to", "in": "query", "schema": {**_TIME_QUERY, "description":
                        _TIME_QUERY["description"] + "; default one minute from now; must be after from"}},
                    {"name": "granularity", "in": "query",
                     "schema": {"enum": ["minute", "hour", "day"], "default": "hour"}},
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Metrics"}, "totals and the per-bucket series"),
                    "400": _json(ERROR_REF, "bad from/to/granularity, to not after from, or more than 10000 "
                                             "buckets"),
                    "401": _ref("Unauthorized"), "404": _ref("NotFound"), "503": _ref("NoReports"), **_LIMITS},
            },
        },
        "/v1/postback-tokens": {
            "post": {
                "operationId": "createPostbackToken", "tags": ["conversions"],
                "summary": "Mint a token for server-to-server conversion postbacks (shown once; the previous one "
                           "keeps working until the next rotation)",
                "responses": {
                    "201": _json({"type": "object", "required": ["token", "live_tokens", "usage"],
                                  "properties": {"token": {"type": "string"},
                                                 "live_tokens": {"type": "integer", "minimum": 1, "maximum": 2},
                                                 "usage": {"type": "string"}}},
                                 "the new token"),
                    "401": _ref("Unauthorized"), **_LIMITS, **_STORE_WRITE},
            },
        },
        "/v1/attribution": {
            "get": {
                "operationId": "attributionReport", "tags": ["conversions"],
                "summary": "Time-decay multi-touch credit per campaign for the advertiser's conversions",
                "parameters": [
                    {"name": "from", "in": "query", "schema": {**_TIME_QUERY, "description":
                        _TIME_QUERY["description"] + "; default 7 days ago"}},
                    {"name": "to", "in": "query", "schema": {**_TIME_QUERY, "description":
                        _TIME_QUERY["description"] + "; default now; must be after from"}},
                    {"name": "model", "in": "query", "schema": {"enum": ["time_decay"], "default": "time_decay"}},
                    {"name": "half_life_hours", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 2160, "default": 24}},
                    {"name": "lookback_hours", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 2160, "default": 168}},
                ],
                "responses": {
                    "200": _json({"type": "object",
                                  "required": ["model", "half_life_hours", "lookback_hours", "from_ms", "to_ms",
                                               "campaigns"],
                                  "properties": {
                                      "model": {"enum": ["time_decay"]},
                                      "half_life_hours": {"type": "integer"}, "lookback_hours": {"type": "integer"},
                                      "from_ms": {"type": "integer"}, "to_ms": {"type": "integer"},
                                      "campaigns": {"type": "array", "items": {
                                          "type": "object", "required": ["campaign_id", "conversions",
                                                                         "value_micros"],
                                          "properties": {"campaign_id": {"type": "string"},
                                                         "conversions": {"type": "number", "minimum": 0},
                                                         "value_micros": {"type": "integer"}}}}}},
                                 "conversions and value credited per campaign (each conversion shares one unit "
                                 "among its user's impressions and clicks, weighted 2^(-age/half-life))"),
                    "400": _json(ERROR_REF, "bad from/to/model/half_life_hours/lookback_hours"),
                    "401": _ref("Unauthorized"), "503": _ref("NoReports"), **_LIMITS},
            },
        },
        "/v1/admin/stats": {
            "get": {
                "operationId": "adminStats", "tags": ["operations"], "security": [{"adminToken": []}],
                "summary": "Store counts, spend per campaign, collector and snapshot state",
                "responses": {
                    "200": _json({"type": "object",
                                  "required": ["store", "spend_micros", "collector", "snapshot", "granted_micros"],
                                  "properties": {
                                      "store": {"type": "object", "required": ["rows", "unique_events", "duplicates"],
                                                "properties": {"rows": {"type": "integer"},
                                                               "unique_events": {"type": "integer"},
                                                               "duplicates": {"type": "integer"},
                                                               "by_type": {"type": "object", "additionalProperties":
                                                                           {"type": "integer"}}}},
                                      "spend_micros": {"type": "object", "additionalProperties": {"type": "integer"}},
                                      "collector": {"type": "object", "nullable": True},
                                      "snapshot": {"type": "object"},
                                      "granted_micros": {"type": "integer"}}},
                                 "operational state"),
                    "401": _json(ERROR_REF, "admin token missing or wrong (or admin calls disabled)"),
                    "503": _ref("NoReports"), **_LIMITS},
            },
        },
        "/livez": {"get": {"operationId": "livez", "tags": ["operations"], "security": [],
                           "summary": "Liveness (never rate limited)",
                           "responses": {"200": _json({"type": "object", "required": ["status"], "properties": {
                               "status": {"enum": ["ok"]}}}, "the process serves HTTP"),
                               "431": _ref("HeadersTooLarge")}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"], "security": [],
                            "summary": "Readiness: a snapshot has been built (never rate limited)",
                            "responses": {**{code: _json({
                                "type": "object", "additionalProperties": False,
                                "required": ["ready", "snapshot_version", "stopped_tasks", "crashes"],
                                "properties": {"ready": {"type": "boolean"},
                                               "snapshot_version": {"type": "integer"},
                                               "stopped_tasks": {"type": "array", "items": {"type": "string"}},
                                               "crashes": {"type": "object",
                                                           "additionalProperties": {"type": "integer"},
                                                           "description": "restarts per background task"}}},
                                text)
                                for code, text in (("200", "ready"),
                                                   ("503", "no snapshot built yet, or a background task stopped"))},
                                "431": _ref("HeadersTooLarge")}}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"], "security": [],
                             "summary": "Prometheus metrics (never rate limited)",
                             "responses": {"200": {"description": "Prometheus text exposition format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           "431": _ref("HeadersTooLarge")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"], "security": [],
                                  "summary": "This document",
                                  "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                                             "OpenAPI 3.0"), **_PUBLIC_LIMITS}}},
        "/": {"get": {"operationId": "dashboard", "tags": ["operations"], "security": [],
                      "summary": "The advertiser dashboard (a static page that calls this API with your token)",
                      "responses": {"200": {"description": "HTML", "content": {"text/html": {
                          "schema": {"type": "string"}}}}, **_PUBLIC_LIMITS}}},
        "/static/{file}": {"get": {
            "operationId": "dashboardAsset", "tags": ["operations"], "security": [],
            "summary": "The dashboard's static files",
            "parameters": [{"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                          "404": {"description": "no such file", "content": {"text/plain": {
                              "schema": {"type": "string"}}}},
                          **_PUBLIC_LIMITS}}},
    },
}
