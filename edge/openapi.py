"""The edge's OpenAPI 3.0 document: the publisher-facing calls, as the server really answers them.

Checked by a fuzzer (tests/e2e/test_api_contract.py). Parameter patterns accept exactly what
edge/adrequest.py accepts, including the forms it normalizes (upper- or lowercase, surrounding whitespace in
comma-separated terms), so a fuzzer's "invalid" value is one the edge really refuses with a 400. Tokens are
opaque here: only the edge can mint a valid one, so a made-up token is a 403 (or 400 when empty).
"""

from __future__ import annotations

from typing import Any

from edge.adrequest import DEVICES
from edge.auction import Reason
from replication.openapi import ERROR_REF, TERM_ENDING_IN_NON_SPACE, TERM_PATTERN, error_schema
from replication.openapi import json_response as _json
from replication.openapi import response_ref as _ref

# Python's str.strip() removes exactly the str.isspace() characters; spelled out because regex \s differs.
_WS = r"[\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# One interest of a list: whitespace, then optionally a term and whitespace. Written so that every string has
# exactly one way to match it (a term here ends in a non-space; trailing spaces are the whitespace's): the
# plain "ws* (term)? ws*" matched runs of spaces in several ways, and fifty such segments backtracked
# exponentially when a list did not match (a dozen took a regex engine 11 s; it hung the fuzzer's
# generation, which no timeout can interrupt). Same strings accepted (tests/unit/test_openapi_patterns.py).
_SEGMENT = rf"{_WS}*(?:{TERM_ENDING_IN_NON_SPACE}{_WS}*)?"
# WIDTHxHEIGHT of 1-4 digits each, except the literal 0x0 and 1x1 (tracking pixels, never an ad slot).
_FORMAT = r"^([0-9]{2,4}x[0-9]{1,4}|[0-9]x[0-9]{2,4}|[2-9]x[0-9]|0x[1-9]|1x[02-9])$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_DEVICE = "^(" + "|".join(_any_case(d) for d in sorted(DEVICES)) + ")?$"

ERROR = error_schema(
    'names the first bad parameter, or why a token was refused', None,
    ['per_ip', 'body_bytes', 'header_count', 'header_bytes'],
)


