"""Control-plane settings, from ``ADSERVER_CP_*`` (and the shared ``ADSERVER_NATS_URL``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.models import PLACEMENT_ID
from replication import settings as s
from replication.clock import Clock, parse_clock
from replication.subjects import check_token

PREFIX = "ADSERVER_"


def _regions(raw: str) -> tuple[str, ...]:
    regions = s.parse_list(raw)
    if not regions:
        raise ValueError("at least one region is required")
    for r in regions:
        check_token(r, "region")
    return regions


def _leaf_regions(raw: str) -> tuple[str, ...]:
    regions = s.parse_list(raw)
    for r in regions:
        check_token(r, "region")
    return regions


def _shape(raw: str) -> tuple[float, ...]:
    if not raw.strip():
        return ()
    weights = tuple(float(w) for w in s.parse_list(raw))
    if len(weights) != 24 or any(not 0 <= w < float("inf") for w in weights) or not any(weights):
        raise ValueError("must be 24 comma-separated non-negative hourly weights, not all zero")
    return weights


def _placement_reserves(raw: str) -> dict[str, int]:
    """``home=250000,sports=400000``: placement ids and their own reserves, micros per mille."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        placement, sep, micros = part.partition("=")
        placement = placement.strip()
        if not sep or not PLACEMENT_ID.fullmatch(placement):
            raise ValueError(f"{part!r}: must be <placement>=<micros per mille>, the placement 1-128 letters, "
                             "digits or _.:-")
        if placement in out:
            raise ValueError(f"placement {placement!r} is named twice")
        try:
            out[placement] = int(micros)
        except ValueError:
            raise ValueError(f"{part!r}: the reserve must be a whole number of micros per mille") from None
        if out[placement] < 0:
            raise ValueError(f"{part!r}: the reserve must be >= 0")
    return out


