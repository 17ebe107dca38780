"""The index snapshot: what the control plane compiles and every edge PoP serves from.

A snapshot is immutable and versioned. The builder compiles active campaigns into an inverted index
(targeting dimension -> value -> campaign positions) so that an edge retrieves candidates by intersecting a
few posting lists instead of scanning every campaign. The codec is a pure bytes-in, bytes-out function:
msgpack with a magic, a schema version and a SHA-256 checksum, so a truncated or foreign payload is
rejected before it can replace a good snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

from replication.columns import CampaignColumns, frozen_array
from replication.ctr_model import ClickModel
from replication.segments import KEYWORD_PREFIX, RETARGETING_PREFIX
from replication.variants import MAX_ALTERNATIVES, Arms, PickCache

MAGIC = "ADSNAP"
SCHEMA_VERSION = 1

# Dimensions indexed for retrieval. A campaign with no constraint in a dimension sits in its "any" list.
DIMENSIONS = ("placement", "format", "country", "geo", "device", "keyword", "interest")
# The dimensions a request brings at most one value in: its context (the rest, keywords and interests, come as
# lists). Retrieval remembers the context's part of a request's plan (``edge.auction._plan``).
CONTEXT_DIMENSIONS = ("placement", "format", "country", "geo", "device")


def unit_cost_ceiling(bid_type: str, max_bid_micros: int) -> int:
    """The most one billable unit can cost: a CPM bid is per thousand impressions, the others per unit."""
    if bid_type == "cpm":
        return -(-max_bid_micros // 1000)
    return max_bid_micros


def unit_cost_floor(reserve_cpm_micros: int) -> int:
    """The least one billable unit can cost, whatever the bid type: the auction charges at least the reserve
    eCPM, which per impression is a thousandth of it, and per click or action more (CTR and CVR are <= 1).
    Less than this buys nothing, however low the price a campaign really pays."""
    return max(1, -(-reserve_cpm_micros // 1000))


@dataclass(frozen=True, slots=True)
class SnapshotCreative:
    creative_id: str
    format: str
    headline: str
    image_url: str
    landing_url: str
    cta: str
    prior_ctr: float
    # Other headlines, images and calls to action (replication.variants): the edge tries their combinations.
    alternatives: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())


DEFAULT_CLICK_WINDOW_S = 7 * 86_400
DEFAULT_VIEW_WINDOW_S = 86_400


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most ``max_impressions`` per user in any ``window_s`` (``edge.frequency`` enforces it)."""

    scope: str  # "campaign": all its creatives together; "creative": each creative on its own
    max_impressions: int
    window_s: int


@dataclass(frozen=True, slots=True)
class SnapshotCampaign:
    campaign_id: str
    advertiser_id: str
    revision: int
    bid_type: str
    max_bid_micros: int
    daily_budget_micros: int
    total_budget_micros: int
    start_s: int
    end_s: int  # 0: open-ended
    timezone: str
    hours: frozenset[int]  # empty: every hour
    countries: frozenset[str]
    geos: frozenset[str]
    devices: frozenset[str]
    keywords: frozenset[str]
    interests: frozenset[str]
    placements: frozenset[str]
    prior_cvr: float
    creatives: tuple[SnapshotCreative, ...]
    # Attribution windows: a conversion is credited to the last click within click_window_s, else to the last
    # viewed impression within view_window_s (0: no view-through conversions).
    click_window_s: int = DEFAULT_CLICK_WINDOW_S
    view_window_s: int = DEFAULT_VIEW_WINDOW_S
    pacing: str = "even"  # "even" | "asap" | "step" (see control_plane.models.PACING_MODES)
    budget_mode: str = "allowance"  # "allowance" | "counter" (a baseline)
    frequency_caps: tuple[FrequencyCap, ...] = ()

    def values(self, dimension: str) -> frozenset[str]:
        if dimension == "format":
            return frozenset(c.format for c in self.creatives)
        return {
            "placement": self.placements,
            "country": self.countries,
            "geo": self.geos,
            "device": self.devices,
            "keyword": self.keywords,
            "interest": self.interests,
        }[dimension]


MAX_ANSWER_MASKS = 64  # values per dimension up to which RetrievalIndex keeps a whole bitset per value
POPULAR_SHARE = 32  # beyond that, a value 1/32 of the campaigns name still gets one (RetrievalIndex.answers)
MIN_POPULAR = 64  # ... if that is at least 64 campaigns: fewer positions are cheap to set per request anyway


