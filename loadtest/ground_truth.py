"""A hidden true click model for synthetic traffic: who would click what, where. Pure and seeded.

The probability that an impression is clicked depends on the creative, its campaign, the placement and the
site it is on, the device, the hour, the user's segments, and on interactions (a campaign that does well on
some placements and badly on others, or on one device; an advertiser whose ads the readers of one segment
click far more, as a retargeting list's do): the structure a real click model has to discover. The learner
never sees these numbers, only clicks drawn from them, so how close its predictions come measures it
(``adserver bench --only pctr``).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from functools import lru_cache

DEVICES = ("desktop", "mobile", "tablet")
COUNTRIES = tuple(f"C{i:02d}" for i in range(20))
SEGMENTS = tuple(f"kw-topic{i}" for i in range(20))
SITES = 60
AFFINITY_SHARE = 0.1  # of (advertiser, segment) pairs whose readers click the advertiser's ads far more
AFFINITY = 1.2  # logit: about 3x the CTR


@lru_cache(maxsize=1 << 20)
def _normal(seed: int, *key: object, sigma: float) -> float:
    """A fixed N(0, sigma) draw per key: effects exist for every combination without a table of them all."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little")).gauss(0.0, sigma)


@dataclass(frozen=True, slots=True)
class Ad:
    campaign_id: str
    creative_id: str
    advertiser_id: str
    bid_type: str  # "cpm" | "cpc"
    bid_micros: int  # per thousand impressions (CPM) or per click (CPC)


