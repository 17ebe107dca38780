"""pCTR at the edge: the snapshot's click model (``replication.ctr_model``) over an auction's candidates. Pure.

Per request, the context's features (placement, site, country, device, UTC hour; the user's segments) are
hashed once; each candidate's logit is its campaign's static part (bias, campaign, best creative of the format,
advertiser, that creative's declared prior: computed once per snapshot and format) plus the context's weights
plus the weights of the ad x context crosses (with segments, one more per segment: advertiser x segment):
``score_one``, compiled by numba, which the auction's own kernel (``edge.auction._select``) calls per
candidate; as numpy expressions, the per-call overheads of some thirty small array operations cost more than
the work itself. A CPM candidate ranks on its bid (``edge.auction.cpm_bids``), so its CTR is predicted only if the
auction's walk reaches it (``fill_ctrs``). The kernels are compiled once per process, when the first snapshot
is loaded (``edge.auction.warm_up``), not in a request. This module does no I/O: an edge process opts them
into numba's on-disk cache itself (``edge.compile_cache``).

New creatives: the model predicts one it has not seen from what it knows of its campaign, advertiser and
declared prior CTR (a feature whose weight it learned: ``replication.ctr_model.prior_value``), and the ranking
adds an exploration bonus of ``EXPLORATION`` standard errors, as if the prediction rested on the creative's
impressions plus ``PRIOR_IMPRESSIONS`` (an upper confidence bound: a creative with few impressions is tried
enough to learn what it is worth, then its bonus fades). The bonus only ranks: the CTR served (priced with,
reserved against) is the model's prediction, which is calibrated; shrinking it towards the declared prior by
a fixed weight, as before, served 0.75 of the observed clicks in ``adserver bench --only pctr`` (one-off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from edge.prefetch import prefetch, prefetch2
from replication.columns import BID_TYPES
from replication.ctr_model import (
    AD_FIELDS,
    BIAS,
    CROSSES,
    MASK64,
    MIX,
    PRIOR,
    SALT,
    SEGMENT_CROSS,
    ClickModel,
    Impression,
    context_hashes,
    index_array,
    index_of,
    model_segments,
    prior_value,
    segment_hash,
    token_hash,
    utc_hour,
)
from replication.snapshot import Snapshot, SnapshotCampaign, SnapshotCreative

PRIOR_IMPRESSIONS = 200.0
EXPLORATION = 1.0


# One record per campaign, what ``score_one`` reads of a candidate (``_ModelColumns.records``): the ad side of
# the crosses (uint64 hashes, one per entry of AD_FIELDS; "cr" is the best creative's), then float64 values
# (stored as their bits): the logit's part that does not depend on the request (NaN: no creative of the
# format); c = 1 / (seen + PRIOR_IMPRESSIONS) for the bonus (EXPLORATION sqrt(p (1 - p) c)); and the eCPM's
# inputs: a CPM bid as it is (IS_CPM 1.0), else PER_CTR x CTR x 1000 (the CPC bid, or the CPA bid times the
# prior conversion rate).
_STATIC, _C, _BID, _PER_CTR, _IS_CPM = range(len(AD_FIELDS), len(AD_FIELDS) + 5)
_RECORD = _IS_CPM + 1  # fields per record: 64 bytes, one cache line (``_records`` aligns them)


@dataclass(frozen=True, slots=True)
class _ModelColumns:
    """A format's records, as uint64 and as float64 views of one buffer. Seven separate columns cost a
    candidate about nine cache lines to score; its record takes one."""

    records: np.ndarray  # uint64, (campaigns, _RECORD)
    values: np.ndarray  # the same memory as float64


def _columns(snapshot: Snapshot, model: ClickModel, fmt: str) -> _ModelColumns:
    columns = snapshot.columns
    assert columns is not None
    fmt = columns.format_key(fmt)
    key = ("ctr-model", model.version, fmt)
    cached = columns.memo.get(key)
    if cached is not None:
        return cached
    n = columns.size
    best = columns.formats[fmt].best if fmt in columns.formats else ((),) * n
    hashes = {
        **_campaign_hashes(snapshot),
        "cr": np.fromiter((token_hash("cr", b[0].creative_id) if b else 0 for b in best), dtype=np.uint64, count=n),
    }
    w, bits = model.weights, model.bits
    static = float(w[index_of(BIAS, bits)]) + sum(w[index_array(h, bits)].astype(np.float64) for h in hashes.values())
    seen = np.fromiter((model.impressions.get(b[0].creative_id, 0) if b else 0 for b in best), dtype=np.float64,
                       count=n)
    prior = np.fromiter((prior_value(b[0].prior_ctr) if b else np.nan for b in best), dtype=np.float64, count=n)
    is_cpa = columns.bid_type == BID_TYPES.index("cpa")
    records = _records(n)
    values = records.view(np.float64)
    for k, ad in enumerate(AD_FIELDS):
        records[:, k] = hashes[ad]
    values[:, _STATIC] = static + float(w[index_of(PRIOR, bits)]) * prior  # NaN without a creative of the format
    values[:, _C] = 1.0 / (seen + PRIOR_IMPRESSIONS)
    values[:, _BID] = columns.max_bid
    values[:, _PER_CTR] = np.where(is_cpa, columns.max_bid * columns.prior_cvr, columns.max_bid)
    values[:, _IS_CPM] = columns.bid_type == BID_TYPES.index("cpm")
    records.flags.writeable = values.flags.writeable = False
    made = columns.memo[key] = _ModelColumns(records, values)
    return made


def _records(n: int) -> np.ndarray:
    """Zeroed records for ``n`` campaigns, each on a cache line of its own: the buffer starts on a 64-byte
    boundary (numpy promises 16)."""
    raw = np.zeros(n * _RECORD + 8, dtype=np.uint64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + n * _RECORD].reshape(n, _RECORD)


def _campaign_hashes(snapshot: Snapshot) -> dict[str, np.ndarray]:
    """The campaign and advertiser token hashes of every campaign: the same for every model and format."""
    assert snapshot.columns is not None
    n = len(snapshot.campaigns)
    return snapshot.columns.memoized("ctr-campaign-hashes", lambda: {
        "cm": np.fromiter((token_hash("cm", c.campaign_id) for c in snapshot.campaigns), dtype=np.uint64, count=n),
        "adv": np.fromiter((token_hash("adv", c.advertiser_id) for c in snapshot.campaigns), dtype=np.uint64,
                           count=n),
    })


def blend(p: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, ranking CTR): the model's CTR, and that plus the exploration bonus for a creative the model has
    learned from ``seen`` impressions of. The bonus only ranks: prices and reservations use the mean (the
    winner's CTR, and the runner-up's eCPM that sets the price, ``edge.auction._finish``), so a winner pays
    what the expected clicks are worth, not anyone's optimism."""
    return p, np.minimum(1.0, p + EXPLORATION * np.sqrt(p * (1 - p) / (seen + PRIOR_IMPRESSIONS)))


