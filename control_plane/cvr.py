"""Learned conversion rates: how many billed conversions a CPA campaign's click brings, for CPA eCPM (bid x pCTR
x pCVR) and the cost a CPA win reserves (``edge.auction.expected_cost``). Pure.

What is counted is what a CPA campaign pays for: every billed conversion credited to one of its impressions
(several per click where the advertiser's postbacks name several orders; a conversion credited to an ad that
was only seen, by view-through attribution), per valid click on its impressions. Only CPA campaigns count:
their conversions cost them, so an advertiser cannot raise its rate with conversions it does not pay for
(a CPC campaign's pixel, say).

Conversions are rare (a few per hundred clicks), so a campaign's own rate is noise until it has had many
clicks. Each campaign's rate is therefore shrunk, Beta-binomial style, towards its advertiser's rate, and the
advertiser's towards the campaign's declared prior (capped by the control plane, ``CP_MAX_PRIOR_CVR``): with
``n`` clicks and ``k`` conversions, ``(k + K m) / (n + K)`` where ``m`` is the level above and ``K``
(``PRIOR_CLICKS``) how many clicks the level above is worth. A new campaign of a known advertiser starts at
the advertiser's rate, not at whatever it declares; an advertiser nobody has clicked yet at its declared
prior. The declared prior is a claim (and often optimistic: declaring more makes a CPA bid rank higher), the
data decides once there is enough of it.

The counts are of impressions old enough for their conversions to have come (``control_plane.conversion_learner``'s
label delay); a conversion later than that is missed, so the rates lean low by the share of conversions that
take longer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRIOR_CLICKS = 50.0


@dataclass(frozen=True, slots=True)
class Counts:
    clicks: int
    conversions: int  # billed, credited to the same impressions


NONE = Counts(0, 0)


def by_advertiser(counts: Mapping[str, Counts], advertiser_of: Mapping[str, str]) -> dict[str, Counts]:
    """Campaign counts summed per advertiser (campaigns ``advertiser_of`` does not know are left out)."""
    totals: dict[str, tuple[int, int]] = {}
    for campaign_id, c in counts.items():
        advertiser = advertiser_of.get(campaign_id)
        if advertiser is not None:
            clicks, conversions = totals.get(advertiser, (0, 0))
            totals[advertiser] = (clicks + c.clicks, conversions + c.conversions)
    return {a: Counts(*t) for a, t in totals.items()}


def conversion_rate(own: Counts, advertiser: Counts, declared: float) -> float:
    """A campaign's rate from its own counts and its advertiser's (its own among them), shrunk towards its
    declared prior; the declared prior itself while the advertiser has had no click."""
    if not advertiser.clicks:
        return declared
    level = (advertiser.conversions + PRIOR_CLICKS * declared) / (advertiser.clicks + PRIOR_CLICKS)
    return (own.conversions + PRIOR_CLICKS * level) / (own.clicks + PRIOR_CLICKS)
