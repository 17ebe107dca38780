"""Shared factories for the unit tests: snapshot campaigns and creatives with sane defaults, and an edge worker's
state.

The factories are exposed as fixtures (test modules are imported by basename, so a helper module could
collide with another directory's); each returns a plain function so a test can build as many as it needs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pytest

from replication.snapshot import SnapshotCampaign, SnapshotCreative

if TYPE_CHECKING:
    from edge.state import EdgeState


def _creative(creative_id: str = "k1", *, format: str = "300x250", prior_ctr: float = 0.01,
              landing_url: str = "https://example.com/landing", **kw: Any) -> SnapshotCreative:
    fields: dict[str, Any] = {
        "headline": f"headline {creative_id}",
        "image_url": f"https://cdn.example.com/{creative_id}.png",
        "cta": "Learn more",
    }
    fields.update(kw)
    return SnapshotCreative(creative_id=creative_id, format=format, landing_url=landing_url, prior_ctr=prior_ctr,
                            **fields)


def _campaign(
    campaign_id: str = "c1",
    *,
    advertiser_id: str | None = None,
    bid_type: str = "cpm",
    max_bid_micros: int = 2_000_000,
    daily_budget_micros: int = 100_000_000,
    total_budget_micros: int = 1_000_000_000,
    start_s: int = 0,
    end_s: int = 0,
    timezone: str = "UTC",
    hours: Iterable[int] = (),
    countries: Iterable[str] = (),
    geos: Iterable[str] = (),
    devices: Iterable[str] = (),
    keywords: Iterable[str] = (),
    interests: Iterable[str] = (),
    placements: Iterable[str] = (),
    prior_cvr: float = 0.02,
    creatives: Iterable[SnapshotCreative] | None = None,
    revision: int = 1,
) -> SnapshotCampaign:
    return SnapshotCampaign(
        campaign_id=campaign_id,
        advertiser_id=advertiser_id if advertiser_id is not None else f"adv-{campaign_id}",
        revision=revision,
        bid_type=bid_type,
        max_bid_micros=max_bid_micros,
        daily_budget_micros=daily_budget_micros,
        total_budget_micros=total_budget_micros,
        start_s=start_s,
        end_s=end_s,
        timezone=timezone,
        hours=frozenset(hours),
        countries=frozenset(countries),
        geos=frozenset(geos),
        devices=frozenset(devices),
        keywords=frozenset(keywords),
        interests=frozenset(interests),
        placements=frozenset(placements),
        prior_cvr=prior_cvr,
        creatives=tuple(creatives) if creatives is not None else (_creative(f"{campaign_id}-k1"),),
    )


@pytest.fixture
def make_creative() -> Callable[..., SnapshotCreative]:
    return _creative


@pytest.fixture
def make_campaign() -> Callable[..., SnapshotCampaign]:
    return _campaign


def _edge_state() -> EdgeState:
    # Imported here: the pure-core tests that use only the snapshot factories need not load the edge's app.
    from edge.settings import EdgeSettings
    from edge.state import new_state

    settings = EdgeSettings.from_env({"ADSERVER_EDGE_REGION": "eu",
                                      "ADSERVER_EDGE_SIGNING_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode()})
    return new_state(settings)


@pytest.fixture
def make_edge_state() -> Callable[[], EdgeState]:
    """A fresh edge worker's state (region eu, one signing key), with no NATS connection and no snapshot."""
    return _edge_state