def _uniform(seed: int, *key: object) -> float:
    """A fixed U(0, 1) draw per key."""
    digest = hashlib.blake2b(repr((seed, "u", *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass(frozen=True, slots=True)
class Context:
    placement: str
    country: str
    device: str
    hour: int
    site: str = ""
    segments: tuple[str, ...] = ()  # freshest first, as the edge reads a profile's


class TrueClickModel:
    def __init__(self, seed: int = 1, *, campaigns: int = 300, creatives_per_campaign: int = 2,
                 placements: int = 400, base_ctr: float = 0.01) -> None:
        self.seed = seed
        self.base_ctr = base_ctr
        rng = random.Random(seed)
        self.placements = tuple(f"p{i}" for i in range(placements))
        self.base = math.log(base_ctr / (1 - base_ctr))
        self.ads: list[Ad] = []
        for c in range(campaigns):
            bid_type = "cpc" if rng.random() < 0.5 else "cpm"
            bid = rng.randrange(200_000, 2_000_000) if bid_type == "cpc" else rng.randrange(500_000, 10_000_000)
            for k in range(creatives_per_campaign):
                self.ads.append(Ad(f"c{c}", f"c{c}-k{k}", f"a{c // 2}", bid_type, bid))

    def logit(self, ad: Ad, ctx: Context) -> float:
        s = self.seed
        return (self.base
                + _normal(s, "cr", ad.creative_id, sigma=0.5)
                + _normal(s, "cm", ad.campaign_id, sigma=0.8)
                + _normal(s, "pl", ctx.placement, sigma=0.6)
                + _normal(s, "site", ctx.site, sigma=0.5)
                + _normal(s, "dev", ctx.device, sigma=0.3)
                + 0.3 * math.sin(2 * math.pi * ctx.hour / 24)
                + _normal(s, "cm-pl", ad.campaign_id, ctx.placement, sigma=0.6)
                + _normal(s, "cm-dev", ad.campaign_id, ctx.device, sigma=0.5)
                + sum(_normal(s, "seg", g, sigma=0.3) + self.affinity(ad.advertiser_id, g) for g in ctx.segments))

    def declared_prior(self, ad: Ad) -> float:
        """The CTR its advertiser declares for the creative: its own and its campaign's effect, known roughly
        (a fixed N(0, 0.6) error on the logit) and told optimistically (+0.4: half again)."""
        s = self.seed
        x = (self.base + _normal(s, "cr", ad.creative_id, sigma=0.5) + _normal(s, "cm", ad.campaign_id, sigma=0.8)
             + _normal(s, "declared", ad.creative_id, sigma=0.6) + 0.4)
        return 1.0 / (1.0 + math.exp(-x))

    def affinity(self, advertiser_id: str, segment: str) -> float:
        return AFFINITY if _uniform(self.seed, "adv-seg", advertiser_id, segment) < AFFINITY_SHARE else 0.0

    def site_of(self, placement: str) -> str:
        return f"site{int(_uniform(self.seed, 'site', placement) * SITES)}.example"

    def ctr(self, ad: Ad, ctx: Context) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(ad, ctx)))

    def context(self, rng: random.Random) -> Context:
        # Placements by a Zipf-like skew: a few carry most traffic, a long tail is seen rarely.
        u = rng.random()
        n = len(self.placements)
        p = min(n - 1, int(((n ** (1 - 1.1) - 1) * u + 1) ** (1 / (1 - 1.1))) - 1)
        placement = self.placements[p]
        # Most users have no segments (no consent, or no profile yet); the rest one to three.
        segments = tuple(rng.sample(SEGMENTS, rng.choice((1, 1, 2, 3)))) if rng.random() < 0.4 else ()
        return Context(placement, rng.choice(COUNTRIES), rng.choice(DEVICES), rng.randrange(24),
                       self.site_of(placement), segments)

    def candidates(self, rng: random.Random, k: int = 8) -> list[Ad]:
        """The ads eligible for one request: k campaigns' creatives, at random."""
        return rng.sample(self.ads, k)


class TrueVariantModel:
    """The hidden click model of creative components: how a headline, an image and a call to action, and
    their pairings, move the click-through rate, differently per device. A headline that works on a phone
    can fall flat on a desktop (the per-device effects), and an image can suit one headline better than
    another (the headline x image effect). The learner sees only clicks (``adserver bench --only variants``)."""

    def __init__(self, seed: int = 1, *, base_ctr: float = 0.01) -> None:
        self.seed = seed
        self.base = math.log(base_ctr / (1 - base_ctr))

    def ctr(self, creative_id: str, device: str, headline: int, image: int, cta: int) -> float:
        s = self.seed
        logit = (self.base
                 + _normal(s, "cr", creative_id, sigma=0.4)
                 + _normal(s, "h", creative_id, headline, sigma=0.3)
                 + _normal(s, "i", creative_id, image, sigma=0.3)
                 + _normal(s, "c", creative_id, cta, sigma=0.15)
                 + _normal(s, "h-dev", creative_id, headline, device, sigma=0.25)
                 + _normal(s, "i-dev", creative_id, image, device, sigma=0.25)
                 + _normal(s, "h-i", creative_id, headline, image, sigma=0.15))
        return 1.0 / (1.0 + math.exp(-logit))


class TrueConversionModel:
    """The hidden conversion rates of CPA campaigns: each advertiser's funnel sets a rate (log-odds spread
    0.7 around 3%), each campaign varies a little around it (0.3); advertisers declare their campaigns' rates
    optimistically (+0.7 on the log-odds, about double) and roughly (0.8), capped at 20% as the control plane
    caps them; clicks per campaign are Pareto-skewed. ``control_plane.cvr`` sees only the counts."""

    def __init__(self, seed: int = 1, *, advertisers: int = 60, campaigns_per_advertiser: int = 5) -> None:
        rng = random.Random(seed)
        self.truth: dict[str, float] = {}
        self.declared: dict[str, float] = {}
        self.advertiser_of: dict[str, str] = {}
        self.clicks: dict[str, int] = {}
        for a in range(advertisers):
            funnel = rng.gauss(math.log(0.03 / 0.97), 0.7)
            for c in range(campaigns_per_advertiser):
                cid = f"c{a}-{c}"
                self.advertiser_of[cid] = f"a{a}"
                self.truth[cid] = 1 / (1 + math.exp(-(funnel + rng.gauss(0, 0.3))))
                self.declared[cid] = min(0.2, 1 / (1 + math.exp(-(funnel + 0.7 + rng.gauss(0, 0.8)))))
                self.clicks[cid] = int(rng.paretovariate(1.2) * 20)

    def converted(self, rng: random.Random, campaign_id: str, clicks: int) -> list[bool]:
        return [rng.random() < self.truth[campaign_id] for _ in range(clicks)]