# What retrieval looks up in one dimension (``RetrievalIndex.context_lookups`` and ``other_lookups``).
Lookup = tuple[str, dict[str, tuple[int, int]], dict[str, int], int]


@dataclass(frozen=True, slots=True)
class RetrievalIndex:
    """The postings as numpy arrays, for retrieval by bitsets: per dimension, a bitset of the campaigns with no
    constraint there, and per value the positions of the campaigns that name it. OR-ing a request's values
    into the dimension's bitset and AND-ing the dimensions costs a pass over one bit per campaign
    (``edge.auction.retrieve``), where unions of Python sets cost a hash insert per campaign in the (large)
    "any" lists. Bitsets are ``bitset``'s: bit i of word i // 64 is campaign i.

    Every bitset is a row of one array (``bits``) and every value's positions a span of another (``flat``):
    a request names what it reads by row and span numbers (``lookups``), so the compiled retrieval takes
    two arrays and a short plan instead of a tuple of arrays per dimension, each of which numba unboxes per
    call (and compiles once per tuple length)."""

    size: int
    positions: Mapping[str, Mapping[str, np.ndarray]]  # views of spans of ``flat``
    # Per dimension, for some values their whole answer "unrestricted or naming this value" as one bitset, so
    # a request's single value there costs one AND, not setting its campaigns' bits: every value of a
    # dimension with few (formats, devices, countries), and in the others each value at least
    # 1/POPULAR_SHARE of the campaigns (and MIN_POPULAR) name (a popular placement or keyword, with the
    # longest postings). Few values times one bit per campaign keeps it small: a dimension has at most
    # POPULAR_SHARE times as many popular values as a campaign names there on average.
    answers: Mapping[str, Mapping[str, np.ndarray]]  # views of rows of ``bits``
    bits: np.ndarray  # uint64, (bitsets, words)
    flat: np.ndarray  # int64, every value's positions one after another
    # Per dimension some campaign is restricted in (DIMENSIONS order), what retrieval reads (``edge.auction.
    # _plan``), looked up once: (its name, value -> (start, end) of its positions in ``flat``, value -> row of
    # its answer in ``bits``, the row of its unrestricted bitset); the context's dimensions
    # (CONTEXT_DIMENSIONS) apart from the others. A dimension no campaign is restricted in keeps everyone:
    # retrieval skips it. Plain dicts, read-only by convention: every request looks values up in them, and a
    # mappingproxy's ``get`` is a method call on the dict behind it, several times a dict's own.
    context_lookups: tuple[Lookup, ...]
    other_lookups: tuple[Lookup, ...]
    # What the auction derives from the index per request context and keeps with it (``edge.auction._plan``):
    # mutable, and no part of the index's identity.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, size: int, postings: Mapping[str, Mapping[str, frozenset[int]]],
              unrestricted: Mapping[str, frozenset[int]]) -> RetrievalIndex:
        masks = {}
        for dim in DIMENSIONS:
            mask = np.zeros(size, dtype=bool)
            mask[np.fromiter(unrestricted.get(dim, ()), dtype=np.intp)] = True
            masks[dim] = mask
        sorted_postings = {dim: {v: np.fromiter(sorted(p), dtype=np.int64) for v, p in postings.get(dim, {}).items()}
                           for dim in DIMENSIONS}
        spans: dict[str, dict[str, tuple[int, int]]] = {dim: {} for dim in DIMENSIONS}
        pieces, end = [np.zeros(0, dtype=np.int64)], 0
        for dim in DIMENSIONS:
            for value, where in sorted_postings[dim].items():
                spans[dim][value] = (end, end + len(where))
                end += len(where)
                pieces.append(where)
        flat = frozen_array(np.concatenate(pieces))
        open_dims = frozenset(dim for dim in DIMENSIONS if bool(masks[dim].all()))
        rows: list[np.ndarray] = []
        unrestricted_row: dict[str, int] = {}
        answer_rows: dict[str, dict[str, int]] = {}
        for dim in DIMENSIONS:
            unrestricted_row[dim] = len(rows)
            rows.append(bitset(masks[dim]))  # packed at once: a boolean mask is a byte per campaign
            if dim in open_dims:
                continue
            few = len(sorted_postings[dim]) <= MAX_ANSWER_MASKS
            answer_rows[dim] = {}
            for value, where in sorted_postings[dim].items():
                if few or (len(where) * POPULAR_SHARE >= size and len(where) >= MIN_POPULAR):
                    mask = masks[dim].copy()
                    mask[where] = True
                    answer_rows[dim][value] = len(rows)
                    rows.append(bitset(mask))
        bits = frozen_array(np.stack(rows))  # one row per dimension at least
        lookups = tuple((dim, spans[dim], answer_rows[dim], unrestricted_row[dim])
                        for dim in DIMENSIONS if dim not in open_dims)
        return cls(
            size=size,
            positions=MappingProxyType({dim: MappingProxyType({v: flat[a:b] for v, (a, b) in spans[dim].items()})
                                        for dim in DIMENSIONS}),
            answers=MappingProxyType({dim: MappingProxyType({v: bits[row] for v, row in by_value.items()})
                                      for dim, by_value in answer_rows.items()}),
            bits=bits, flat=flat,
            context_lookups=tuple(entry for entry in lookups if entry[0] in CONTEXT_DIMENSIONS),
            other_lookups=tuple(entry for entry in lookups if entry[0] not in CONTEXT_DIMENSIONS))


