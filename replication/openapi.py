"""Building blocks shared by the edge's and the control plane's OpenAPI documents (the two packages may
not import each other): the JSON error body every refusal uses, and response helpers."""

from __future__ import annotations

from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}


def error_schema(error_description: str, field_example: str | None, limits: list[str]) -> dict[str, Any]:
    """The body of every 4xx: a message, optionally each bad field, and which request limit refused it."""
    field: dict[str, Any] = {"type": "string"}
    if field_example:
        field["example"] = field_example
    return {
        "type": "object", "additionalProperties": False, "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": error_description},
            "fields": {"type": "array", "description": "every bad field, one entry each",
                       "items": {"type": "object", "additionalProperties": False, "required": ["field", "message"],
                                 "properties": {"field": field, "message": {"type": "string"}}}},
            "limit": {"enum": limits, "description": "which request limit refused the request"},
            "retry_after_s": {"type": "integer", "minimum": 1},
        },
    }


def json_response(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}
