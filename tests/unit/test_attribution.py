"""Conversion attribution (pure): last click within its campaign's click window, else last view within its
view window; and the time-decay reference arithmetic the report's SQL is tested against."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.attribution import Conversion, time_decay_credit
from control_plane.attribution import Touch as DecayTouch
from edge.attribution import Credit, Model, NoCredit, Touch, attribute, user_key

H = 3600
WINDOWS = {"c7d": (7 * 24 * H, 24 * H), "noview": (H, 0)}


def touch(ts: float, campaign: str = "c7d") -> Touch:
    return Touch(ts, {"cmp": campaign, "imp": f"i{ts}"})


@pytest.mark.parametrize(("click", "view", "now", "expected"), [
    (touch(0), touch(10), 100, Model.LAST_CLICK),  # a click beats a later view
    (touch(0), None, 7 * 24 * H, Model.LAST_CLICK),  # the window's last second still counts
    (touch(0), touch(0), 7 * 24 * H + 1, NoCredit.OUTSIDE_WINDOW),  # click too old, view older than a day
    (touch(0), touch(6 * 24 * H + 1), 7 * 24 * H + 1, Model.LAST_VIEW),  # click expired, view exactly a day old
    (touch(-1), touch(7 * 24 * H), 8 * 24 * H, Model.LAST_VIEW),  # click expired: the view inside a day
    (None, touch(0, "noview"), 1, NoCredit.OUTSIDE_WINDOW),  # view-through off for this campaign
    (None, touch(0, "gone"), 1, NoCredit.CAMPAIGN_GONE),
    (None, None, 1, NoCredit.NO_TOUCH),
    (touch(50), None, 10, NoCredit.OUTSIDE_WINDOW),  # a touch after the conversion never earns credit
])
def test_last_click_else_last_view(click: Touch | None, view: Touch | None, now: float,
                                   expected: Model | NoCredit) -> None:
    got = attribute(now, click, view, WINDOWS.get)
    assert (got.model if isinstance(got, Credit) else got) == expected


def test_user_keys_are_stable_pseudonyms() -> None:
    assert user_key("alice") == user_key("alice") != user_key("bob")
    assert "alice" not in user_key("alice") and len(user_key("alice")) == 24


_touches = st.lists(st.tuples(st.sampled_from("uvw"), st.integers(0, 10_000), st.sampled_from(["a", "b", "c"])),
                    max_size=30)
_conversions = st.lists(st.tuples(st.sampled_from("uvwx"), st.integers(0, 10_000), st.integers(0, 10**9)),
                        max_size=10)


@given(_touches, _conversions, st.integers(1, 5000), st.integers(1, 20_000))
def test_time_decay_hands_out_one_unit_per_reachable_conversion(touches, conversions, half_life, lookback) -> None:
    ts = [DecayTouch(u, t, c) for u, t, c in touches]
    cs = [Conversion(u, t, v) for u, t, v in conversions]
    credit = time_decay_credit(cs, ts, half_life_ms=half_life, lookback_ms=lookback)
    reachable = [c for c in cs if any(t.user_key == c.user_key and c.ts_ms - lookback <= t.ts_ms <= c.ts_ms
                                      for t in ts)]
    assert sum(n for n, _ in credit.values()) == pytest.approx(len(reachable))
    assert sum(v for _, v in credit.values()) == pytest.approx(sum(c.value_micros for c in reachable))
    assert all(n >= 0 for n, _ in credit.values())


def test_time_decay_weights_halve_per_half_life() -> None:
    credit = time_decay_credit([Conversion("u", 2000, 300)], [DecayTouch("u", 0, "old"), DecayTouch("u", 1000, "new")],
                               half_life_ms=1000, lookback_ms=5000)
    assert credit["new"][0] == pytest.approx(2 / 3) and credit["old"][0] == pytest.approx(1 / 3)
    assert credit["new"][1] == pytest.approx(200)
