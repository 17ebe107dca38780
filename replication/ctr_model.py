"""The click model: logistic regression on hashed features, trained online with FTRL-Proximal. Pure.

The control plane trains it from impressions labelled by their clicks and ships its weights in the snapshot;
the edge scores every candidate with them (``edge.auction``), vectorized over the candidates.

Features. Every impression has *ad* tokens (campaign, creative, advertiser) and *context* tokens (placement,
publisher site, country, device, hour of day), and the user's keyword *segments* (``edge.audiences``; the
freshest ``MODEL_SEGMENTS``, only with consent). Each token hashes to 64 bits (BLAKE2b); a feature is a
hash's top ``bits`` bits, an index into the weight vector. Besides the tokens on their own and a bias, a few
*crosses* of an ad token with a context token let the model learn that a campaign does well on one placement
or device and not on another, and advertiser x segment that a user who reads about running clicks a shoe
maker's ads. A cross hash is a multiply-xorshift mix of the two 64-bit hashes, computed the same way on Python
ints (training) and on numpy uint64 arrays (scoring), so both sides index the same weights.

The publisher is the page's site (``site_of``: the host of the ad request's ``url``): a placement the model
has seldom seen borrows what its site's other placements taught it.

The advertiser's declared prior CTR of the creative is one more feature, a real-valued one (``prior_value``:
its logit's distance from ``PRIOR_REF``): the model learns how far declared priors are to be believed (they
are claims, capped by the control plane, and often optimistic), instead of the edge shrinking every
prediction towards them by a fixed weight, which left what it served 25% under the observed CTR in the
ground-truth benchmark (``adserver bench --only pctr``, one-off, before this feature).

FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013): per-coordinate
learning rates and L1 regularisation, so rare features stay at exactly zero and the shipped model is sparse.

Calibration. A CPC campaign's bid is turned into eCPM, and its cost reserved, with the predicted CTR itself,
so the shipped model must predict as many clicks as come. An online learner's own predictions, each made
before it learns from the impression (progressive validation), are calibrated; the same model frozen and
shipped is not: on the ground-truth benchmark it predicted 0.89-1.0 of the clicks of the impressions that
followed, where its progressive predictions of those very impressions came to 0.98-1.02 (one-off probes of
seeds 501 and 503). While it learns, a click raises its features' weights for the impressions right after;
frozen, it keeps the bias that was fitted alongside those rises, and comes in low. A Platt scaling fitted
on the progressive predictions changed nothing (a = 0.98-0.99, b = -0.02 to -0.06) for that reason.

So every ``HOLDOUT_EVERY``-th impression is held out (``learn_impression``): kept, unlearned, in a queue of the
last ``holdout_size``, and learned only when it leaves the queue. The shipped model is measured on the queue,
which it has not learned: ``calibration`` is the intercept that makes its mean prediction there equal the
click rate of the last ``calibration_window`` impressions (held out or not: many more clicks than the queue
has, so the rate's own noise stays near 2%). A linear model's intercept is its bias weight, so the
calibration is folded into that: the edge serves calibrated CTRs at no cost per candidate.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from replication.segments import KEYWORD_PREFIX
from replication.variants import Arms

MASK64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: a full-period odd multiplier
SALT = 0xC2B2AE3D27D4EB4F
MAX_SITE = 253  # a DNS name's longest
DEFAULT_BITS = 18  # 262,144 weights: 1 MB as float32 at the edge
PRIOR_REF = 0.01  # the declared prior CTR whose feature value is 0 (``prior_value``)
_PRIOR_LO, _PRIOR_HI = 1e-4, 0.5  # declared priors are read within these (the control plane caps them lower)
# (ad field, context field) pairs crossed: campaign x placement, creative x placement, campaign x device; and
# each of the user's segments with the advertiser (``SEGMENT_CROSS``).
CROSSES = (("cm", "pl"), ("cr", "pl"), ("cm", "dev"))
AD_FIELDS = ("cm", "cr", "adv")
SEGMENT_CROSS = "adv"
# A user's freshest segments the model reads (they come freshest first, ``edge.audiences.fresh_segments``):
# each costs every candidate one more weight read, and the freshest say the most about what they click now.
MODEL_SEGMENTS = 4


# The context features as training (control_plane.click_trainer) and serving (edge.ctr) both derive them: one
# definition, so the model is never scored on features it was not trained on.
def utc_hour(epoch_s: float) -> int:
    return int(epoch_s // 3600) % 24


def country_of(geo: str) -> str:
    """"US" of "US-CA": the country part of a geo."""
    return geo.split("-", 1)[0] if geo else ""


def site_of(url: str) -> str:
    """"news.example" of "https://www.News.example:443/a?b": the page's host, lower case, without "www." or a
    port; "" for no URL, or one without a host or with a host longer than a DNS name can be."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # a malformed URL (an unclosed IPv6 bracket): no site
        return ""
    host = host.rstrip(".")  # "news.example." is the same site
    host = host[4:] if host.startswith("www.") else host
    return host if len(host) <= MAX_SITE else ""


