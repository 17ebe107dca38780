"""The edge renders its JSON with orjson (FastJSONResponse): every body parses to what Starlette's encoder
gave, non-ASCII text and small floats included, and the filled answer keeps its headers."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from edge.app import _NO_STORE, FastJSONResponse, _NoStoreJSON, error
from edge.openapi import OPENAPI

BODIES = [
    {"auction_id": "a" * 24,
     "ads": [{"ad_id": "a-0", "campaign_id": "c1", "viewable_url": "https://e/v?t=x.k1.y",
              "creative": {"id": "k", "headline": "Café \u2013 50% off \u2713", "size": "300x250"}}]},
    {"dry_run": True, "snapshot_version": 7, "candidates": 3,
     "fates": [{"campaign_id": "c1", "fate": "won", "slot": 0, "ecpm_micros": 1_000_000, "ctr": 5e-06},
               {"campaign_id": "c2", "fate": "budget"}]},
    {"status": "ok", "snapshot_version": None, "snapshot_age_s": 0.25},
    OPENAPI,
]


def test_every_body_parses_to_what_the_standard_encoder_gave():
    for body in BODIES:
        assert json.loads(FastJSONResponse(body).body) == json.loads(JSONResponse(body).body)


def test_errors_and_the_filled_answer_keep_their_headers():
    refused = error(400, "invalid ad request: slots: must be an integer from 1 to 5",
                    [{"field": "slots", "message": "must be an integer from 1 to 5"}])
    assert refused.status_code == 400 and refused.headers["access-control-allow-origin"] == "*"
    assert json.loads(refused.body)["fields"][0]["field"] == "slots"
    filled = _NoStoreJSON(BODIES[0])
    expected = JSONResponse(BODIES[0], headers=_NO_STORE)
    assert sorted(filled.raw_headers) == sorted(expected.raw_headers)
