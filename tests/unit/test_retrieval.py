"""Mask-based retrieval returns exactly the set definition: per dimension, the campaigns naming one of the
request's values or not constrained there, intersected over the dimensions; also after the wire round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import edge.auction as auction_module
from adserver.bench_auction import inventory, requests
from edge.auction import AdRequest, _candidates, retrieve
from replication.snapshot import (
    MAX_ANSWER_MASKS,
    Snapshot,
    bitset,
    build_snapshot,
    decode_snapshot,
    empty_snapshot,
    encode_snapshot,
)


def asked_values(request: AdRequest) -> dict[str, tuple[str, ...]]:
    """Per targeting dimension, the values the request brings (empty: it says nothing there), written out
    here independently of the auction's own table."""
    return {
        "placement": (request.placement,),
        "format": (request.format,),
        "country": (request.country,) if request.country else (),
        "geo": (request.geo,) if request.geo else (),
        "device": (request.device,) if request.device else (),
        "keyword": request.keywords,
        "interest": request.interests,
    }


def by_sets(snapshot: Snapshot, request: AdRequest) -> set[int]:
    result = set(range(len(snapshot.campaigns)))
    for dim, values in asked_values(request).items():
        ok = set(snapshot.unrestricted[dim])
        for v in values:
            ok |= snapshot.postings[dim].get(v, frozenset())
        result &= ok
    return result


def test_masks_match_the_set_definition_over_a_realistic_inventory():
    snapshot = build_snapshot(inventory(3_000), version=1, created_ms=0, reserve_cpm_micros=0)
    sizes = []
    for request in requests(400):
        got = set(retrieve(snapshot, request).tolist())
        assert got == by_sets(snapshot, request)
        sizes.append(len(got))
    assert max(sizes) > 20 and min(sizes) < max(sizes)  # the requests do reach different candidate sets
    # Popular placements and keywords (among thousands of values) are answered from their own masks.
    index = snapshot.index
    assert len(index.positions["placement"]) > MAX_ANSWER_MASKS and len(index.positions["keyword"]) > MAX_ANSWER_MASKS
    assert 0 < len(index.answers["placement"]) < len(index.positions["placement"])
    assert any(r.placement in index.answers["placement"] for r in requests(400))
    assert any(len(r.keywords) == 1 and r.keywords[0] in index.answers["keyword"] for r in requests(400))
    # Several answered keywords OR-ed, and an answered one beside one widened by its postings, are both among
    # the requests checked above.
    answered = [sum(k in index.answers["keyword"] for k in r.keywords) for r in requests(400)]
    assert any(n >= 2 for n in answered)
    assert any(0 < n < len(r.keywords) for n, r in zip(answered, requests(400), strict=True))


def test_a_remembered_context_plan_serves_every_request_of_that_context_only(monkeypatch):
    """The context's part of a request's plan (placement, format, geo, device) is remembered with the index;
    requests of a remembered context with other keywords and interests, and requests differing from one in a
    single context value, still retrieve exactly the set definition. When the memo is full it starts over."""
    snapshot = build_snapshot(inventory(3_000), version=1, created_ms=0, reserve_cpm_micros=0)
    base = requests(150)
    pairs = list(zip(base, base[::-1], strict=True))
    variants = [dataclasses.replace(r, keywords=o.keywords, interests=o.interests) for r, o in pairs]
    for field in ("placement", "format", "geo", "device"):  # one context value of another request
        variants += [dataclasses.replace(r, **{field: getattr(o, field)}) for r, o in pairs]
    variants.append(dataclasses.replace(base[0], geo="", device=""))
    for request in base + variants + base:
        assert set(retrieve(snapshot, request).tolist()) == by_sets(snapshot, request), request
    memo = snapshot.index.memo
    assert len({(r.placement, r.format, r.geo, r.device) for r in base}) <= len(memo) <= auction_module._CONTEXTS_KEPT
    monkeypatch.setattr(auction_module, "_CONTEXTS_KEPT", 10)
    for request in requests(150, seed=9):  # contexts not seen yet
        assert set(retrieve(snapshot, request).tolist()) == by_sets(snapshot, request), request
    assert 0 < len(memo) <= 10  # at most the contexts kept


def test_a_decoded_snapshot_retrieves_the_same():
    snapshot = build_snapshot(inventory(500), version=3, created_ms=0, reserve_cpm_micros=0)
    decoded = decode_snapshot(encode_snapshot(snapshot))
    for request in requests(100):
        assert retrieve(decoded, request).tolist() == retrieve(snapshot, request).tolist()


def test_empty_snapshot_and_unknown_values_retrieve_nothing_or_the_unconstrained():
    assert retrieve(empty_snapshot(), AdRequest(placement="p1", slots=1, format="300x250")).size == 0
    snapshot = build_snapshot(inventory(300), version=1, created_ms=0, reserve_cpm_micros=0)
    nowhere = AdRequest(placement="no-such-placement", slots=1, format="300x250", keywords=("no-such-kw",))
    assert set(retrieve(snapshot, nowhere).tolist()) == by_sets(snapshot, nowhere)


@pytest.mark.parametrize("size", [1, 63, 64, 65, 200])
def test_the_bitset_pass_matches_boolean_masks_at_word_edges(size):
    """``_candidates`` against numpy on boolean masks, at sizes on and around the 64-bit word boundary: three
    random dimensions, each one to three rows (of one array of bitsets) OR-ed together and widened by none,
    one or two spans of positions (of one flat array), including the last and first campaign."""
    rng = np.random.default_rng(size)
    for _ in range(50):
        rows, flat, plan, want = [], [], [], np.ones(size, dtype=bool)
        for _ in range(3):
            mask = np.zeros(size, dtype=bool)
            used = []
            for _ in range(int(rng.integers(1, 4))):
                row = rng.random(size) < rng.choice([0.1, 0.5, 0.95])
                used.append(len(rows))
                rows.append(bitset(row))
                mask |= row
            spans = []
            for _ in range(int(rng.integers(0, 3))):
                extra = np.unique(np.append(rng.choice(size, int(rng.integers(0, 4))), rng.choice([0, size - 1])))
                start = sum(len(f) for f in flat)
                flat.append(extra.astype(np.int64))
                spans += (start, start + len(extra))
                mask = mask.copy()
                mask[extra] = True
            plan += (len(used), *used, len(spans) // 2, *spans)
            want &= mask
        bits, flat_array = np.stack(rows), np.concatenate([np.zeros(0, dtype=np.int64), *flat])
        bits.flags.writeable = flat_array.flags.writeable = False
        got = _candidates(size, bits, flat_array, np.array(plan, dtype=np.int64))
        assert got.tolist() == np.flatnonzero(want).tolist()
