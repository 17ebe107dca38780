"""Request limits for the advertiser API: per-token and per-IP rate limits, body and header size limits.

(Placeholder wiring: filled in by the "What users touch" issue.)
"""

from __future__ import annotations

from starlette.middleware import Middleware


def middleware() -> list[Middleware]:
    return []
