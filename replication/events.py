"""Event schema and codec: the billing records that travel edge -> JetStream -> collector -> ClickHouse.

Every event carries an ``event_id`` that is fixed by the thing it records (an impression's id is chosen
with the ad), so each hop can deduplicate by it: ``Nats-Msg-Id`` at JetStream, a pre-insert lookup plus
insert-deduplication tokens in ClickHouse, and ``uniqExact(event_id)`` in billing queries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from operator import attrgetter
from typing import Any

import msgpack

from replication.ctr_model import MAX_SITE
from replication.variants import MAX_VARIANT_KEY
from replication.wire import packb

SCHEMA_VERSION = 1
# Money and timestamps fit comfortably below 2**53; anything larger is a forged or corrupt event.
MAX_INT = 10**15 * 1000


class EventType(StrEnum):
    DECISION = "decision"
    IMPRESSION = "impression"
    CLICK = "click"
    CONVERSION = "conversion"
    VIEWABLE = "viewable"  # MRC viewability: >= 50% of pixels in view for >= 1 s (30% for large ads)


class BidType(StrEnum):
    CPM = "cpm"
    CPC = "cpc"
    CPA = "cpa"


class InvalidReason(StrEnum):
    """Why an event is not billed (invalid traffic, or no budget left to bill it against). Stable values:
    they are stored in ClickHouse and used in metrics. Marked, never dropped."""

    NONE = ""
    DUPLICATE = "duplicate"
    CLICK_WITHOUT_IMPRESSION = "click_without_impression"
    OVER_BUDGET = "over_budget"
    # General IVT, decided by edge/ivt.py
    KNOWN_BOT = "known_bot"
    INVALID_USER_AGENT = "invalid_user_agent"
    DATACENTER_IP = "datacenter_ip"
    INVALID_SIZE = "invalid_size"
    CLICK_TOO_FAST = "click_too_fast"
    GEO_MISMATCH = "geo_mismatch"
    UA_MISMATCH = "ua_mismatch"
    IP_FLOOD = "ip_flood"
    UA_FLOOD = "ua_flood"
    PREFETCH = "prefetch"


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: EventType
    ts_ms: int
    region: str
    pop: str
    auction_id: str
    impression_id: str
    campaign_id: str
    creative_id: str
    advertiser_id: str
    placement: str
    bid_type: BidType
    # Clearing price of the billable unit (per impression for CPM, per click for CPC, per action for CPA).
    price_micros: int
    # What this event bills; 0 when the event is not the campaign's billable action.
    cost_micros: int
    # Advertiser-reported conversion value; 0 otherwise.
    value_micros: int = 0
    invalid_reason: InvalidReason = InvalidReason.NONE
    geo: str = ""
    device: str = ""
    # Pseudonymous user key (a hash of the publisher's user id), only when the user consented; joins a
    # conversion to the user's earlier impressions and clicks for multi-touch reports.
    user_key: str = ""
    # Which combination of the creative's components was shown ("h.i.c", replication.variants); empty for a
    # creative without alternatives. Clicks carry their impression's, so the trainer can credit it.
    variant: str = ""
    # What the click model reads of the request besides the above, on decision events only (the trainer joins
    # them to the impressions, ``control_plane.storage``): the page's site (``replication.ctr_model.site_of``)
    # and the user's freshest segments, comma-separated (``replication.ctr_model.model_segments``; segment
    # names hold no commas), only with consent.
    site: str = ""
    segments: str = ""

    @property
    def billable(self) -> bool:
        return self.cost_micros > 0 and self.invalid_reason == InvalidReason.NONE


_FIELDS = tuple(f.name for f in fields(Event))
# Fields added after schema version 1 shipped, with their defaults: older messages simply lack them.
_ADDED = {"user_key": "", "variant": "", "site": "", "segments": ""}
MAX_SEGMENTS_FIELD = 1024  # MODEL_SEGMENTS names, an advertiser's retargeting lists' among them
if tuple(_ADDED) != _FIELDS[-len(_ADDED):]:  # encode_event trims them from the end: they must be last
    raise RuntimeError("fields added after schema version 1 must be Event's last fields")


def impression_event_id(impression_id: str) -> str:
    return f"imp:{impression_id}"


def click_event_id(impression_id: str) -> str:
    # One billable click per impression: a second click on the same ad is the same event.
    return f"clk:{impression_id}"


def conversion_event_id(impression_id: str) -> str:
    # The browser pixel: one conversion per click. The id comes from the signed click, never from the
    # caller, so replaying an unauthenticated pixel with new conversion ids cannot bill a campaign again.
    return f"cnv:{impression_id}"


def postback_conversion_event_id(advertiser_id: str, conversion_id: str) -> str:
    """An authenticated server-to-server postback: deduplicated by the advertiser's own conversion id, so a
    retried or re-sent postback (even naming another click) is one conversion. Hashed: the caller's id may
    hold any characters, and event ids travel as Nats-Msg-Id headers."""
    return f"cnv:{advertiser_id}:{hashlib.sha256(conversion_id.encode()).hexdigest()[:32]}"


def viewable_event_id(impression_id: str) -> str:
    return f"vw:{impression_id}"


def decision_event_id(impression_id: str) -> str:
    return f"dec:{impression_id}"


_GET_FIELDS = attrgetter(*_FIELDS)  # all of them in one C call


def _values(event: Event) -> list[Any]:
    return _trimmed(list(_GET_FIELDS(event)))


def _trimmed(values: list[Any]) -> list[Any]:
    # Fields added since version 1 are left off the end while they hold their defaults, so an event that uses
    # none of them still decodes in a collector from before they existed (a rolling upgrade, edges first).
    while len(values) > len(_FIELDS) - len(_ADDED) and values[-1] == _ADDED[_FIELDS[len(values) - 1]]:
        values.pop()
    return values


def encode_event(event: Event) -> bytes:
    return packb([SCHEMA_VERSION, _values(event)])


BATCH = "batch"
MAX_BATCH = 1024


def encode_event_batch(events: Sequence[Event]) -> bytes:
    """Several events in one message, because nats-server's work and the stream's storage are per message;
    each event keeps its own id for dedup. The edge builds its decision batches from rows encoded as each
    ad is served (``encode_decision_row``, ``join_event_rows``); this encodes ready ``Event``s the same way."""
    return join_event_rows([encode_event_row(e) for e in events])


def encode_event_row(event: Event) -> bytes:
    """One event as it sits in a batch: the edge encodes each decision when it is made, so the control tick
    that sends the batch only joins bytes (encoding a tick's worth of events at once held up the requests
    queued behind it by about a millisecond)."""
    return packb(_values(event))


if len(_FIELDS) != 22:  # encode_decision_row lists them by position
    raise RuntimeError("Event's fields changed: update encode_decision_row to match")


def encode_decision_row(event_id: str, ts_ms: int, region: str, pop: str, auction_id: str, impression_id: str,
                        campaign_id: str, creative_id: str, advertiser_id: str, placement: str, bid_type: str,
                        price_micros: int, geo: str, device: str, user_key: str, variant: str, site: str = "",
                        segments: str = "") -> bytes:
    """``encode_event_row`` of a decision (nothing billed, valid) without building its ``Event``: the edge
    writes one per ad served, and the frozen dataclass's constructor cost more than the encoding. Same
    fields in the same order (tested against ``encode_event_row``); the ad path has validated them."""
    return packb(_trimmed([
        event_id, EventType.DECISION, ts_ms, region, pop, auction_id, impression_id, campaign_id, creative_id,
        advertiser_id, placement, bid_type, price_micros, 0, 0, InvalidReason.NONE, geo, device, user_key,
        variant, site, segments]))


_BATCH_HEAD = msgpack.packb(SCHEMA_VERSION) + msgpack.packb(BATCH)


def join_event_rows(rows: Sequence[bytes]) -> bytes:
    """``[SCHEMA_VERSION, BATCH, [row, ...]]`` from rows already encoded (``encode_event_row``)."""
    return event_batch(len(rows), b"".join(rows))


def event_batch(count: int, rows: bytes | bytearray) -> bytes:
    """``join_event_rows`` of ``count`` rows already laid end to end: msgpack is a concatenation of its items
    after each container's header, so the bytes equal packing it whole."""
    if not 0 < count <= MAX_BATCH:
        raise ValueError(f"a batch holds 1-{MAX_BATCH} events")
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join((packer.pack_array_header(3), _BATCH_HEAD, packer.pack_array_header(count), rows))