def model_segments(segments: Sequence[str]) -> tuple[str, ...]:
    """The segments (freshest first) the model reads: the freshest ``MODEL_SEGMENTS`` of the keyword segments
    (pages the user read). Not an advertiser's retargeting lists: they are its own (only it can target them,
    ``replication.segments``), and crossed with every advertiser in a shared model they would teach its
    rivals' rankings who its visitors are."""
    return tuple(s for s in segments if s.startswith(KEYWORD_PREFIX))[:MODEL_SEGMENTS]


def join_segments(segments: Sequence[str]) -> str:
    """The model's segments as a decision event carries them (``replication.events.Event.segments``)."""
    return ",".join(model_segments(segments))


def split_segments(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(",")) if joined else ()


def token_hash(field_name: str, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{field_name}={value}".encode(), digest_size=8).digest(), "little")


def cross_hash(ad: int, context: int) -> int:
    mixed = (ad ^ ((context * SALT) & MASK64)) * MIX & MASK64
    return mixed ^ (mixed >> 29)


def cross_hash_array(ad: np.ndarray, context: int) -> np.ndarray:
    """``cross_hash`` over a uint64 array of ad hashes (numpy's uint64 arithmetic wraps at 2^64 too)."""
    mixed = (ad ^ np.uint64((context * SALT) & MASK64)) * np.uint64(MIX)
    return mixed ^ (mixed >> np.uint64(29))


def index_of(h: int, bits: int) -> int:
    return h >> (64 - bits)


def index_array(h: np.ndarray, bits: int) -> np.ndarray:
    return (h >> np.uint64(64 - bits)).astype(np.intp)


BIAS = token_hash("bias", "")


@dataclass(frozen=True, slots=True)
class Impression:
    """What the model sees of one impression: the ad's and the context's tokens."""

    campaign_id: str
    creative_id: str
    advertiser_id: str
    placement: str
    country: str
    device: str
    hour: int
    site: str = ""
    segments: tuple[str, ...] = ()  # freshest first; only the first MODEL_SEGMENTS are read
    prior_ctr: float = PRIOR_REF  # the creative's declared prior CTR (NaN: none known)

    def ad_hashes(self) -> dict[str, int]:
        return {"cm": token_hash("cm", self.campaign_id), "cr": token_hash("cr", self.creative_id),
                "adv": token_hash("adv", self.advertiser_id)}


def context_hashes(placement: str, country: str, device: str, hour: int, site: str = "") -> dict[str, int]:
    """The context's tokens; a site only when there is one: an empty site's weight would be learned as a second
    bias wherever sites are missing (decision events off) and be absent from every request that names one."""
    context = {"pl": token_hash("pl", placement), "geo": token_hash("geo", country),
               "dev": token_hash("dev", device), "hr": token_hash("hr", str(hour))}
    if site:
        context["pub"] = token_hash("pub", site)
    return context


def segment_hash(segment: str) -> int:
    return token_hash("seg", segment)


def feature_indexes(ad: dict[str, int], context: dict[str, int], bits: int, segments: Sequence[str] = ()) -> list[int]:
    """The weight indexes of one impression: the bias, each token, each cross; a user's segments (the model's
    share of them, ``model_segments``) each on its own and crossed with the advertiser."""
    hashes = [BIAS, *ad.values(), *context.values()]
    hashes += [cross_hash(ad[a], context[c]) for a, c in CROSSES]
    for segment in model_segments(segments):
        h = segment_hash(segment)
        hashes += [h, cross_hash(ad[SEGMENT_CROSS], h)]
    return [index_of(h, bits) for h in hashes]


def impression_indexes(imp: Impression, bits: int) -> list[int]:
    return feature_indexes(imp.ad_hashes(),
                           context_hashes(imp.placement, imp.country, imp.device, imp.hour, imp.site), bits,
                           imp.segments)


PRIOR = token_hash("prior", "")  # the declared prior's feature


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def prior_value(prior_ctr: float) -> float:
    """The prior feature's value for a creative declared at ``prior_ctr``: 0 at ``PRIOR_REF`` and for no prior
    (NaN), +-1 per e-fold of its odds."""
    if math.isnan(prior_ctr):
        return 0.0
    return logit(min(max(prior_ctr, _PRIOR_LO), _PRIOR_HI)) - logit(PRIOR_REF)


def impression_features(imp: Impression, bits: int) -> tuple[list[int], list[float]]:
    """Every feature of one impression as (indexes, values): the binary ones (value 1) and the prior."""
    indexes = impression_indexes(imp, bits)
    return [*indexes, index_of(PRIOR, bits)], [1.0] * len(indexes) + [prior_value(imp.prior_ctr)]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)