_CONTEXTS_KEPT = 65_536
# Which record column (AD_FIELDS) each cross of the context mixes with, and each segment's.
_CROSS_COLUMNS = np.array([AD_FIELDS.index(a) for a, _ in CROSSES], dtype=np.int64)
_SEGMENT_COLUMN = AD_FIELDS.index(SEGMENT_CROSS)


def _context(placement: str, country: str, device: str, hour: int, site: str,
             model: ClickModel) -> tuple[float, np.ndarray]:
    """The request side of one context: the sum of its own weights, and per cross the context hash to mix
    (``model_inputs`` keeps it)."""
    context = context_hashes(placement, country, device, hour, site)
    own = float(sum(float(model.weights[index_of(h, model.bits)]) for h in context.values()))
    return own, np.array([(context[c] * SALT) & MASK64 for _, c in CROSSES], dtype=np.uint64)


# What ``score_one`` reads of a request: a format's records (``_ModelColumns``), the context's mix per cross and
# the record column each mixes with, the weights and their index shift, the context's own weights, the
# exploration factor. With no records the auction ranks on priors instead (``NO_MODEL``).
ModelInputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.uint64, float, float]


def model_inputs(snapshot: Snapshot, fmt: str, placement: str, country: str, device: str, now_s: float,
                 site: str = "", segments: tuple[str, ...] = ()) -> ModelInputs:
    """What ``score_one`` reads for a request of ``fmt`` in this context. Remembered per snapshot and model
    (so an old model is freed with its snapshot), for at most 65,536 formats and contexts: a request in a
    context seen before does one lookup instead of five (2.9 us of an auction's 85 at 10,000 campaigns,
    one-off timing). A user's segments are added to it per request (``_with_segments``): they are the
    user's, and would make nearly every key new."""
    model = snapshot.click_model
    assert model is not None and snapshot.columns is not None
    memo = snapshot.columns.memo
    cache = memo.get(("ctr-inputs", model.version))
    if cache is None:
        cache = memo[("ctr-inputs", model.version)] = {}
    hour = utc_hour(now_s)
    key = (fmt, placement, country, device, hour, site)
    found = cache.get(key)
    if found is None:
        own, mix = _context(placement, country, device, hour, site, model)
        mc = _columns(snapshot, model, fmt)
        found = (mc.records, mc.values, mix, _CROSS_COLUMNS, model.weights, np.uint64(64 - model.bits), own,
                 EXPLORATION)
        # Not for a format no campaign has: every string a caller sends would be a key of its own.
        if fmt in snapshot.columns.formats:
            if len(cache) >= _CONTEXTS_KEPT:
                cache.clear()
            cache[key] = found
    return _with_segments(found, model, segments) if segments else found


