"""Creative optimization: a creative assembled from components, and per-segment Thompson sampling over them.

A creative may name alternatives for its headline, image and call to action (up to ``MAX_ALTERNATIVES``
each, besides its own). Every combination is a *variant*, keyed "h.i.c" by the indexes of its parts (0 is the
creative's own value, so "0.0.0" is the creative as written). When the auction has picked a creative, the
edge picks its variant by Thompson sampling: for each variant draw a click-through rate from its Beta
posterior and show the best draw. Arms are learned per *segment* (the device class: a layout that wins on a
phone can lose on a desktop, the device is known without consent, and there are few of them, so every
segment's arms get data quickly), with a pooled prior: a variant's evidence from the other segments counts
as up to ``POOL_WEIGHT`` impressions of prior in this one, and the creative's prior CTR as ``PRIOR_WEIGHT``
more (both small; see there). A new segment therefore starts from what the others learned, and its own clicks take over.

The counts come from the control plane (``control_plane.click_trainer`` tallies valid impressions and clicks
per creative, segment and variant from ClickHouse, discounted by ``HALF_LIFE_S`` so a tired headline can lose
its lead) and ride in the snapshot with the click model. Pure: the random generator is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Protocol

import numpy as np

COMPONENTS = ("headline", "image_url", "cta")
MAX_ALTERNATIVES = 3  # per component, besides the creative's own: at most 4 x 4 x 4 = 64 variants
MAX_VARIANT_KEY = 8  # "3.3.3" is 5 characters; an event's variant longer than this is forged
# Impressions' worth of belief in the creative's prior CTR, and at most in the other segments' evidence.
# Both are small on purpose: segments can truly disagree (phone users click one headline, desktop users the
# other), so the pool only starts a new segment off and a segment's own few hundred impressions outweigh it.
PRIOR_WEIGHT = 30.0
POOL_WEIGHT = 30.0
PART_WEIGHT = 30.0  # impressions' worth of the creative's CTR in a part's (one headline's, ...) lift
VARIANT_WEIGHT = 100.0  # impressions' worth of the parts' product in a variant's own posterior
HALF_LIFE_S = 3 * 86_400.0  # old impressions and clicks fade: the world (and the audience's fatigue) moves
FORGOTTEN = 0.5  # impressions: a creative whose every cell has decayed below this is dropped from the tally
ALL_SEGMENTS = "*"

# creative id -> segment -> variant key -> (impressions, clicks); counts are floats once discounted.
Arms = Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]]


class Composable(Protocol):
    creative_id: str
    headline: str
    image_url: str
    cta: str
    prior_ctr: float
    alternatives: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    headline: str
    image_url: str
    cta: str


def variants(creative: Composable) -> tuple[Variant, ...]:
    """Every combination of the creative's components, its own first ("0.0.0")."""
    options = [(creative.headline, *creative.alternatives[0]), (creative.image_url, *creative.alternatives[1]),
               (creative.cta, *creative.alternatives[2])]
    return tuple(
        Variant(f"{h}.{i}.{c}", options[0][h], options[1][i], options[2][c])
        for h, i, c in product(*(range(len(o)) for o in options))
    )


def segment_of(device: str) -> str:
    return device or "unknown"


def key_parts(key: str) -> tuple[int, int, int]:
    """A variant key's indexes: of its headline, of its image, of its call to action."""
    h, i, c = (int(x) for x in key.split("."))
    return h, i, c


def _parts(options: Sequence[Variant]) -> tuple[np.ndarray, ...]:
    """Per part, each variant's index of it (as arrays, for counting evidence per part)."""
    keys = np.array([key_parts(v.key) for v in options], dtype=np.intp)
    return keys[:, 0], keys[:, 1], keys[:, 2]


def _column(cells: Mapping[str, tuple[float, float]], options: Sequence[Variant], index: int) -> np.ndarray:
    """Impressions (``index`` 0) or clicks (1) of each variant in one segment's cells, 0 where it has none."""
    return np.fromiter((cells.get(v.key, (0.0, 0.0))[index] for v in options), dtype=np.float64, count=len(options))


