"""The publisher-facing edge's request limits: a per-IP rate limit, header and body size limits.

The middleware is ``replication.limits.RequestLimits``, tuned here for publisher traffic: the per-IP default
is far above what one browser or the demo sends (it stops one address from monopolizing a worker, while
invalid traffic is marked, not blocked, by the IVT rules), and every refusal carries
``Access-Control-Allow-Origin: *`` like the edge's other answers, so the tag in a browser can read it.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.middleware import Middleware

from replication import limits
from replication import settings as s
from replication.limits import EXEMPT_PATHS, RequestLimits, parse_rate

_CORS = {"Access-Control-Allow-Origin": "*"}

SPECS = [
    s.Spec("EDGE_RATE_PER_IP", parse_rate, "10000",
           "sustained requests/second per client IP and worker; 0 disables"),
    s.Spec("EDGE_BURST_PER_IP", s.parse_int(1, 10_000_000), "20000", "requests a client IP may send at once"),
    s.Spec("EDGE_MAX_HEADER_COUNT", s.parse_int(8, 100), "64", "most request headers accepted (431 beyond)"),
    s.Spec("EDGE_MAX_HEADER_BYTES", s.parse_int(1024, 262_144), "32768",
           "most request header bytes, names and values, accepted (431 beyond)"),
    s.Spec("EDGE_MAX_BODY_BYTES", s.parse_int(1024, 1_048_576), "16384",
           "largest request body accepted (conversion postbacks); 413 beyond"),
]


class LimitSettings(limits.LimitSettings):
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LimitSettings:
        return cls.load(SPECS, "edge_", env)


def middleware(env: Mapping[str, str] | None = None) -> list[Middleware]:
    """The edge's request limits, from ``ADSERVER_EDGE_*`` (see SPECS)."""
    settings = LimitSettings.from_env(env)
    return [Middleware(RequestLimits, settings=settings, exempt_paths=EXEMPT_PATHS,
                       body_limit=lambda scope: settings.max_body_bytes, error_headers=_CORS)]
