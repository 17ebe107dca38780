"""Learned conversion rates: what share of a campaign's clicks convert, for CPA eCPM (bid x pCTR x pCVR). Pure.

Conversions are rare (a few per hundred clicks), so a campaign's own rate is noise until it has had many
clicks. Each campaign's rate is therefore shrunk, Beta-binomial style, towards its advertiser's rate, and the
advertiser's towards the campaign's declared prior (capped by the control plane, ``CP_MAX_PRIOR_CVR``): with
``n`` clicks and ``k`` of them converted, ``(k + K m) / (n + K)`` where ``m`` is the level above and ``K``
(``PRIOR_CLICKS``) how many clicks the level above is worth. A new campaign of a known advertiser starts at
the advertiser's rate, not at whatever it declares; an advertiser nobody has clicked yet at its declared
prior. The declared prior is a claim (and often optimistic: declaring more makes a CPA bid rank higher), the
data decides once there is enough of it.

The counts are of clicks whose conversion had time to arrive (``control_plane.conversion_learner``'s label
delay); a conversion later than that is missed, so the rates lean low by the share of conversions that
take longer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRIOR_CLICKS = 50.0


@dataclass(frozen=True, slots=True)
class Counts:
    clicks: int
    converted: int  # of those clicks, how many converted (at least once)


def conversion_rates(counts: Mapping[str, Counts], advertiser_of: Mapping[str, str],
                     declared: Mapping[str, float]) -> dict[str, float]:
    """Each campaign of ``declared`` (campaign id -> its declared, capped, prior) whose advertiser has clicks in
    ``counts`` (campaign id -> its clicks and conversions): its shrunk rate. Campaigns of advertisers without
    clicks are left out: they keep their declared prior."""
    by_advertiser: dict[str, list[int]] = {}
    for campaign_id, c in counts.items():
        advertiser = advertiser_of.get(campaign_id)
        if advertiser is not None:
            total = by_advertiser.setdefault(advertiser, [0, 0])
            total[0] += c.clicks
            total[1] += c.converted
    rates: dict[str, float] = {}
    for campaign_id, prior in declared.items():
        advertiser = by_advertiser.get(advertiser_of.get(campaign_id, ""))
        if advertiser is None or not advertiser[0]:
            continue
        level = (advertiser[1] + PRIOR_CLICKS * prior) / (advertiser[0] + PRIOR_CLICKS)
        own = counts.get(campaign_id, Counts(0, 0))
        rates[campaign_id] = (own.converted + PRIOR_CLICKS * level) / (own.clicks + PRIOR_CLICKS)
    return rates