def _with_segments(inputs: ModelInputs, model: ClickModel, segments: tuple[str, ...]) -> ModelInputs:
    """``inputs`` for a user in ``segments``: each segment's own weight joins the context's, and each is one
    more cross, mixed with the advertiser's hash (``SEGMENT_CROSS``)."""
    records, values, mix, columns, weights, shift, own, exploration = inputs
    hashes = [segment_hash(s) for s in model_segments(segments)]
    own += sum(float(weights[index_of(h, model.bits)]) for h in hashes)
    mix = np.concatenate((mix, np.array([(h * SALT) & MASK64 for h in hashes], dtype=np.uint64)))
    columns = np.concatenate((columns, np.full(len(hashes), _SEGMENT_COLUMN, dtype=np.int64)))
    return records, values, mix, columns, weights, shift, own, exploration


def _no_model() -> ModelInputs:
    """``model_inputs`` without a model: no records, and arrays of the same types and flags as a model's, so
    that the auction's kernel is compiled once for both."""
    records = np.zeros((0, _RECORD), dtype=np.uint64)
    values = records.view(np.float64)
    weights = np.zeros(1, dtype=np.float32)
    records.flags.writeable = values.flags.writeable = weights.flags.writeable = False
    return (records, values, np.zeros(len(CROSSES), dtype=np.uint64), _CROSS_COLUMNS, weights, np.uint64(63), 0.0,
            EXPLORATION)


NO_MODEL = _no_model()


@njit(nogil=True, inline="always")
def _slot(ad: np.uint64, context: np.uint64, shift: np.uint64) -> np.uint64:
    """The weight index of one cross: ``cross_hash``'s arithmetic (uint64 wraps at 2**64 here too)."""
    h = (ad ^ context) * np.uint64(MIX)
    h ^= h >> np.uint64(29)
    return h >> shift


@njit(nogil=True)
def prefetch_weights(pos: int, records: np.ndarray, mix: np.ndarray, columns: np.ndarray, weights: np.ndarray,
                     shift: np.uint64) -> None:
    """Start loading the weights ``score_one`` will read for campaign ``pos`` (``edge.prefetch``): three
    scattered reads of a megabyte of weights (one more per segment), the cache misses of a request's
    scoring."""
    for k in range(mix.shape[0]):
        prefetch(weights, _slot(records[pos, columns[k]], mix[k], shift))


