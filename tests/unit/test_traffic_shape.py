"""control_plane/traffic.py: the pacing shape learned from past days' hourly decisions."""

from __future__ import annotations

import pytest

from control_plane.traffic import learning_window, local_hour_counts
from replication.calendar import utc_offset_h
from replication.hourly import blend_hourly

DAY_MS = 86_400_000


def test_the_window_is_the_complete_utc_days_before_today() -> None:
    now_s = 1_704_103_200 + 3_600 * 5 + 17  # 2024-01-01 15:00:17 UTC
    start, end = learning_window(now_s, 7)
    assert end == 1_704_067_200_000  # midnight 2024-01-01: today's half-seen hours are left out
    assert end - start == 7 * DAY_MS
    with pytest.raises(ValueError, match="days"):
        learning_window(now_s, 0)


def test_counts_move_into_each_campaigns_local_hours() -> None:
    offsets = {"berlin": 1.0, "delhi": 5.5, "ny": -5.0}
    rows = [("berlin", 10, 100), ("delhi", 10, 100), ("ny", 2, 40), ("gone", 7, 9)]
    counts = local_hour_counts(rows, offsets.get)
    assert counts[11] == 100  # 10:00 UTC is 11:00 in Berlin
    assert counts[15] == 50 and counts[16] == 50  # and 15:30 in Delhi: half of the hour in each local hour
    assert counts[21] == 40  # 02:00 UTC is 21:00 the day before in New York
    assert counts[7] == 9  # a campaign no longer known counts in UTC hours
    assert sum(counts) == 249
    with pytest.raises(ValueError, match="bad hourly row"):
        local_hour_counts([("x", 24, 1)], offsets.get)


def test_the_prior_rules_until_the_data_outgrows_it() -> None:
    prior = [1.0] * 12 + [3.0] * 12
    assert blend_hourly([0.0] * 24, prior, prior_weight=1_000) == pytest.approx([1 / 48] * 12 + [3 / 48] * 12, abs=1e-6)
    evening = [0.0] * 24
    evening[20] = 1_000_000
    shape = blend_hourly(evening, prior, prior_weight=1_000)
    assert shape[20] > 0.99 and sum(shape) == pytest.approx(1, abs=1e-4)
    assert blend_hourly([0.0] * 24, (), prior_weight=5) == pytest.approx([1 / 24] * 24, abs=1e-6)  # no prior: flat
    with pytest.raises(ValueError, match="nothing to learn"):
        blend_hourly([0.0] * 24, prior, prior_weight=0)
    with pytest.raises(ValueError, match="24"):
        blend_hourly([1.0] * 23, prior, prior_weight=1)


def test_utc_offsets_follow_the_zone_and_its_daylight_saving() -> None:
    winter, summer = 1_704_103_200, 1_719_835_200  # 2024-01-01, 2024-07-01
    assert utc_offset_h(winter, "Europe/Berlin") == 1 and utc_offset_h(summer, "Europe/Berlin") == 2
    assert utc_offset_h(winter, "Asia/Kolkata") == 5.5
    assert utc_offset_h(summer, "America/New_York") == -4
