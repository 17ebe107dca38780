"""The advertiser API's request limits: per-token and per-IP rate limits, header and body size limits.

The middleware is ``replication.limits.RequestLimits``; this module holds the control plane's settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.middleware import Middleware

from replication import limits
from replication import settings as s
from replication.limits import RequestLimits, TokenBuckets, parse_rate

__all__ = ["SPECS", "LimitSettings", "TokenBuckets", "middleware"]

DEFAULT_MAX_BODY_BYTES = 65_536  # control_plane/settings.py's default for ADSERVER_CP_MAX_BODY_BYTES

SPECS = [
    s.Spec("CP_RATE_PER_TOKEN", parse_rate, "50", "sustained requests/second per bearer token; 0 disables"),
    s.Spec("CP_BURST_PER_TOKEN", s.parse_int(1, 1_000_000), "100", "requests a bearer token may send at once"),
    s.Spec("CP_RATE_PER_IP", parse_rate, "200", "sustained requests/second per client IP; 0 disables"),
    s.Spec("CP_BURST_PER_IP", s.parse_int(1, 1_000_000), "400", "requests a client IP may send at once"),
    s.Spec("CP_MAX_HEADER_COUNT", s.parse_int(8, 100), "64", "most request headers accepted (431 beyond)"),
    s.Spec("CP_MAX_HEADER_BYTES", s.parse_int(1024, 262_144), "32768",
           "most request header bytes, names and values, accepted (431 beyond)"),
]


class LimitSettings(limits.LimitSettings):
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LimitSettings:
        return cls.load(SPECS, "cp_", env)


def _settings_body_limit(scope: Any) -> int:
    """ADSERVER_CP_MAX_BODY_BYTES from the app's settings object (set in create_app), read per request."""
    app = scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    return int(getattr(settings, "cp_max_body_bytes", DEFAULT_MAX_BODY_BYTES))


def middleware(env: Mapping[str, str] | None = None) -> list[Middleware]:
    """The control plane's request limits, from ``ADSERVER_CP_*`` (see SPECS)."""
    return [Middleware(RequestLimits, settings=LimitSettings.from_env(env), body_limit=_settings_body_limit)]
