"""The edge's OpenAPI 3 document (publisher-facing calls)."""

from __future__ import annotations

from typing import Any

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "edge-adserver edge PoP", "version": "1"},
    "paths": {},
}
