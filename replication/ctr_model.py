"""The click model: logistic regression on hashed features, trained online with FTRL-Proximal. Pure.

The control plane trains it from impressions labelled by their clicks and ships its weights in the snapshot;
the edge scores every candidate with them (``edge.auction``), vectorized over the candidates.

Features. Every impression has *ad* tokens (campaign, creative, advertiser) and *context* tokens (placement,
country, device, hour of day). Each token hashes to 64 bits (BLAKE2b); a feature is a hash's top ``bits``
bits, an index into the weight vector. Besides the tokens on their own and a bias, a few *crosses* of an ad
token with a context token let the model learn that a campaign does well on one placement or device and not
on another. A cross hash is a multiply-xorshift mix of the two 64-bit hashes, computed the same way on Python
ints (training) and on numpy uint64 arrays (scoring), so both sides index the same weights.

FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013): per-coordinate
learning rates and L1 regularisation, so rare features stay at exactly zero and the shipped model is sparse.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from replication.variants import Arms

MASK64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: a full-period odd multiplier
SALT = 0xC2B2AE3D27D4EB4F
DEFAULT_BITS = 18  # 262,144 weights: 1 MB as float32 at the edge
# (ad field, context field) pairs crossed: campaign x placement, creative x placement, campaign x device.
CROSSES = (("cm", "pl"), ("cr", "pl"), ("cm", "dev"))


# The context features as training (control_plane.click_trainer) and serving (edge.ctr) both derive them: one
# definition, so the model is never scored on features it was not trained on.
def utc_hour(epoch_s: float) -> int:
    return int(epoch_s // 3600) % 24


def country_of(geo: str) -> str:
    """"US" of "US-CA": the country part of a geo."""
    return geo.split("-", 1)[0] if geo else ""


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

    def ad_hashes(self) -> dict[str, int]:
        return {"cm": token_hash("cm", self.campaign_id), "cr": token_hash("cr", self.creative_id),
                "adv": token_hash("adv", self.advertiser_id)}


def context_hashes(placement: str, country: str, device: str, hour: int) -> dict[str, int]:
    return {"pl": token_hash("pl", placement), "geo": token_hash("geo", country), "dev": token_hash("dev", device),
            "hr": token_hash("hr", str(hour))}


def feature_indexes(ad: dict[str, int], context: dict[str, int], bits: int) -> list[int]:
    hashes = [BIAS, *ad.values(), *context.values()]
    hashes += [cross_hash(ad[a], context[c]) for a, c in CROSSES]
    return [index_of(h, bits) for h in hashes]


def impression_indexes(imp: Impression, bits: int) -> list[int]:
    return feature_indexes(imp.ad_hashes(), context_hashes(imp.placement, imp.country, imp.device, imp.hour), bits)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)



@dataclass
class Ftrl:
    """FTRL-Proximal logistic regression over ``2**bits`` hashed features, each feature's value 1."""

    bits: int = DEFAULT_BITS
    # Chosen on the ground-truth benchmark's first seed (adserver.bench_pctr), judged on all of its seeds.
    alpha: float = 0.2
    beta: float = 1.0
    l1: float = 0.1
    l2: float = 1.0
    z: np.ndarray = field(init=False, repr=False)
    n: np.ndarray = field(init=False, repr=False)
    trained: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 24:
            raise ValueError(f"bits must be 8..24, got {self.bits}")
        self.z = np.zeros(1 << self.bits)
        self.n = np.zeros(1 << self.bits)

    def _weight(self, i: int) -> float:
        z = self.z[i]
        if abs(z) <= self.l1:
            return 0.0
        return -(z - math.copysign(self.l1, z)) / ((self.beta + math.sqrt(self.n[i])) / self.alpha + self.l2)

    def learn(self, indexes: Sequence[int], clicked: bool) -> float:
        """One impression: returns the prediction made before learning from it (progressive validation)."""
        weights = [self._weight(i) for i in indexes]
        p = sigmoid(sum(weights))
        g = p - (1.0 if clicked else 0.0)
        g2 = g * g
        for i, w in zip(indexes, weights, strict=True):
            n = self.n[i]
            sigma = (math.sqrt(n + g2) - math.sqrt(n)) / self.alpha
            self.z[i] += g - sigma * w
            self.n[i] = n + g2
        self.trained += 1
        return p

    def weights(self) -> np.ndarray:
        """The dense weight vector (float32), as the edge scores with it."""
        z, n = self.z, self.n
        w = -(z - np.sign(z) * self.l1) / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        w[np.abs(z) <= self.l1] = 0.0
        return w.astype(np.float32)

    def export(self, version: int, impressions: dict[str, int], arms: Arms | None = None) -> ClickModel:
        weights = self.weights()
        weights.flags.writeable = False
        return ClickModel(version, self.bits, weights, dict(impressions), arms or {})


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity: a model is big
class ClickModel:
    """What ships in the snapshot: the weights (sparse on the wire, dense in memory), and per creative how many
    impressions the model has learned from (new creatives are blended with their prior and get an
    exploration bonus at the edge)."""

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
        return sigmoid(float(sum(self.weights[i] for i in impression_indexes(imp, self.bits))))


def log_loss(p: float, clicked: bool) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return -math.log(p if clicked else 1 - p)
