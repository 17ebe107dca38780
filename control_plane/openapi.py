"""The control plane's OpenAPI 3 document (hand-written: the API is small and the contract is the point)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_CAMPAIGN = {"$ref": "#/components/schemas/Campaign"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ERROR, "malformed request"),
    "401": _json(_ERROR, "missing or invalid bearer token"),
    "404": _json(_ERROR, "no such campaign for this advertiser"),
    "413": _json(_ERROR, "body too large"),
    "422": _json(_ERROR, "validation failed; `fields` names each bad field"),
}
_ID = [{"name": "campaign_id", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "edge-adserver control plane", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"},
                "fields": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}}}},
            "Targeting": {"type": "object", "additionalProperties": False, "properties": {
                "countries": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]{2}$"}},
                "geos": {"type": "array", "items": {"type": "string"}},
                "devices": {"type": "array", "items": {"enum": ["desktop", "mobile", "tablet", "ctv"]}},
                "interests": {"type": "array", "items": {"type": "string"}},
                "keywords": {"type": "array", "items": {"type": "string"}},
                "placements": {"type": "array", "items": {"type": "string"}},
                "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23}}}},
            "CreativeInput": {"type": "object", "additionalProperties": False,
                              "required": ["headline", "image_url", "landing_url", "size"], "properties": {
                "headline": {"type": "string", "maxLength": 90},
                "image_url": {"type": "string", "format": "uri"},
                "landing_url": {"type": "string", "format": "uri"},
                "cta": {"type": "string", "maxLength": 30},
                "size": {"type": "string", "example": "300x250"},
                "prior_ctr": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}},
            "CampaignInput": {"type": "object", "additionalProperties": False, "properties": {
                "name": {"type": "string", "maxLength": 200},
                "objective": {"enum": ["awareness", "traffic", "conversions"]},
                "bid_type": {"enum": ["cpm", "cpc", "cpa"]},
                "max_bid_micros": {"type": "integer", "minimum": 1},
                "daily_budget_micros": {"type": "integer", "minimum": 1},
                "total_budget_micros": {"type": "integer", "minimum": 1},
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time", "nullable": True},
                "timezone": {"type": "string", "example": "Europe/Berlin"},
                "pacing": {"enum": ["even", "asap"]},
                "prior_cvr": {"type": "number"},
                "targeting": {"$ref": "#/components/schemas/Targeting"},
                "creatives": {"type": "array", "items": {"$ref": "#/components/schemas/CreativeInput"}}}},
            "Campaign": {"type": "object", "properties": {
                "id": {"type": "string"}, "advertiser_id": {"type": "string"}, "revision": {"type": "integer"},
                "status": {"enum": ["draft", "pending_review", "active", "paused", "completed", "rejected"]},
                "name": {"type": "string"}, "bid_type": {"type": "string"},
                "max_bid_micros": {"type": "integer"}, "daily_budget_micros": {"type": "integer"},
                "total_budget_micros": {"type": "integer"},
                "creatives": {"type": "array", "items": {"type": "object"}},
                "review": {"type": "object", "nullable": True}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/campaigns": {
            "get": {"summary": "List your campaigns", "responses": {
                "200": _json({"type": "object", "properties": {"campaigns": {"type": "array", "items": _CAMPAIGN}}},
                             "campaigns"), "401": _ERRORS["401"]}},
            "post": {"summary": "Create a campaign (status draft)",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/CampaignInput"}}}},
                     "responses": {"201": _json(_CAMPAIGN, "created"), **_ERRORS}},
        },
        "/v1/campaigns/{campaign_id}": {
            "parameters": _ID,
            "get": {"summary": "Read a campaign", "responses": {"200": _json(_CAMPAIGN, "campaign"), **_ERRORS}},
            "patch": {"summary": "Change a campaign; If-Match: \"<revision>\" for compare-and-set",
                      "requestBody": {"required": True, "content": {"application/json": {
                          "schema": {"$ref": "#/components/schemas/CampaignInput"}}}},
                      "responses": {"200": _json(_CAMPAIGN, "updated"),
                                    "409": _json(_ERROR, "revision conflict"), **_ERRORS}},
        },
        "/v1/campaigns/{campaign_id}/creatives": {
            "parameters": _ID,
            "post": {"summary": "Add a creative", "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreativeInput"}}}},
                "responses": {"201": _json(_CAMPAIGN, "campaign with the new creative"), **_ERRORS}},
        },
        **{
            f"/v1/campaigns/{{campaign_id}}/{action}": {
                "parameters": _ID,
                "post": {"summary": f"{action.capitalize()} the campaign", "responses": {
                    "200": _json(_CAMPAIGN, "new status"), "409": _json(_ERROR, "not allowed from this status"),
                    **_ERRORS}},
            }
            for action in ("submit", "pause", "resume")
        },
        "/v1/campaigns/{campaign_id}/metrics": {
            "parameters": [*_ID,
                           {"name": "from", "in": "query", "schema": {"type": "string"}},
                           {"name": "to", "in": "query", "schema": {"type": "string"}},
                           {"name": "granularity", "in": "query",
                            "schema": {"enum": ["minute", "hour", "day"]}}],
            "get": {"summary": "Impressions, clicks, conversions, spend, CTR, gross and invalid counts",
                    "responses": {"200": _json({"type": "object"}, "metrics"), **_ERRORS}},
        },
    },
}