def posterior(creative: Composable, options: Sequence[Variant],
              arms: Mapping[str, Mapping[str, tuple[float, float]]], segment: str) -> tuple[np.ndarray, np.ndarray]:
    """Each variant's Beta(alpha, beta) posterior CTR in ``segment``.

    The evidence is the segment's own impressions and clicks plus the other segments', the latter capped at
    ``POOL_WEIGHT`` impressions' worth per variant. The prior mean is factorized: the creative's CTR times the
    lift of the variant's headline, of its image and of its call to action, each lift learned from every
    variant sharing that part (a headline is judged on all the images it was shown with). 24 variants thus
    learn from 9 parts' evidence instead of one variant's each, and a variant's own data (``VARIANT_WEIGHT``)
    corrects the product where parts interact."""
    n = len(options)
    if not arms:  # no data yet: every variant at the creative's prior (what the general case gives, cheaply)
        return np.full(n, creative.prior_ctr * VARIANT_WEIGHT), np.full(n, (1 - creative.prior_ctr) * VARIANT_WEIGHT)
    pooled = arms.get(ALL_SEGMENTS, {})
    own = arms.get(segment, {})
    imps_all, clicks_all = _column(pooled, options, 0), _column(pooled, options, 1)
    imps = _column(own, options, 0)
    clicks = np.minimum(_column(own, options, 1), imps)
    other_imps = np.maximum(imps_all - imps, 0.0)
    other_clicks = np.clip(clicks_all - clicks, 0.0, other_imps)
    scale = np.minimum(1.0, POOL_WEIGHT / np.maximum(other_imps, 1.0))
    e_imps = imps + other_imps * scale
    e_clicks = clicks + other_clicks * scale
    base = (creative.prior_ctr * PRIOR_WEIGHT + e_clicks.sum()) / (PRIOR_WEIGHT + e_imps.sum())
    mean = np.full(n, base)
    for index in _parts(options):
        part_imps = np.bincount(index, weights=e_imps)
        part_clicks = np.bincount(index, weights=e_clicks)
        mean *= ((base * PART_WEIGHT + part_clicks) / (PART_WEIGHT + part_imps) / base)[index]
    mean = np.clip(mean, 1e-6, 0.999)
    return mean * VARIANT_WEIGHT + e_clicks, (1.0 - mean) * VARIANT_WEIGHT + (e_imps - e_clicks)


def draw(options: Sequence[Variant], alpha: np.ndarray, beta: np.ndarray, rng: np.random.Generator) -> Variant:
    """Thompson sampling: one draw from each variant's posterior CTR; the best draw is shown."""
    return options[int(np.argmax(rng.beta(alpha, beta)))]


def choose(creative: Composable, options: Sequence[Variant], arms: Mapping[str, Mapping[str, tuple[float, float]]],
           segment: str, rng: np.random.Generator) -> Variant:
    return draw(options, *posterior(creative, options, arms, segment), rng)


# What ``pick`` keeps per (creative id, segment): the variants and their posterior.
PickCache = dict[tuple[str, str], tuple[tuple[Variant, ...], np.ndarray, np.ndarray]]


def pick(creative: Composable, arms: Arms, segment: str, rng: np.random.Generator,
         cache: PickCache) -> Variant | None:
    """The variant to show of a creative the auction chose; None when it has no alternatives. ``cache`` must
    live exactly as long as ``arms`` (the edge keeps one per snapshot): building a creative's variants and
    their posterior costs several times a draw from the cached posterior (``adserver bench --only variants``
    prints both)."""
    if not any(creative.alternatives):
        return None
    key = (creative.creative_id, segment)
    hit = cache.get(key)
    if hit is None:
        options = variants(creative)
        hit = cache[key] = (options, *posterior(creative, options, arms.get(creative.creative_id, {}), segment))
    return draw(*hit, rng)


class Tally:
    """Discounted impressions and clicks per creative, segment and variant: what the trainer accumulates
    from labelled impressions and exports as ``Arms``. Bounded by the creatives' variants x segments."""

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self.counts: dict[str, dict[str, dict[str, list[float]]]] = {}
        self._at_ms: int | None = None

    def add(self, creative_id: str, device: str, variant: str, clicked: bool, ts_ms: int) -> None:
        """One valid impression (in time order); a variant-less impression (plain creative) is not tallied."""
        if not variant:
            return
        if self._at_ms is None:
            self._at_ms = ts_ms
        elif ts_ms > self._at_ms:
            factor = 0.5 ** ((ts_ms - self._at_ms) / 1000 / self.half_life_s)
            # Decay only once it is worth a pass over the counts; the clock stays put until then, so many
            # small gaps add up instead of each being rounded away.
            if factor < 0.999:
                self._decay(factor)
                self._at_ms = ts_ms
        by_segment = self.counts.setdefault(creative_id, {})
        for segment in (segment_of(device), ALL_SEGMENTS):
            cell = by_segment.setdefault(segment, {}).setdefault(variant, [0.0, 0.0])
            cell[0] += 1.0
            cell[1] += float(clicked)

    def _decay(self, factor: float) -> None:
        faded: list[str] = []
        for creative_id, by_segment in self.counts.items():
            for cells in by_segment.values():
                for cell in cells.values():
                    cell[0] *= factor
                    cell[1] *= factor
            # A creative whose evidence has faded to almost nothing (not shown for weeks) is forgotten: the
            # tally stays bounded by the creatives still being shown.
            if all(cell[0] < FORGOTTEN for cells in by_segment.values() for cell in cells.values()):
                faded.append(creative_id)
        for creative_id in faded:
            del self.counts[creative_id]

    def export(self) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
        return {cid: {seg: {v: (round(c[0], 3), round(c[1], 3)) for v, c in cells.items()}
                      for seg, cells in by_segment.items()}
                for cid, by_segment in self.counts.items()}