def decode_events(data: bytes) -> list[Event]:
    """The events of one message: a single event (``encode_event``) or a batch (``join_event_rows``).
    A batch with one bad event is refused whole (it is dead-lettered as one message)."""
    unpacked = _unpack(data)
    if isinstance(unpacked, list) and len(unpacked) == 3 and unpacked[1] == BATCH:
        version, _, batch = unpacked
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_BATCH:
            raise EventDecodeError(f"a batch must hold 1-{MAX_BATCH} events")
        return [_from_values(version, values) for values in batch]
    return [_from_unpacked(unpacked)]


class EventDecodeError(ValueError):
    """A message on an event subject is not a valid event (a poison message)."""


def decode_event(data: bytes) -> Event:
    return _from_unpacked(_unpack(data))


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise EventDecodeError(f"not msgpack: {exc}") from exc


def _from_unpacked(unpacked: Any) -> Event:
    try:
        version, values = unpacked
    except (TypeError, ValueError) as exc:
        raise EventDecodeError("an event is [version, fields]") from exc
    return _from_values(version, values)


def _from_values(version: Any, values: Any) -> Event:
    if version != SCHEMA_VERSION:
        raise EventDecodeError(f"unknown event schema version {version!r}")
    # More fields than this code knows: a newer writer's additions, ignored (the collector upgrades last).
    if not isinstance(values, list) or not len(_FIELDS) - len(_ADDED) <= len(values) <= len(_FIELDS) + 16:
        raise EventDecodeError("wrong number of event fields")
    raw: dict[str, Any] = {**_ADDED, **dict(zip(_FIELDS, values, strict=False))}
    try:
        raw["type"] = EventType(raw["type"])
        raw["bid_type"] = BidType(raw["bid_type"])
        raw["invalid_reason"] = InvalidReason(raw["invalid_reason"])
        for name in ("ts_ms", "price_micros", "cost_micros", "value_micros"):
            value = raw[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise EventDecodeError(f"{name} must be an integer")
            if not 0 <= value <= MAX_INT:
                raise EventDecodeError(f"{name} out of range 0..{MAX_INT}")
        for name in ("event_id", "region", "pop", "auction_id", "impression_id", "campaign_id",
                     "creative_id", "advertiser_id", "placement", "geo", "device", "user_key", "variant", "site",
                     "segments"):
            if not isinstance(raw[name], str):
                raise EventDecodeError(f"{name} must be a string")
        for name, most in (("variant", MAX_VARIANT_KEY), ("site", MAX_SITE), ("segments", MAX_SEGMENTS_FIELD)):
            if len(raw[name]) > most:
                raise EventDecodeError(f"{name} longer than {most} characters")
    except ValueError as exc:
        if isinstance(exc, EventDecodeError):
            raise
        raise EventDecodeError(str(exc)) from exc
    if not raw["event_id"]:
        raise EventDecodeError("event_id is empty")
    return Event(**raw)


def event_as_dict(event: Event) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(event).items()}
