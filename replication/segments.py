"""Segment names shared by the control plane (which writes them into targeting) and the edge (which records
users into them). Pure."""

from __future__ import annotations

KEYWORD_PREFIX = "kw-"
RETARGETING_PREFIX = "rt-"


def retargeting_segment(advertiser_id: str, name: str) -> str:
    """An advertiser's own retargeting list: its id is part of the name, so only it can target the list."""
    return f"{RETARGETING_PREFIX}{advertiser_id}-{name}"


def owned_interest(advertiser_id: str, interest: str) -> str:
    """A campaign's targeting interest as the snapshot carries it: ``rt-<name>`` means the campaign's own
    advertiser's list ``<name>``; anything else is shared (a publisher's interest, a keyword segment)."""
    if interest.startswith(RETARGETING_PREFIX):
        return retargeting_segment(advertiser_id, interest[len(RETARGETING_PREFIX):])
    return interest