def _min_ctr(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < 1:
        raise ValueError("must be in [0, 1)")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


SPECS = [
    s.Spec("NATS_URL", s.parse_nonempty, "nats://127.0.0.1:4222", "NATS server URL"),
    s.Spec("CP_REGIONS", _regions, "eu,us", "regions to publish snapshots for, comma-separated"),
    s.Spec("CLOCK", parse_clock, "",
           "campaign clock: empty is real time; SPEED@REAL:VIRTUAL compresses days (the simulator)"),
    s.Spec("CP_LEAF_REGIONS", _leaf_regions, "",
           "regions whose events stream lives on their own leaf node, in the JetStream domain named after the "
           "region (the hub sources it); empty: every region's stream is on this NATS server"),
    s.Spec("CP_STORE_URL", s.parse_nonempty, "var/chdb",
           "ClickHouse: a directory or chdb:///abs/dir (embedded chdb), or http(s)://user:pass@host:8123/db (server)"),
    s.Spec("CP_EMBEDDED_COLLECTOR", s.parse_bool, "true",
           "run the collector in this process (required with chdb: one process owns its data dir)"),
    s.Spec("CP_ADMIN_TOKEN", s.parse_str, "", "bearer token for /v1/admin/*; empty disables them", secret=True),
    s.Spec("CP_RESERVE_CPM_MICROS", s.parse_int(0), "100000", "auction reserve price, micros per mille"),
    s.Spec("CP_PLACEMENT_RESERVES", _placement_reserves, "",
           "placements with a reserve of their own: <placement>=<micros per mille>, comma-separated"),
    s.Spec("CP_MIN_CTR", _min_ctr, "0",
           "quality floor: an ad whose predicted click-through rate is below it is not shown (0: none)"),
    s.Spec("CP_MAX_PRIOR_CTR", _fraction, "0.05",
           "the most a creative's declared prior click-through rate counts for in the auction"),
    s.Spec("CP_MAX_PRIOR_CVR", _fraction, "0.2",
           "the most a campaign's declared prior conversion rate counts for in the auction"),
    s.Spec("CP_GRANT_SLICE", _fraction, "0.05", "largest budget slice one edge process gets, as a fraction"),
    s.Spec("CP_LEASE_S", s.parse_float(1), "300",
           "budget allowance lease, campaign-clock seconds: a silent holder's unspent allowance is re-granted "
           "only after its lease (plus the reservation TTL) has run out"),
    s.Spec("CP_TRAFFIC_SHAPE", _shape, "",
           "24 hourly traffic weights of a campaign-local day: the prior of the pacing plan's shape, which is "
           "learned from past days' decisions (empty: flat)"),
    s.Spec("CP_SHAPE_DAYS", s.parse_int(1, 366), "7", "complete past UTC days the traffic shape is learned from"),
    s.Spec("CP_SHAPE_PRIOR_WEIGHT", s.parse_float(0), "10000",
           "how many decisions the prior shape is worth against the observed ones"),
    s.Spec("CP_SHAPE_REFRESH_S", s.parse_float(1), "600", "seconds between traffic-shape refreshes"),
    s.Spec("CP_CTR_TRAIN_EVERY_S", s.parse_float(1), "60", "seconds between click-model training rounds"),
    s.Spec("CP_CTR_LABEL_DELAY_S", s.parse_float(0), "600",
           "how old an impression must be before it is learned as clicked or not (later clicks are missed)"),
    s.Spec("CP_CTR_HISTORY_S", s.parse_float(0), "86400", "impressions a starting control plane learns from first"),
    s.Spec("CP_CVR_EVERY_S", s.parse_float(1), "300", "seconds between learning the campaigns' conversion rates"),
    s.Spec("CP_CVR_LABEL_DELAY_S", s.parse_float(0), "604800",
           "how old an impression must be before its conversions count (later ones are missed)"),
    s.Spec("CP_CVR_HISTORY_S", s.parse_float(1), "2592000", "how far back clicks are counted for conversion rates"),
    s.Spec("CP_CTR_DECISION_LOOKBACK_S", s.parse_float(1), "3600",
           "how long before its impression a decision event may have been made (at least the edges' "
           "EDGE_IMPRESSION_TTL_S): the click model reads an impression's site and segments from it"),
    s.Spec("CP_CTR_MIN_IMPRESSIONS", s.parse_int(1, 10**9), "10000",
           "impressions the click model learns from before it ships (until then the edges rank on declared priors)"),
    s.Spec("CP_ALLOW_BASELINES", s.parse_bool, "false",
           "accept budget_mode=counter, the overspending research baseline (the simulator's negative control)"),
    s.Spec("CP_MAX_BODY_BYTES", s.parse_int(1024, 10_000_000), "65536", "largest request body accepted"),
]


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    nats_url: str
    cp_regions: tuple[str, ...]
    clock: Clock
    cp_leaf_regions: tuple[str, ...]
    cp_store_url: str
    cp_embedded_collector: bool
    cp_admin_token: str
    cp_reserve_cpm_micros: int
    cp_placement_reserves: dict[str, int]
    cp_min_ctr: float
    cp_max_prior_ctr: float
    cp_max_prior_cvr: float
    cp_grant_slice: float
    cp_lease_s: float
    cp_traffic_shape: tuple[float, ...]
    cp_shape_days: int
    cp_shape_prior_weight: float
    cp_shape_refresh_s: float
    cp_ctr_train_every_s: float
    cp_ctr_label_delay_s: float
    cp_ctr_history_s: float
    cp_ctr_min_impressions: int
    cp_ctr_decision_lookback_s: float
    cp_cvr_every_s: float
    cp_cvr_label_delay_s: float
    cp_cvr_history_s: float
    cp_allow_baselines: bool
    cp_max_body_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ControlPlaneSettings:
        loaded = s.load(PREFIX, SPECS, os.environ if env is None else env)
        unknown = sorted(set(loaded["cp_leaf_regions"]) - set(loaded["cp_regions"]))
        if unknown:
            raise s.SettingsError([f"ADSERVER_CP_LEAF_REGIONS: {', '.join(unknown)} not in ADSERVER_CP_REGIONS"])
        if loaded["cp_min_ctr"] >= loaded["cp_max_prior_ctr"]:
            # Until a click model ships every ad is predicted at its capped prior: a floor there would leave nothing.
            raise s.SettingsError([f"ADSERVER_CP_MIN_CTR={loaded['cp_min_ctr']}: must be below "
                                   f"ADSERVER_CP_MAX_PRIOR_CTR={loaded['cp_max_prior_ctr']}"])
        return cls(**loaded)

    def __repr__(self) -> str:  # never print the admin token
        return f"ControlPlaneSettings(regions={self.cp_regions}, store={self.cp_store_url.split('@')[-1]})"
