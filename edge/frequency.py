"""Frequency caps: at most N impressions per user of a campaign, or of each of its creatives, in a sliding
window. Pure: the store (``edge.profile_store``) keeps each user's recent impression times per campaign and
creative; this module names the fields, says how many times to keep, and decides what is capped.

Why timestamps and not counters: a cap is "3 per 24 h" in the advertiser's words, a sliding window. Keeping the
last N impression times per field answers it exactly (capped when the N-th most recent is inside the window)
with bounded memory (the control plane bounds N: ``control_plane.models.FREQUENCY_CAP_LIMITS``), where
fixed-window counters let a user see 2N across a window boundary.

Only consenting users have a user key (``edge.adrequest``): without one nothing is capped or remembered, and
the auction runs on contextual signals alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from replication.snapshot import FrequencyCap


@dataclass(frozen=True, slots=True)
class Capped:
    """What a user may not be shown now."""

    campaigns: frozenset[str] = frozenset()
    creatives: Mapping[str, frozenset[str]] = field(default_factory=dict)  # campaign id -> capped creative ids

    def __bool__(self) -> bool:
        return bool(self.campaigns or self.creatives)


NOTHING_CAPPED = Capped()


def campaign_field(campaign_id: str) -> str:
    return f"c:{campaign_id}"


def creative_field(campaign_id: str, creative_id: str) -> str:
    # The campaign id rides in the field so a creative's history finds its campaign's caps without an index.
    return f"k:{campaign_id}:{creative_id}"


def fields_to_record(campaign_id: str, creative_id: str,
                     caps: Sequence[FrequencyCap]) -> list[tuple[str, int, int]]:
    """(field, how many times to keep, how long the user's record must live) per scope the campaign caps."""
    out = []
    for scope, name in (("campaign", campaign_field(campaign_id)),
                        ("creative", creative_field(campaign_id, creative_id))):
        mine = [c for c in caps if c.scope == scope]
        if mine:
            out.append((name, max(c.max_impressions for c in mine), max(c.window_s for c in mine)))
    return out


def capped(history: Mapping[str, Sequence[float]], caps_of: Mapping[str, Sequence[FrequencyCap]],
           now_s: float) -> Capped:
    """The campaigns and creatives at a cap, from a user's history (field -> impression times) and the caps
    in force now (campaign id -> caps). History of a campaign that no longer caps, or of a field this
    version does not know, is ignored."""
    campaigns: set[str] = set()
    creatives: dict[str, set[str]] = {}
    for name, times in history.items():
        kind, _, rest = name.partition(":")
        if kind == "c":
            campaign_id, creative_id, scope = rest, "", "campaign"
        elif kind == "k":
            campaign_id, _, creative_id = rest.partition(":")
            scope = "creative"
        else:
            continue
        for cap in caps_of.get(campaign_id, ()):
            if cap.scope == scope and _count_since(times, now_s - cap.window_s) >= cap.max_impressions:
                if creative_id:
                    creatives.setdefault(campaign_id, set()).add(creative_id)
                else:
                    campaigns.add(campaign_id)
                break
    if not campaigns and not creatives:
        return NOTHING_CAPPED
    return Capped(frozenset(campaigns), {c: frozenset(k) for c, k in creatives.items()})


def _count_since(times: Iterable[float], since_s: float) -> int:
    return sum(1 for t in times if t > since_s)


def all_capped(caps_of: Mapping[str, Sequence[FrequencyCap]]) -> Capped:
    """Fail-closed without the store: every campaign that caps sits the auction out."""
    return Capped(frozenset(caps_of)) if caps_of else NOTHING_CAPPED


def appended(times: Sequence[float], now_s: float, keep: int) -> list[float]:
    """A field's history after one more impression: the newest ``keep`` times, oldest first. (The Redis
    adapter does the same in Lua; this is its twin's and the tests' definition.)"""
    return sorted([*times, now_s])[-keep:]