def bitset(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as read-only uint64 words, bit i of word i // 64 set where ``mask[i]`` (the bits past
    the mask's end are clear)."""
    packed = np.packbits(mask, bitorder="little")
    padded = np.zeros(-(-len(packed) // 8) * 8, dtype=np.uint8)
    padded[:len(packed)] = packed
    # Read as little-endian words (byte j of a word holds bits 8j to 8j + 7), in native order: no copy on a
    # little-endian machine.
    return frozen_array(padded.view("<u8").astype(np.uint64, copy=False))


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    created_ms: int
    reserve_cpm_micros: int
    campaigns: tuple[SnapshotCampaign, ...]
    # dimension -> value -> positions in ``campaigns``; read-only views, never mutated after build.
    postings: Mapping[str, Mapping[str, frozenset[int]]] = field(repr=False)
    unrestricted: Mapping[str, frozenset[int]] = field(repr=False)
    # advertiser id -> SHA-256 hashes of its live postback tokens (never the tokens): the edge checks a
    # server-to-server conversion postback against them.
    postback_keys: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    by_id: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # The pacing plan's shape: 24 hourly traffic weights of a campaign-local day (empty: flat).
    traffic_shape: tuple[float, ...] = ()
    # SHA-256 (hex) of the control plane's admin token: lets an admin ask an edge to explain an auction.
    admin_key: str = field(default="", repr=False)
    # placement -> its own reserve, micros per mille (a placement not named here: ``reserve_cpm_micros``).
    placement_reserves: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # The quality floor: a candidate whose predicted CTR is below it is not shown, whatever it bids (0: none).
    min_ctr: float = 0.0
    # The click model the control plane trained (None: rank by the creatives' prior CTRs).
    click_model: ClickModel | None = field(default=None, repr=False, compare=False)
    index: RetrievalIndex | None = field(default=None, repr=False, compare=False)  # derived from the postings
    columns: CampaignColumns | None = field(default=None, repr=False, compare=False)  # derived from campaigns
    # Behavioural segments some campaign targets (edge.audiences records only these; derived from postings).
    segments_in_use: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    # campaign id -> its frequency caps, for the campaigns that have any (derived from campaigns).
    caps_of: Mapping[str, tuple[FrequencyCap, ...]] = field(default_factory=lambda: MappingProxyType({}),
                                                             repr=False, compare=False)
    # The edge's per-snapshot cache of creative variants and their posteriors (replication.variants.pick):
    # it lives as long as the click model's arms it was computed from.
    variant_memo: PickCache = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", RetrievalIndex.build(len(self.campaigns), self.postings,
                                                                  self.unrestricted))
        if self.columns is None:
            object.__setattr__(self, "columns", CampaignColumns.build(self.campaigns))
        if not self.segments_in_use:
            object.__setattr__(self, "segments_in_use", frozenset(
                v for v in self.postings.get("interest", {}) if v.startswith((KEYWORD_PREFIX, RETARGETING_PREFIX))))
        if not self.caps_of:
            object.__setattr__(self, "caps_of", MappingProxyType(
                {c.campaign_id: c.frequency_caps for c in self.campaigns if c.frequency_caps}))

    def campaign(self, campaign_id: str) -> SnapshotCampaign | None:
        pos = self.by_id.get(campaign_id)
        return None if pos is None else self.campaigns[pos]

    def changed_since(self, previous: Snapshot | None) -> tuple[str, ...]:
        """The campaigns this snapshot brings new or at another revision than ``previous`` (all of them
        after none): their budget, bid or status may have changed."""
        if previous is None:
            return tuple(self.by_id)
        old, before = previous.by_id, previous.campaigns
        return tuple(c.campaign_id for c in self.campaigns
                     if (pos := old.get(c.campaign_id)) is None or before[pos].revision != c.revision)

    def removed_since(self, previous: Snapshot | None) -> tuple[str, ...]:
        """The campaigns ``previous`` had and this snapshot no longer has (ended, paused, deleted)."""
        return () if previous is None else tuple(sorted(previous.campaign_ids() - self.campaign_ids()))

    def campaign_ids(self) -> frozenset[str]:
        """Every campaign id, as a set built once per snapshot (in its columns' memo)."""
        assert self.columns is not None  # built with every snapshot
        return self.columns.memoized("campaign-ids", lambda: frozenset(self.by_id))


def build_snapshot(
    campaigns: Iterable[SnapshotCampaign], *, version: int, created_ms: int, reserve_cpm_micros: int,
    postback_keys: Mapping[str, Iterable[str]] | None = None, traffic_shape: Iterable[float] = (),
    click_model: ClickModel | None = None, admin_key: str = "", placement_reserves: Mapping[str, int] | None = None,
    min_ctr: float = 0.0,
) -> Snapshot:
    ordered = tuple(sorted(campaigns, key=lambda c: c.campaign_id))
    postings: dict[str, dict[str, set[int]]] = {d: {} for d in DIMENSIONS}
    unrestricted: dict[str, set[int]] = {d: set() for d in DIMENSIONS}
    for pos, campaign in enumerate(ordered):
        for dim in DIMENSIONS:
            values = campaign.values(dim)
            if not values:
                unrestricted[dim].add(pos)
            for value in values:
                postings[dim].setdefault(value, set()).add(pos)
    return Snapshot(
        version=version,
        created_ms=created_ms,
        reserve_cpm_micros=reserve_cpm_micros,
        campaigns=ordered,
        postings=MappingProxyType(
            {d: MappingProxyType({v: frozenset(p) for v, p in vals.items()}) for d, vals in postings.items()}
        ),
        unrestricted=MappingProxyType({d: frozenset(p) for d, p in unrestricted.items()}),
        postback_keys=_postback_keys(postback_keys or {}),
        by_id=_by_id(ordered),
        traffic_shape=_traffic_shape(list(traffic_shape)),
        click_model=click_model,
        admin_key=admin_key,
        placement_reserves=_placement_reserves(placement_reserves or {}),
        min_ctr=_min_ctr(min_ctr),
    )


def _placement_reserves(raw: Any) -> Mapping[str, int]:
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in raw.items()):
        raise SnapshotDecodeError("placement_reserves must map placement names to non-negative micros per mille")
    return MappingProxyType(dict(raw))


