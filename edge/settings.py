"""Edge settings, from ``ADSERVER_EDGE_*`` (and the shared ``ADSERVER_NATS_URL``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge.tokens import SigningKeys
from replication import settings as s
from replication.clock import Clock, parse_clock
from replication.subjects import check_token

PREFIX = "ADSERVER_"


def _region(raw: str) -> str:
    return check_token(raw.strip(), "region")


def _base_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL such as https://ads.example.com")
    return raw.rstrip("/")


SPECS = [
    s.Spec("NATS_URL", s.parse_nonempty, "nats://127.0.0.1:4222", "NATS server URL (the region's leaf node)"),
    s.Spec("EDGE_REGION", _region, None, "region this PoP serves, e.g. eu"),
    s.Spec("CLOCK", parse_clock, "",
           "campaign clock: empty is real time; SPEED@REAL:VIRTUAL compresses days (the simulator)"),
    s.Spec("EDGE_HUB_DOMAIN", s.parse_str, "",
           "JetStream domain of the hub (snapshots) when NATS_URL is a leaf node with a JetStream domain of its "
           "own, where this region's events stream lives; empty: one server holds both"),
    s.Spec("EDGE_POP", _region, "pop1", "name of this PoP inside its region"),
    s.Spec("EDGE_SIGNING_KEYS", SigningKeys.parse, None,
           "beacon signing keys kid:base64(>=32 bytes),...; the first signs, all verify", secret=True),
    s.Spec("EDGE_PUBLIC_URL", _base_url, "http://127.0.0.1:8080", "base URL publishers reach this PoP at"),
    s.Spec("EDGE_IMPRESSION_TTL_S", s.parse_int(10, 86_400), "900", "how long an impression token is valid"),
    s.Spec("EDGE_CLICK_TTL_S", s.parse_int(10, 7 * 86_400), "3600", "how long a click token is valid"),
    s.Spec("EDGE_ATTRIBUTION_WINDOW_S", s.parse_int(60, 90 * 86_400), str(7 * 86_400),
           "click-through attribution window for conversions"),
    s.Spec("EDGE_MAX_SLOTS", s.parse_int(1, 20), "6", "most ad slots one request may ask for"),
    s.Spec("EDGE_TCF_VENDOR_ID", s.parse_int(0, 65535), "0",
           "this ad server's id on the IAB Global Vendor List: under GDPR a user is profiled only with that "
           "vendor's consent as well as purposes 1, 3 and 4 (0: purposes only)"),
    s.Spec("EDGE_BEACON_ACK_TIMEOUT_S", s.parse_float(0.1), "3",
           "how long a beacon waits for JetStream to hold its event before answering 503 (retry)"),
    s.Spec("EDGE_ACCESS_LOG", s.parse_bool, "false", "write a JSON access line per request"),
    s.Spec("EDGE_RESERVATION_TTL_S", s.parse_int(1, 3600), "120",
           "how long an unrendered impression keeps its budget reserved"),
    s.Spec("EDGE_IVT_ENABLED", s.parse_bool, "true",
           "run the invalid-traffic rules on beacons (false: every beacon is valid traffic; for synthetic tests)"),
    s.Spec("EDGE_REDIS_URL", s.parse_str, "",
           "the region's Redis for IVT flood counters and seen impressions, redis://host:6379/0; empty: in-process"),
    s.Spec("EDGE_WORKERS", s.parse_int(1, 1024), "1", "granian worker processes (set by `adserver edge`)"),
    s.Spec("EDGE_TRUSTED_PROXY_HOPS", s.parse_int(0, 10), "0",
           "proxies of ours in front of the edge that append to X-Forwarded-For (0: the TCP peer is the client)"),
    s.Spec("EDGE_IVT_DATA_DIR", s.parse_str, "",
           "directory with bots.txt, browsers.txt, datacenters.txt (re-read when changed); empty: the shipped lists"),
    s.Spec("EDGE_IVT_MIN_CLICK_S", s.parse_float(0), "1.0",
           "a click sooner than this after its ad was served is click_too_fast; 0 disables"),
    s.Spec("EDGE_IVT_WINDOW_S", s.parse_int(1, 3600), "60", "the flood-limit window"),
    s.Spec("EDGE_IVT_IP_LIMIT", s.parse_int(0), "300",
           "beacons per client IP (IPv6: per /64) per window before ip_flood; 0 disables"),
    s.Spec("EDGE_IVT_UA_LIMIT", s.parse_int(0), "0",
           "beacons per user agent per window, region-wide, before ua_flood; 0 disables"),
    s.Spec("EDGE_IVT_FAIL_OPEN", s.parse_bool, "true",
           "Redis unreachable: record beacons without the flood and click-without-impression rules (false: 503)"),
    s.Spec("EDGE_DECISION_EVENTS", s.parse_bool, "true",
           "publish a decision event per ad served (the delivery log the pacing shape is learned from; billing "
           "events are always published)"),
    s.Spec("EDGE_FREQUENCY_FAIL_OPEN", s.parse_bool, "true",
           "frequency-cap history unreadable: serve as if nothing were capped (false: campaigns with caps sit out)"),
    s.Spec("EDGE_COMPILE_CACHE_DIR", s.parse_str, os.path.join(tempfile.gettempdir(), f"adserver-numba-{os.getuid()}"),
           "directory (this user's alone) for the auction kernels' compiled code, so a restarted worker loads "
           "them instead of compiling for seconds; empty: compile in every process"),
]


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    nats_url: str
    edge_region: str
    clock: Clock
    edge_hub_domain: str
    edge_pop: str
    edge_signing_keys: SigningKeys
    edge_public_url: str
    edge_impression_ttl_s: int
    edge_click_ttl_s: int
    edge_attribution_window_s: int
    edge_max_slots: int
    edge_tcf_vendor_id: int
    edge_beacon_ack_timeout_s: float
    edge_access_log: bool
    edge_reservation_ttl_s: int
    edge_ivt_enabled: bool
    edge_redis_url: str
    edge_workers: int
    edge_trusted_proxy_hops: int
    edge_ivt_data_dir: str
    edge_ivt_min_click_s: float
    edge_ivt_window_s: int
    edge_ivt_ip_limit: int
    edge_ivt_ua_limit: int
    edge_ivt_fail_open: bool
    edge_decision_events: bool
    edge_frequency_fail_open: bool
    edge_compile_cache_dir: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EdgeSettings:
        return cls(**s.load(PREFIX, SPECS, os.environ if env is None else env))

    def __repr__(self) -> str:  # keys stay out of logs
        return f"EdgeSettings(region={self.edge_region}, pop={self.edge_pop}, keys={list(self.edge_signing_keys.keys)})"
