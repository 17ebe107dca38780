"""Building blocks shared by the edge's and the control plane's OpenAPI documents (the two packages may
not import each other): the JSON error body every refusal uses, and response helpers."""

from __future__ import annotations

from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}

# A targeting term as both servers check it (edge.adrequest._TERM, control_plane.models._TERM): a letter or
# digit of any script, then letters, digits, spaces, '-' or '_', 64 at most, matched after lowercasing.
# Spelled with Unicode property escapes, not \w: JSON Schema patterns are ECMA-262, where \w means ASCII only,
# so a validator reading "[^\W_]" refuses "é" that the server (Python's Unicode \w) accepts. Python's \w is
# exactly \p{L}, \p{N} and '_' (tests/unit/test_openapi_patterns.py checks every code point). U+0130 is left
# out: it lowercases to "i" plus a combining dot, which is not a word character, so the servers refuse it.
_FIRST = r"(?!\u0130)[\p{L}\p{N}]"  # a term's first character
_ANY = r"(?!\u0130)[\p{L}\p{N}_ -]"  # any later one
_NOT_SPACE = r"(?!\u0130)[\p{L}\p{N}_-]"  # any later one but a space
TERM_PATTERN = rf"{_FIRST}(?:{_ANY}){{0,63}}"
# The same terms less any trailing spaces, for a pattern where whitespace follows the term: there each string
# must match in one way only, or a list of terms backtracks exponentially (edge.openapi's interests).
TERM_ENDING_IN_NON_SPACE = rf"{_FIRST}(?:(?:{_ANY}){{0,62}}{_NOT_SPACE})?"


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