RESPONSES = {
    "RateLimited": _json(ERROR_REF, "this client IP exceeded ADSERVER_EDGE_RATE_PER_IP (per worker)",
                         {"Retry-After": {"description": "seconds until a request is admitted again",
                                          "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}),
    "HeadersTooLarge": _json(ERROR_REF, "too many request headers or header bytes (the HTTP server itself "
                                         "answers 431 with an empty body past 100 headers)"),
    "TooLarge": _json(ERROR_REF, "body larger than ADSERVER_EDGE_MAX_BODY_BYTES (default 16384)"),
    "BadToken": _json(ERROR_REF, "no token (`t` missing or empty)"),
    "RefusedToken": _json(ERROR_REF, "forged, tampered, expired, unknown-key or wrong-kind token; the "
                                      "error names the reason"),
    "Counted": {"description": "counted once per impression id; a replay is answered the same and not counted"},
}
_LIMITS = {"413": _ref("TooLarge"), "429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}
_TOKEN = {"name": "t", "in": "query", "required": True, "description": "the signed token from the ad response",
          "schema": {"type": "string", "minLength": 1, "maxLength": 4096}}


def _beacon(kind: str, summary: str) -> dict[str, Any]:
    op = {"tags": ["beacons"], "summary": summary, "parameters": [_TOKEN],
          "responses": {"204": _ref("Counted"), "400": _ref("BadToken"), "403": _ref("RefusedToken"), **_LIMITS}}
    return {"get": {**op, "operationId": f"{kind}Get"}, "post": {**op, "operationId": f"{kind}Post"}}


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_CONSENT_PARAMS = (
    _q("gdpr", {"enum": ["0", "1"], "default": "0"}, "1 when GDPR applies"),
    _q("gdpr_consent", {"type": "string", "pattern": "^[A-Za-z0-9_.~-]{0,4096}$"},
       "the TCF v2 consent string; with gdpr=1 a user is profiled only when it grants purposes 1, 3 and 4 "
       "(and the vendor ADSERVER_EDGE_TCF_VENDOR_ID names, if set), else the request is contextual only; a "
       "string that is not TCF v2 is a 400"),
    _q("gpc", {"enum": ["0", "1"], "default": "0"}, "1 for Global Privacy Control: contextual only"),
)

EXPLAINED = {
    "type": "object", "additionalProperties": False,
    "required": ["dry_run", "snapshot_version", "candidates", "fates"],
    "properties": {
        "dry_run": {"enum": [True]},
        "snapshot_version": {"type": "integer"},
        "candidates": {"type": "integer", "minimum": 0,
                       "description": "retrieved candidates (an advertiser: how many of its own were retrieved)"},
        "fates": {"type": "array", "items": {
            "type": "object", "required": ["campaign_id", "fate"],
            "properties": {"campaign_id": {"type": "string"},
                           "fate": {"enum": ["won", *(reason.value for reason in Reason)]},
                           "slot": {"type": "integer"}, "creative_id": {"type": "string"},
                           "ecpm_micros": {"type": "integer"}, "price_micros": {"type": "integer"},
                           "ctr": {"type": "number"}}}},
    },
}

AD = {
    "type": "object", "additionalProperties": False,
    "required": ["ad_id", "campaign_id", "creative", "impression_url", "viewable_url", "click_url"],
    "properties": {
        "ad_id": {"type": "string", "description": "the impression id: <auction_id>-<slot>"},
        "campaign_id": {"type": "string"},
        "creative": {"type": "object", "additionalProperties": False,
                     "required": ["id", "headline", "image_url", "cta", "size"],
                     "properties": {"id": {"type": "string"}, "headline": {"type": "string"},
                                    "image_url": {"type": "string"}, "cta": {"type": "string"},
                                    "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
                                    "variant": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$",
                                                "description": "which combination of the creative's headline, "
                                                               "image and call to action this is (only for a "
                                                               "creative with alternatives)"}}},
        "impression_url": {"type": "string", "description": "fire when the ad renders (bills CPM once)"},
        "viewable_url": {"type": "string", "description": "fire once the ad is viewable (MRC: 50% for 1s)"},
        "click_url": {"type": "string", "description": "send the user here on click: 302 to the landing page"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "edge-adserver edge PoP", "version": "1",
        "description": "Publisher-facing calls. Every JSON answer carries Access-Control-Allow-Origin: * so the "
                       "tag can read it from any page. Beacon URLs come from the ad response and are signed: "
                       "each is valid for one kind of event and a limited time, and counted once.",
    },
    "tags": [{"name": "ads"}, {"name": "beacons"}, {"name": "audiences"}, {"name": "operations"}],
    "security": [],
    "components": {"schemas": {"Error": ERROR, "Ad": AD}, "responses": RESPONSES, "securitySchemes": {
        "postbackToken": {"type": "http", "scheme": "bearer", "bearerFormat": "<advertiser_id>.<secret>",
                          "description": "minted by the control plane's POST /v1/postback-tokens"}}},
    "paths": {
        "/v1/ads": {"get": {
            "operationId": "getAds", "tags": ["ads"], "summary": "Run an auction for one or more slots",
            "description": "Any parameter not listed here is a 400.",
            "parameters": [
                _q("placement", {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                   "the placement id (1-128 letters, digits or _.:-)", required=True),
                _q("format", {"type": "string", "pattern": _FORMAT, "example": "300x250"},
                   "the slot size WIDTHxHEIGHT (not 0x0 or 1x1)", required=True),
                _q("slots", {"type": "integer", "minimum": 1, "maximum": 6, "default": 1},
                   "how many ads (at most ADSERVER_EDGE_MAX_SLOTS, default 6; one per campaign)"),
                _q("geo", {"type": "string", "pattern": "^([A-Za-z]{2}(-[A-Za-z0-9]{1,3})?)?$",
                           "example": "US-CA"}, "country (US) or region (US-CA), any case"),
                _q("device", {"type": "string", "pattern": _DEVICE}, f"one of {sorted(DEVICES)}, any case"),
                _q("keywords", {"type": "string", "example": "running,shoes"},
                   "page keywords, comma-separated: terms that are not 1-64 letters or digits of any script, "
                   "spaces, '-' or '_' are ignored (never a 400), and at most 50 are used"),
                _q("interests", {"type": "string", "pattern": rf"^{_SEGMENT}(,{_SEGMENT}){{0,49}}$",
                                 "example": "sports,travel"},
                   "user interest segments, comma-separated: at most 50 (empty ones count), each a term of 1-64 "
                   "letters or digits of any script, spaces, '-' or '_', matched case-insensitively after "
                   "trimming (dropped without consent)"),
                _q("user", {"type": "string", "maxLength": 128},
                   "a user id for frequency capping (dropped without consent)"),
                _q("url", {"type": "string", "maxLength": 2048},
                   "the page URL: its host is the publisher site the click model learns from"),
                *_CONSENT_PARAMS,
                _q("explain", {"enum": ["0", "1", "false", "true"]},
                   "1: a dry run that says what happened to every candidate (won, or why not), and serves, "
                   "reserves and records nothing. Needs Authorization: Bearer <the control plane's admin "
                   "token> (every candidate) or <an advertiser's postback token> (each of its own campaigns, "
                   "those the targeting leaves out as `targeting`, without prices; its dry run ignores `user`)"),
            ],
            "responses": {
                "200": _json({"oneOf": [
                    {"type": "object", "additionalProperties": False, "required": ["auction_id", "ads"],
                     "properties": {"auction_id": {"type": "string"},
                                    "ads": {"type": "array", "minItems": 1,
                                            "items": {"$ref": "#/components/schemas/Ad"}}}},
                    EXPLAINED]},
                    "the winning ads, at most `slots`; with explain=1, every candidate's fate instead",
                    {"Cache-Control": {"schema": {"enum": ["no-store"]}}}),
                "204": {"description": "no fill: nothing eligible, or no budget"},
                "400": _json(ERROR_REF, "bad parameters: `fields` names each one"),
                "401": _json(ERROR_REF, "explain without a valid admin or postback token"),
                "503": _json(ERROR_REF, "this PoP has not loaded a snapshot yet"),
                **_LIMITS,
            },
        }},
        "/v1/pixel": {"get": {
            "operationId": "pixel", "tags": ["audiences"],
            "summary": "Retargeting pixel: a consenting user joins the advertiser's list",
            "description": "For an <img> on the advertiser's own pages. The user joins `rt-<adv>-<seg>` for 30 "
                           "days; the advertiser's campaigns target it as the interest `rt-<seg>`, from the next "
                           "ad request on. Without consent nothing is recorded. Any parameter not listed here "
                           "is a 400.",
            "parameters": [
                _q("adv", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "the advertiser id",
                   required=True),
                _q("seg", {"type": "string", "pattern": rf"^{_WS}*{TERM_PATTERN}{_WS}*$"}, "the list's name (a term)",
                   required=True),
                _q("user", {"type": "string", "minLength": 1, "maxLength": 128}, "the user id", required=True),
                *_CONSENT_PARAMS,
            ],
            "responses": {
                "200": {"description": "a 1x1 transparent GIF (recorded, or nothing to record without consent)",
                        "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}},
                "400": _json(ERROR_REF, "bad parameters: `fields` names each one"),
                **_LIMITS,
            },
        }},
        "/v1/track/impression": _beacon("impression", "The ad rendered: bills CPM once per impression"),
        "/v1/track/viewable": _beacon("viewable", "The ad became viewable: measured once, never billed"),
        "/v1/track/click": {"get": {
            "operationId": "click", "tags": ["beacons"], "summary": "Count a click and go to the landing page",
            "parameters": [_TOKEN],
            "responses": {
                "302": {"description": "to the landing URL signed into the token, with `adclid` added for "
                                       "conversion attribution; a repeated click redirects without billing",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                "400": _ref("BadToken"), "403": _ref("RefusedToken"), **_LIMITS},
        }},
        "/v1/track/conversion": {"post": {
            "operationId": "conversion", "tags": ["beacons"],
            "summary": "Conversion: the advertiser's pixel (adclid, no credentials) or an authenticated "
                       "server-to-server postback (adclid or user_id)",
            "description": "Without Authorization the body must carry the adclid of a real click, and a click "
                           "converts at most once. With `Authorization: Bearer <postback token>` (from the "
                           "control plane's POST /v1/postback-tokens) conversions are deduplicated by "
                           "conversion_id, and a user_id instead of an adclid is credited to that user's last "
                           "click within the campaign's click window, else last view within its view window.",
            "security": [{}, {"postbackToken": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["conversion_id"],
                "oneOf": [{"required": ["adclid"]}, {"required": ["user_id"]}],
                "description": "exactly one of adclid and user_id; other members are ignored",
                "properties": {
                    "conversion_id": {"type": "string", "minLength": 1, "maxLength": 128,
                                      "description": "your order id: counted once"},
                    "adclid": {"type": "string", "minLength": 1,
                               "description": "the adclid the landing page received"},
                    "user_id": {"type": "string", "minLength": 1, "maxLength": 128,
                                "description": "authenticated postbacks only: the user id the publisher passed "
                                               "as `user` on the ad request"},
                    "value_micros": {"type": "integer", "minimum": 0, "maximum": 10**15, "default": 0},
                }}}}},
            "responses": {
                "200": _json({"type": "object", "required": ["attributed"], "properties": {
                    "attributed": {"type": "boolean"},
                    "reason": {"type": "string", "description": "why nothing was credited (not recorded)"},
                    "model": {"enum": ["last_click", "last_view"]},
                    "campaign_id": {"type": "string"}, "event_id": {"type": "string"},
                    "invalid_reason": {"type": "string", "nullable": True}}},
                    "authenticated postback: what it was credited to (a repeat answers the same)"),
                "204": {"description": "pixel: counted (CPA campaigns are billed), or a duplicate, answered the "
                                       "same"},
                "400": _json(ERROR_REF, "not a JSON object, or a bad member: `fields` names each one"),
                "401": _json(ERROR_REF, "an Authorization header with a malformed or unknown postback token, or a "
                                        "user_id without one"),
                "403": _json(ERROR_REF, "the adclid is forged, tampered, expired, not a click's, or another "
                                        "advertiser's"),
                "503": _json(ERROR_REF, "not yet durable, or the attribution store is down: retry"),
                **_LIMITS},
        }},
        "/tag.js": {"get": {
            "operationId": "tag", "tags": ["ads"], "summary": "The publisher tag",
            "responses": {"200": {"description": "JavaScript, cacheable for 5 minutes",
                                  "content": {"application/javascript": {"schema": {"type": "string"}}}},
                          "429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}}},
        "/demo/publisher": {"get": {
            "operationId": "demoPublisher", "tags": ["ads"], "summary": "A demo page that uses the tag",
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                          "429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["operations"], "summary": "This document",
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.0"),
                          "429": _ref("RateLimited"), "431": _ref("HeadersTooLarge")}}},
        "/livez": {"get": {
            "operationId": "livez", "tags": ["operations"], "summary": "Liveness (never rate limited)",
            "responses": {"200": _json({"type": "object", "required": ["status"],
                                        "properties": {"status": {"enum": ["ok"]}}}, "serving HTTP"),
                          "431": _ref("HeadersTooLarge")}}},
        "/readyz": {"get": {
            "operationId": "readyz", "tags": ["operations"],
            "summary": "Readiness: a snapshot is loaded (never rate limited)",
            "responses": {**{code: _json({
                "type": "object", "additionalProperties": False,
                "required": ["ready", "region", "pop", "snapshot_version", "campaigns", "revisions"],
                "properties": {"ready": {"type": "boolean"}, "region": {"type": "string"}, "pop": {"type": "string"},
                               "snapshot_version": {"type": "integer", "nullable": True},
                               "campaigns": {"type": "integer", "minimum": 0},
                               "revisions": {"type": "object", "additionalProperties": {"type": "integer"},
                                             "description": "campaign id -> revision this PoP serves"},
                               "click_model_version": {"type": "integer", "nullable": True,
                                                       "description": "the click model ranking the auction "
                                                                      "(null: creatives' prior CTRs)"}}}, text)
                for code, text in (("200", "a snapshot is loaded"), ("503", "no snapshot yet"))},
                "431": _ref("HeadersTooLarge")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics (never rate limited)",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "431": _ref("HeadersTooLarge")}}},
    },
}