@dataclass
class Ftrl:
    """FTRL-Proximal logistic regression over ``2**bits`` hashed features: binary ones (value 1) and the
    declared prior (``prior_value``)."""

    bits: int = DEFAULT_BITS
    # Chosen on the ground-truth benchmark's first seed (adserver.bench_pctr), judged on all of its seeds.
    alpha: float = 0.2
    beta: float = 1.0
    l1: float = 0.1
    l2: float = 1.0
    calibration_window: int = 100_000
    holdout_size: int = 10_000
    z: np.ndarray = field(init=False, repr=False)
    n: np.ndarray = field(init=False, repr=False)
    trained: int = 0  # impressions learned
    seen: int = 0  # impressions given (``learn_impression``): learned, or held out
    # Whether each of the last calibration_window impressions given was clicked, a ring (``seen`` says where).
    recent_clicks: np.ndarray = field(init=False, repr=False)
    # The held-out impressions, oldest first: (indexes, values, clicked).
    held_out: deque[tuple[list[int], list[float], bool]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 24:
            raise ValueError(f"bits must be 8..24, got {self.bits}")
        self.z = np.zeros(1 << self.bits)
        self.n = np.zeros(1 << self.bits)
        self.recent_clicks = np.zeros(self.calibration_window, dtype=bool)
        self.held_out = deque()

    def _weight(self, i: int) -> float:
        z = self.z[i]
        if abs(z) <= self.l1:
            return 0.0
        return -(z - math.copysign(self.l1, z)) / ((self.beta + math.sqrt(self.n[i])) / self.alpha + self.l2)

    def learn(self, indexes: Sequence[int], clicked: bool, values: Sequence[float] | None = None) -> float:
        """One impression, its features' ``values`` 1 where not given: returns the prediction made before
        learning from it (progressive validation)."""
        xs = values if values is not None else [1.0] * len(indexes)
        weights = [self._weight(i) for i in indexes]
        p = sigmoid(sum(w * x for w, x in zip(weights, xs, strict=True)))
        error = p - (1.0 if clicked else 0.0)
        for i, w, x in zip(indexes, weights, xs, strict=True):
            g = error * x
            g2 = g * g
            n = self.n[i]
            sigma = (math.sqrt(n + g2) - math.sqrt(n)) / self.alpha
            self.z[i] += g - sigma * w
            self.n[i] = n + g2
        self.trained += 1
        return p

    def learn_impression(self, imp: Impression, clicked: bool) -> None:
        """One impression of the stream: learned, or every ``HOLDOUT_EVERY``-th held out for ``calibration``
        (and learned once ``holdout_size`` later ones have been held out)."""
        indexes, values = impression_features(imp, self.bits)
        self.recent_clicks[self.seen % self.calibration_window] = clicked
        self.seen += 1
        if self.seen % HOLDOUT_EVERY:
            self.learn(indexes, clicked, values)
            return
        self.held_out.append((indexes, values, clicked))
        if len(self.held_out) > self.holdout_size:
            old_indexes, old_values, old_clicked = self.held_out.popleft()
            self.learn(old_indexes, old_clicked, old_values)

    def weights(self) -> np.ndarray:
        """The dense weight vector (float32), as the edge scores with it."""
        z, n = self.z, self.n
        w = -(z - np.sign(z) * self.l1) / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        w[np.abs(z) <= self.l1] = 0.0
        return w.astype(np.float32)

    def calibration(self, weights: np.ndarray) -> float:
        """The intercept to add to ``weights``' logit so that their mean prediction over the held-out queue
        equals the recent click rate (``fit_intercept``); 0 with too few impressions or clicks to tell."""
        given = min(self.seen, self.calibration_window)
        if len(self.held_out) < MIN_HELD_OUT:
            return 0.0
        rows = np.repeat(np.arange(len(self.held_out)), [len(h[0]) for h in self.held_out])
        indexes = np.fromiter((i for h in self.held_out for i in h[0]), dtype=np.intp, count=len(rows))
        values = np.fromiter((x for h in self.held_out for x in h[1]), dtype=np.float64, count=len(rows))
        logits = np.bincount(rows, weights=weights[indexes].astype(np.float64) * values,
                             minlength=len(self.held_out))
        return fit_intercept(logits, int(self.recent_clicks[:given].sum()) / given, given)

    def export(self, version: int, impressions: dict[str, int], arms: Arms | None = None) -> ClickModel:
        """What the edge gets: the weights, calibrated (``calibration``, folded into the bias)."""
        weights = self.weights()
        weights[index_of(BIAS, self.bits)] += np.float32(self.calibration(weights))
        weights.flags.writeable = False
        return ClickModel(version, self.bits, weights, dict(impressions), arms or {})


HOLDOUT_EVERY = 10
MIN_HELD_OUT = 1_000  # fewer held-out impressions, and their mean prediction says little: no calibration
MIN_CALIBRATION_CLICKS = 100  # in the window: fewer, and the rate is noise (10% either side at 100)
MAX_CALIBRATION = 1.0  # a correction past e-fold either way says something is broken, not the model


def fit_intercept(logits: np.ndarray, rate: float, impressions: int) -> float:
    """The ``b`` with mean(sigmoid(logits + b)) = ``rate`` (Newton's method: the mean is increasing in ``b``),
    within +-``MAX_CALIBRATION``; 0 when ``rate`` rests on fewer than ``MIN_CALIBRATION_CLICKS`` clicks or
    non-clicks of ``impressions``."""
    clicks = rate * impressions
    if min(clicks, impressions - clicks) < MIN_CALIBRATION_CLICKS:
        return 0.0
    b = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(logits + b)))
        step = (float(p.mean()) - rate) / max(float((p * (1.0 - p)).mean()), 1e-12)
        b = min(max(b - step, -MAX_CALIBRATION), MAX_CALIBRATION)
        if abs(step) < 1e-10:
            break
    return b


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity: a model is big
class ClickModel:
    """What ships in the snapshot: the weights (sparse on the wire, dense in memory), and per creative how many
    impressions the model has learned from (a creative it has seen little gets an exploration bonus at the
    edge)."""

    version: int
    bits: int
    weights: np.ndarray  # float32, 2**bits
    impressions: dict[str, int]  # creative id -> impressions trained on
    # Impressions and clicks per creative, segment and variant of its components (replication.variants).
    arms: Arms = field(default_factory=dict)

    @classmethod
    def from_sparse(cls, version: int, bits: int, indexes: Iterable[int], values: Iterable[float],
                    impressions: dict[str, int], arms: Arms | None = None) -> ClickModel:
        weights = np.zeros(1 << bits, dtype=np.float32)
        idx = np.fromiter(indexes, dtype=np.intp)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(weights)):
            raise ValueError("click model index out of range")
        given = np.fromiter(values, dtype=np.float32, count=len(idx))
        if not np.isfinite(given).all():
            raise ValueError("click model weights must be finite")
        weights[idx] = given
        weights.flags.writeable = False
        return cls(version, bits, weights, dict(impressions), arms or {})

    def predict(self, imp: Impression) -> float:
        indexes, values = impression_features(imp, self.bits)
        return sigmoid(float(sum(float(self.weights[i]) * x for i, x in zip(indexes, values, strict=True))))


def log_loss(p: float, clicked: bool) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return -math.log(p if clicked else 1 - p)
