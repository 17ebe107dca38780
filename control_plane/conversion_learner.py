"""Keeps the snapshot's conversion rates learned from clicks and conversions: the adapter around
``control_plane.cvr``.

Every ``every_s`` it counts, per CPA campaign, the valid clicks on its impressions of the last ``history_s``
that are at least ``label_delay_s`` old (a conversion comes minutes to days after the ad: a younger
impression would count as unconverted only because its conversion has not come yet; the default is the
default click window, seven days) and the billed conversions credited to those impressions, in the storage
executor (the store calls block), and hands the counts to the snapshot builder. Its next snapshot carries
each CPA campaign's rate (``control_plane.cvr.conversion_rate``) as ``prior_cvr``: what the edge turns a CPA
bid into eCPM with (``edge.auction.ecpm_micros``) and reserves a CPA win's expected cost by. The first round
waits until the builder has read the campaigns, as the click trainer's does.
"""

from __future__ import annotations

from typing import Any

from control_plane.cvr import Counts
from control_plane.learning import StoreLearner
from control_plane.periodic import every


class ConversionLearner(StoreLearner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # StoreLearner's
        super().__init__(*args, **kwargs)
        self.clicks = 0  # behind the current rates (GET /v1/admin/stats shows them)
        self.conversions = 0
        self.campaigns = 0  # with clicks

    async def refresh(self) -> dict[str, Counts]:
        end_ms = int((self._clock.now() - self.label_delay_s) * 1000)
        start_ms = end_ms - int(self.history_s * 1000)
        counts = await self._run_storage(self._reports.click_conversions, start_ms, end_ms)
        self.clicks = sum(c.clicks for c in counts.values())
        self.conversions = sum(c.conversions for c in counts.values())
        self.campaigns = len(counts)
        self._builder.set_conversion_counts(counts)
        return counts

    async def run(self) -> None:
        await self._builder.replayed()  # the rates are shrunk towards what the campaigns declare: read them first
        await every(self.every_s, self.refresh, "learning conversion rates failed; keeping the current ones")