def _min_ctr(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw < 1:
        raise SnapshotDecodeError(f"min_ctr must be a number in [0, 1), not {raw!r}")
    return float(raw)


def _postback_keys(raw: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({adv: tuple(hashes) for adv, hashes in raw.items()})


def _by_id(campaigns: tuple[SnapshotCampaign, ...]) -> Mapping[str, int]:
    return MappingProxyType({c.campaign_id: pos for pos, c in enumerate(campaigns)})


class SnapshotDecodeError(ValueError):
    pass


def _campaign_to_wire(c: SnapshotCampaign) -> list:
    return [
        c.campaign_id, c.advertiser_id, c.revision, c.bid_type, c.max_bid_micros, c.daily_budget_micros,
        c.total_budget_micros, c.start_s, c.end_s, c.timezone, sorted(c.hours), sorted(c.countries),
        sorted(c.geos), sorted(c.devices), sorted(c.keywords), sorted(c.interests), sorted(c.placements),
        c.prior_cvr,
        [_creative_to_wire(k) for k in c.creatives],
        c.click_window_s, c.view_window_s, c.pacing, c.budget_mode,
        [[f.scope, f.max_impressions, f.window_s] for f in c.frequency_caps],
    ]


def _campaign_from_wire(w: list) -> SnapshotCampaign:
    return SnapshotCampaign(
        campaign_id=w[0], advertiser_id=w[1], revision=w[2], bid_type=w[3], max_bid_micros=w[4],
        daily_budget_micros=w[5], total_budget_micros=w[6], start_s=w[7], end_s=w[8], timezone=w[9],
        hours=frozenset(w[10]), countries=frozenset(w[11]), geos=frozenset(w[12]), devices=frozenset(w[13]),
        keywords=frozenset(w[14]), interests=frozenset(w[15]), placements=frozenset(w[16]), prior_cvr=w[17],
        creatives=tuple(_creative_from_wire(k) for k in w[18]),
        # Added later: a snapshot from an older builder has no windows and gets the defaults.
        click_window_s=w[19] if len(w) > 19 else DEFAULT_CLICK_WINDOW_S,
        view_window_s=w[20] if len(w) > 20 else DEFAULT_VIEW_WINDOW_S,
        pacing=w[21] if len(w) > 21 else "even",
        budget_mode=w[22] if len(w) > 22 else "allowance",
        frequency_caps=tuple(FrequencyCap(str(f[0]), int(f[1]), int(f[2])) for f in w[23]) if len(w) > 23 else (),
    )


def _creative_to_wire(k: SnapshotCreative) -> list:
    wire = [k.creative_id, k.format, k.headline, k.image_url, k.landing_url, k.cta, k.prior_ctr]
    # Only a creative with alternatives carries them: an edge from before them still reads the others.
    if any(k.alternatives):
        wire.append([list(a) for a in k.alternatives])
    return wire


def _creative_from_wire(k: list) -> SnapshotCreative:
    # Later items than this code knows are a newer builder's additions: ignored (edges may upgrade last).
    if len(k) < 8:  # no alternatives, or from a builder older than them
        return SnapshotCreative(*k)
    alternatives = k[7]
    if not isinstance(alternatives, list) or len(alternatives) != 3 or not all(
            isinstance(a, list) and len(a) <= MAX_ALTERNATIVES and all(isinstance(v, str) for v in a)
            for a in alternatives):
        raise SnapshotDecodeError(f"creative {k[0]!r}: alternatives must be 3 lists of at most "
                                  f"{MAX_ALTERNATIVES} strings")
    headlines, images, ctas = (tuple(a) for a in alternatives)
    return SnapshotCreative(*k[:7], alternatives=(headlines, images, ctas))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    body = msgpack.packb(
        {
            "version": snapshot.version,
            "created_ms": snapshot.created_ms,
            "reserve_cpm_micros": snapshot.reserve_cpm_micros,
            "campaigns": [_campaign_to_wire(c) for c in snapshot.campaigns],
            # The compiled index travels with the campaigns so every edge serves the same index the
            # builder made; positions refer to the sorted campaign list above.
            "postings": {d: {v: sorted(p) for v, p in vals.items()} for d, vals in snapshot.postings.items()},
            "unrestricted": {d: sorted(p) for d, p in snapshot.unrestricted.items()},
            "postback_keys": {adv: list(h) for adv, h in snapshot.postback_keys.items()},
            "traffic_shape": list(snapshot.traffic_shape),
            "click_model": _click_model_to_wire(snapshot.click_model),
            "admin_key": snapshot.admin_key,
            "placement_reserves": dict(snapshot.placement_reserves),
            "min_ctr": snapshot.min_ctr,
        },
        use_bin_type=True,
    )
    return msgpack.packb([MAGIC, SCHEMA_VERSION, hashlib.sha256(body).digest(), body], use_bin_type=True)


def decode_snapshot(data: bytes) -> Snapshot:
    try:
        magic, schema, digest, body = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise SnapshotDecodeError(f"not a snapshot envelope: {exc}") from exc
    if not isinstance(body, bytes) or not isinstance(digest, bytes):
        raise SnapshotDecodeError("snapshot envelope must carry a binary digest and body")
    if magic != MAGIC:
        raise SnapshotDecodeError(f"bad magic {magic!r}")
    if schema != SCHEMA_VERSION:
        raise SnapshotDecodeError(f"unsupported snapshot schema {schema!r}, this edge reads {SCHEMA_VERSION}")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotDecodeError("checksum mismatch")
    try:
        return _decode_body(body)
    except SnapshotDecodeError:
        raise
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:
        # A body with a valid checksum can still be malformed (a buggy or foreign builder): reject it the
        # same way, so the edge keeps serving its current snapshot.
        raise SnapshotDecodeError(f"malformed snapshot body: {exc!r}") from exc


def _decode_body(body: bytes) -> Snapshot:
    raw = msgpack.unpackb(body, raw=False, strict_map_key=False)
    campaigns = tuple(_campaign_from_wire(w) for w in raw["campaigns"])
    n = len(campaigns)
    for positions in [p for vals in raw["postings"].values() for p in vals.values()] + list(
        raw["unrestricted"].values()
    ):
        if any(not isinstance(i, int) or not 0 <= i < n for i in positions):
            raise SnapshotDecodeError("index refers to a campaign that is not in the snapshot")
    return Snapshot(
        version=raw["version"],
        created_ms=raw["created_ms"],
        reserve_cpm_micros=raw["reserve_cpm_micros"],
        campaigns=campaigns,
        postings=MappingProxyType(
            {d: MappingProxyType({v: frozenset(p) for v, p in vals.items()}) for d, vals in raw["postings"].items()}
        ),
        unrestricted=MappingProxyType({d: frozenset(p) for d, p in raw["unrestricted"].items()}),
        postback_keys=_postback_keys(raw.get("postback_keys", {})),
        by_id=_by_id(campaigns),
        traffic_shape=_traffic_shape(raw.get("traffic_shape", [])),
        click_model=_click_model_from_wire(raw.get("click_model")),
        admin_key=str(raw.get("admin_key", "")),
        placement_reserves=_placement_reserves(raw.get("placement_reserves", {})),
        min_ctr=_min_ctr(raw.get("min_ctr", 0.0)),
    )


def _click_model_to_wire(model: ClickModel | None) -> dict | None:
    """Sparse: only the nonzero weights (L1 keeps most at zero), as little-endian int32 and float32 bytes."""
    if model is None:
        return None
    idx = np.flatnonzero(model.weights)
    return {"version": model.version, "bits": model.bits, "idx": idx.astype("<i4").tobytes(),
            "w": model.weights[idx].astype("<f4").tobytes(), "impressions": dict(model.impressions),
            "arms": {cid: {seg: {v: list(c) for v, c in cells.items()} for seg, cells in by_segment.items()}
                     for cid, by_segment in model.arms.items()}}


def _click_model_from_wire(raw: object) -> ClickModel | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("idx"), bytes) or not isinstance(raw.get("w"), bytes):
        raise SnapshotDecodeError("click_model must carry idx and w as bytes")
    bits = raw.get("bits")
    if not isinstance(bits, int) or not 8 <= bits <= 24 or len(raw["idx"]) != len(raw["w"]) or len(raw["w"]) % 4:
        raise SnapshotDecodeError("click_model: bad bits or index/weight lengths")
    impressions = raw.get("impressions", {})
    if not isinstance(impressions, dict) or not all(isinstance(v, int) and v >= 0 for v in impressions.values()):
        raise SnapshotDecodeError("click_model: impressions must map creative ids to counts of at least 0")
    try:
        return ClickModel.from_sparse(int(raw.get("version", 0)), bits, np.frombuffer(raw["idx"], dtype="<i4"),
                                      np.frombuffer(raw["w"], dtype="<f4"), impressions,
                                      _arms_from_wire(raw.get("arms", {})))
    except ValueError as exc:
        raise SnapshotDecodeError(f"click_model: {exc}") from exc


def _arms_from_wire(raw: object) -> Arms:
    """creative id -> segment -> variant -> (impressions, clicks), with 0 <= clicks <= impressions."""
    bad = SnapshotDecodeError("click_model: arms must map creative -> segment -> variant -> [impressions, clicks]")
    if not isinstance(raw, dict):
        raise bad
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for cid, by_segment in raw.items():
        if not isinstance(by_segment, dict):
            raise bad
        for seg, cells in by_segment.items():
            if not isinstance(cells, dict):
                raise bad
            for variant, cell in cells.items():
                if not (isinstance(variant, str) and isinstance(cell, list) and len(cell) == 2
                        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in cell)
                        and 0 <= cell[1] <= cell[0] < float("inf")):
                    raise bad
                out.setdefault(str(cid), {}).setdefault(str(seg), {})[variant] = (float(cell[0]), float(cell[1]))
    return out


def _traffic_shape(raw: list) -> tuple[float, ...]:
    if raw and (len(raw) != 24 or any(not isinstance(w, int | float) or w < 0 for w in raw) or not any(raw)):
        raise SnapshotDecodeError("traffic_shape must be 24 non-negative hourly weights")
    return tuple(float(w) for w in raw)


def empty_snapshot(version: int = 0, created_ms: int = 0, reserve_cpm_micros: int = 0) -> Snapshot:
    return build_snapshot([], version=version, created_ms=created_ms, reserve_cpm_micros=reserve_cpm_micros)