@njit(nogil=True)
def score_one(pos: int, records: np.ndarray, values: np.ndarray, mix: np.ndarray, columns: np.ndarray,
              weights: np.ndarray, shift: np.uint64, own: float, exploration: float) -> tuple[float, float]:
    """One campaign's (mean CTR, eCPM ranked on with the exploration bonus) from its record (``records`` and
    ``values``: one buffer). The same arithmetic as ``cross_hash`` (``_slot``) and ``blend``; a campaign
    without a creative of the format (NaN static part) gets NaN for both, tested explicitly because
    min(1.0, nan) is 1.0 here."""
    logit = values[pos, _STATIC] + own
    for k in range(mix.shape[0]):
        logit += weights[_slot(records[pos, columns[k]], mix[k], shift)]
    if logit >= 0:
        p = 1.0 / (1.0 + math.exp(-logit))
    else:
        e = math.exp(logit)
        p = e / (1.0 + e)
    if math.isnan(p):
        return math.nan, math.nan
    if values[pos, _IS_CPM] != 0.0:
        return p, values[pos, _BID]
    ranking = min(1.0, p + exploration * math.sqrt(p * (1.0 - p) * values[pos, _C]))
    return p, values[pos, _PER_CTR] * ranking * 1000.0


@njit(nogil=True, inline="always")
def mean_ecpm(pos: int, values: np.ndarray, ctr: float) -> float:
    """What a CPC or CPA campaign's impression is worth at its mean CTR (``score_one``'s first value), without
    the exploration bonus its ranking score carries: the auction's reserve is held against this."""
    return values[pos, _PER_CTR] * ctr * 1000.0


@njit(nogil=True)
def fill_ctrs(positions: np.ndarray, ctrs: np.ndarray, inputs: ModelInputs) -> None:
    """The mean CTR (``score_one``'s) of each candidate whose CTR is still NaN (a CPM campaign the auction
    ranked on its bid, ``edge.auction.cpm_bids``), in place. Their records and then their weights are asked
    for first (``edge.prefetch``), so that the cache misses of all of them overlap."""
    records, mix, columns, weights, shift = inputs[0], inputs[2], inputs[3], inputs[4], inputs[5]
    for j in range(positions.shape[0]):
        if math.isnan(ctrs[j]):
            prefetch2(records, positions[j], 0)  # a record is one cache line (``_records``)
    for j in range(positions.shape[0]):
        if math.isnan(ctrs[j]):
            prefetch_weights(positions[j], records, mix, columns, weights, shift)
    for j in range(positions.shape[0]):
        if math.isnan(ctrs[j]):
            ctrs[j] = score_one(positions[j], *inputs)[0]


@njit(nogil=True)
def _score(positions: np.ndarray, inputs: ModelInputs, out_ctr: np.ndarray, out_score: np.ndarray) -> None:
    for j in range(positions.shape[0]):
        out_ctr[j], out_score[j] = score_one(positions[j], *inputs)


def predicted_ctr_and_ecpm(snapshot: Snapshot, positions: np.ndarray, fmt: str, placement: str, country: str,
                           device: str, now_s: float, site: str = "",
                           segments: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate's best creative of ``fmt``: the mean CTR it is priced with, and the eCPM it ranks on
    (with the exploration bonus); NaN for both when it has no creative of the format. (The auction scores
    inside its own kernel with ``score_one``, the same function.)"""
    ctr = np.empty(len(positions))
    score = np.empty(len(positions))
    _score(positions, model_inputs(snapshot, fmt, placement, country, device, now_s, site, segments), ctr, score)
    return ctr, score


def predicted_ctr_one(model: ClickModel, campaign: SnapshotCampaign, creative: SnapshotCreative, placement: str,
                      country: str, device: str, now_s: float, site: str = "",
                      segments: tuple[str, ...] = ()) -> tuple[float, float]:
    """(mean CTR, ranking CTR) for one campaign and a creative of its choosing (a capped best creative's
    stand-in), as ``predicted_ctr_and_ecpm`` computes them."""
    p = model.predict(Impression(campaign.campaign_id, creative.creative_id, campaign.advertiser_id, placement,
                                 country, device, utc_hour(now_s), site, segments, creative.prior_ctr))
    seen = np.array([float(model.impressions.get(creative.creative_id, 0))])
    mean, ranking = blend(np.array([p]), seen)
    return float(mean[0]), float(ranking[0])


