"""Keeps the snapshot's conversion rates learned from clicks and conversions: the adapter around
``control_plane.cvr``.

Every ``every_s`` it counts each campaign's valid clicks of the last ``history_s`` that are at least
``label_delay_s`` old (a conversion comes minutes to days after its click; a younger click would count as
unconverted only because its conversion has not come yet), and how many of them converted, in the storage
executor (the store calls block); it shrinks them into rates (``control_plane.cvr.conversion_rates``) and
hands them to the snapshot builder, whose next snapshot carries them as the campaigns' ``prior_cvr``: the
conversion rate the edge turns a CPA bid into eCPM with (``edge.auction.ecpm_micros``) and reserves a CPA
win's expected cost by.
"""

from __future__ import annotations

from typing import Any

from control_plane.cvr import conversion_rates
from control_plane.learning import StoreLearner
from control_plane.periodic import every


class ConversionLearner(StoreLearner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # StoreLearner's
        super().__init__(*args, **kwargs)
        self.clicks = 0  # behind the current rates (GET /v1/admin/stats shows them)
        self.converted = 0
        self.campaigns = 0  # with a learned rate

    async def refresh(self) -> dict[str, float]:
        end_ms = int((self._clock.now() - self.label_delay_s) * 1000)
        start_ms = end_ms - int(self.history_s * 1000)
        counts = await self._run_storage(self._reports.click_conversions, start_ms, end_ms)
        declared = self._builder.declared_cvrs()
        rates = conversion_rates(counts, {c: adv for c, (adv, _) in declared.items()},
                                 {c: prior for c, (_, prior) in declared.items()})
        self.clicks = sum(c.clicks for c in counts.values())
        self.converted = sum(c.converted for c in counts.values())
        self.campaigns = len(rates)
        self._builder.set_conversion_rates(rates)
        return rates

    async def run(self) -> None:
        await every(self.every_s, self.refresh, "learning conversion rates failed; keeping the current ones")
