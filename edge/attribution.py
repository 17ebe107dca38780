"""Which ad a conversion is credited to (pure): the last click within the campaign's click window, else the
last viewed impression within its view window.

The edge remembers, per advertiser and consenting user, only the last click and the last rendered impression
(``edge.touches``); this module decides between them for a conversion at ``now_s``, with each touch judged
by the window of the campaign it belongs to. It returns a reason instead of raising when nothing qualifies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Model(StrEnum):
    LAST_CLICK = "last_click"
    LAST_VIEW = "last_view"


class NoCredit(StrEnum):
    NO_TOUCH = "no_click_or_view_for_this_user"
    OUTSIDE_WINDOW = "last_click_and_view_outside_their_windows"
    CAMPAIGN_GONE = "campaign_no_longer_in_the_snapshot"


@dataclass(frozen=True, slots=True)
class Touch:
    ts_s: float
    claims: Mapping[str, Any]  # the signed ad's claims (imp, cmp, adv, bt, px, ...) as the beacon carried them


@dataclass(frozen=True, slots=True)
class Credit:
    model: Model
    touch: Touch


def attribute(now_s: float, last_click: Touch | None, last_view: Touch | None,
              windows: Callable[[str], tuple[int, int] | None]) -> Credit | NoCredit:
    """``windows(campaign_id)`` gives (click window s, view window s), or None for an unknown campaign."""
    if last_click is None and last_view is None:
        return NoCredit.NO_TOUCH
    gone = False
    for model, touch, which in ((Model.LAST_CLICK, last_click, 0), (Model.LAST_VIEW, last_view, 1)):
        if touch is None:
            continue
        found = windows(str(touch.claims.get("cmp", "")))
        if found is None:
            gone = True
            continue
        if 0 <= now_s - touch.ts_s <= found[which]:
            return Credit(model, touch)
    return NoCredit.CAMPAIGN_GONE if gone else NoCredit.OUTSIDE_WINDOW


def user_key(user_id: str) -> str:
    """The pseudonymous key a consenting user's touches and conversions are joined on: the publisher's or
    advertiser's user id is never stored or logged as given."""
    return hashlib.sha256(b"adserver-user\0" + user_id.encode()).hexdigest()[:24]
