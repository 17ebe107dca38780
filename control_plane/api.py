"""The advertiser-facing HTTP API (starlette). Thin: parse, authenticate, call the models and the store.

Every handler resolves the caller's advertiser id from its bearer token first and addresses only that
advertiser's keys, so another tenant's object is a 404 (not a 403, which would confirm it exists).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane import models
from control_plane.auth import mint_token, new_id, parse_bearer, token_matches
from control_plane.dashboard import DASHBOARD_ROUTES
from control_plane.metrics import metrics
from control_plane.openapi import OPENAPI
from control_plane.spend import report as budget_report
from control_plane.state import ControlPlaneState
from control_plane.store import Conflict, NotFound, Versioned

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger(__name__)
CAMPAIGN_ID = re.compile(r"cmp[0-9a-f]{16}")
_REVISION = re.compile(r"[0-9]{1,19}")
_EPOCH_MS = re.compile(r"[0-9]{1,18}")


def error(status: int, message: str, fields: list[models.FieldError] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = [{"field": f.field, "message": f.message} for f in fields]
    return JSONResponse(body, status_code=status)


# What the campaign store (NATS JetStream's key-value buckets) raises when it cannot answer now. Either the
# request never reached JetStream or JetStream refused it (nothing was done: any call may be retried)...
STORE_NOT_REACHED: tuple[type[Exception], ...] = (
    nats.errors.NoServersError, nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError, nats.errors.OutboundBufferLimitError, nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)
# ...or no answer came in time (a stalled nats-server, a KV watch's replay that stalled): a write may have been
# stored all the same, since the request may still be applied after the timeout.
STORE_NO_ANSWER: tuple[type[Exception], ...] = (nats.errors.TimeoutError, nats.errors.StaleConnectionError)
STORE_UNAVAILABLE = STORE_NOT_REACHED + STORE_NO_ANSWER
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_LOG_EVERY_S = 10.0  # one warning per this many seconds during an outage, with how many it stands for
_quiet: dict[str, float | int] = {"at": -1e18, "since": 0}


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """Not a bare 500. A read, or a call that never reached the store: 503 with ``Retry-After`` (retrying is
    safe). A write that got no answer: 504 without it, since the change may have been stored all the same and
    a blind retry could apply it twice (a create would make a second campaign): read back first."""
    _warn(request, exc)
    if request.method in _SAFE_METHODS or isinstance(exc, STORE_NOT_REACHED):
        response = error(503, "campaign store unavailable; nothing was changed, retry later")
        response.headers["Retry-After"] = "1"
        return response
    return error(504, "campaign store did not confirm in time: the change may or may not have been stored; "
                      "read it back (or list your campaigns) before retrying it")


def _warn(request: Request, exc: Exception) -> None:
    now = time.monotonic()
    _quiet["since"] += 1
    if now - _quiet["at"] >= _LOG_EVERY_S:
        log.warning("campaign store unavailable (%d requests since the last warning), e.g. %s %s: %s",
                    _quiet["since"], request.method, request.url.path, type(exc).__name__)
        _quiet["at"], _quiet["since"] = now, 0


def state_of(request: Request) -> ControlPlaneState:
    return request.app.state.cp


async def authenticate(request: Request) -> str | Response:
    parsed = parse_bearer(request.headers.get("authorization"))
    if parsed is None:
        return error(401, "missing or malformed bearer token (Authorization: Bearer <advertiser_id>.<secret>)")
    advertiser_id, token = parsed
    advertiser = await state_of(request).store.get_advertiser(advertiser_id)
    if advertiser is None or not token_matches(token, advertiser["token_sha256"]):
        return error(401, "invalid bearer token")
    return advertiser_id


async def read_json(request: Request) -> Any | Response:
    limit = state_of(request).settings.cp_max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return error(413, f"request body larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return error(413, f"request body larger than {limit} bytes")
    if not body:
        return error(400, "request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers past Python's 4300-digit limit;
        # RecursionError is a body of deeply nested arrays ("[[[[..."), which fits well under the size limit.
        return error(400, f"request body is not valid JSON: {str(exc)[:200]}")


def present(v: Versioned) -> dict[str, Any]:
    return {**v.value, "revision": v.revision}


def campaign_response(v: Versioned, status: int = 200) -> JSONResponse:
    return JSONResponse(present(v), status_code=status, headers={"ETag": f'"{v.revision}"'})


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _new_creative(raw: Any, prefix: str = "") -> dict[str, Any]:
    creative = models.validate_creative(raw, prefix)
    creative["id"] = new_id("cr")
    creative["status"] = "active"
    return creative


async def create_campaign(request: Request) -> Response:
    advertiser_id = await authenticate(request)
    if isinstance(advertiser_id, Response):
        return advertiser_id
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    try:
        fields = models.validate_campaign(data, allow_baselines=state_of(request).settings.cp_allow_baselines)
        creatives_raw = data.get("creatives", []) if isinstance(data, dict) else []
        if not isinstance(creatives_raw, list) or len(creatives_raw) > 50:
            raise models.ValidationFailed([models.FieldError("creatives", "must be a list of at most 50")])
        creatives = [_new_creative(c, f"creatives[{i}].") for i, c in enumerate(creatives_raw)]
    except models.ValidationFailed as exc:
        return error(422, "validation failed", exc.errors)
    now = _now_iso()
    campaign = {
        **fields,
        "id": new_id("cmp"),
        "advertiser_id": advertiser_id,
        "status": models.Status.DRAFT.value,
        "creatives": creatives,
        "review": None,
        "created_at": now,
        "updated_at": now,
    }
    stored = await state_of(request).store.create_campaign(campaign)
    return campaign_response(stored, 201)


async def list_campaigns(request: Request) -> Response:
    advertiser_id = await authenticate(request)
    if isinstance(advertiser_id, Response):
        return advertiser_id
    items = await state_of(request).store.list_campaigns(advertiser_id)
    return JSONResponse({"campaigns": [present(v) for v in items]})


async def _load(request: Request) -> tuple[str, Versioned] | Response:
    advertiser_id = await authenticate(request)
    if isinstance(advertiser_id, Response):
        return advertiser_id
    campaign_id = request.path_params["campaign_id"]
    if not CAMPAIGN_ID.fullmatch(campaign_id):
        # Ids we never mint are simply not found (and never reach the KV key syntax).
        return error(404, f"campaign {campaign_id[:64]!r} not found")
    try:
        return advertiser_id, await state_of(request).store.get_campaign(advertiser_id, campaign_id)
    except NotFound:
        return error(404, f"campaign {campaign_id!r} not found")


async def get_campaign(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    return campaign_response(loaded[1])


def _expected_revision(request: Request, current: Versioned) -> int | Response:
    """The revision the client edits: from If-Match when given, else the one just read."""
    header = request.headers.get("if-match")
    if header is None:
        return current.revision
    cleaned = header.strip().strip('"')
    # ASCII digits only (str.isdigit also accepts '²', which int() refuses), and within JetStream's uint64.
    if not _REVISION.fullmatch(cleaned):
        return error(400, "If-Match must be a campaign revision such as \"12\"")
    return int(cleaned)


async def _write(request: Request, current: Versioned, updated: dict[str, Any], revision: int) -> Response:
    updated["updated_at"] = _now_iso()
    try:
        stored = await state_of(request).store.update_campaign(updated, revision)
    except Conflict:
        return error(409, "campaign was changed by another request; re-read it and retry with its revision")
    return campaign_response(stored)


async def patch_campaign(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    _, current = loaded
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    revision = _expected_revision(request, current)
    if isinstance(revision, Response):
        return revision
    if current.value["status"] == models.Status.COMPLETED.value:
        return error(409, "a completed campaign cannot be changed")
    try:
        fields = models.validate_campaign(
            data, existing=current.value, allow_baselines=state_of(request).settings.cp_allow_baselines)
        if current.value["status"] in (models.Status.ACTIVE.value, models.Status.PAUSED.value):
            # A live campaign serves the change at once, so it passes the same automatic rules as a submit.
            models.check_live_edit(fields)
    except models.ValidationFailed as exc:
        return error(422, "validation failed", exc.errors)
    # Yield once between read and write: concurrent PATCHes then really race on the revision, as they would
    # across replicas, and CAS decides.
    await asyncio.sleep(0)
    return await _write(request, current, {**current.value, **fields}, revision)


async def add_creative(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    _, current = loaded
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    if len(current.value.get("creatives", [])) >= 50:
        return error(422, "a campaign has at most 50 creatives",
                     [models.FieldError("creatives", "limit reached")])
    try:
        creative = _new_creative(data)
    except models.ValidationFailed as exc:
        return error(422, "validation failed", exc.errors)
    if current.value["status"] in (models.Status.ACTIVE.value, models.Status.PAUSED.value):
        # A creative added to a live campaign is reviewed on its own; a rejected one never serves.
        reasons = models.review_creative(creative)
        if reasons:
            creative["status"] = "rejected"
            creative["review_reasons"] = reasons
    updated = {**current.value, "creatives": [*current.value.get("creatives", []), creative]}
    response = await _write(request, current, updated, current.revision)
    if response.status_code == 200:
        response.status_code = 201
    return response


def lifecycle(action: str) -> Handler:
    async def handler(request: Request) -> Response:
        loaded = await _load(request)
        if isinstance(loaded, Response):
            return loaded
        _, current = loaded
        try:
            updated = models.apply_action(current.value, action)
        except models.TransitionRefused as exc:
            return error(409, str(exc))
        return await _write(request, current, updated, current.revision)

    return handler


def _parse_time(raw: str | None, name: str, default_ms: int) -> int | Response:
    if raw is None or raw == "":
        return default_ms
    if _EPOCH_MS.fullmatch(raw):
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return error(400, f"{name} must be epoch milliseconds or an ISO 8601 date-time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


MAX_BUCKETS = 10_000


async def campaign_metrics(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    _, current = loaded
    now_ms = int(state_of(request).settings.clock.now() * 1000)
    start = _parse_time(request.query_params.get("from"), "from", now_ms - 24 * 3600 * 1000)
    if isinstance(start, Response):
        return start
    end = _parse_time(request.query_params.get("to"), "to", now_ms + 60_000)
    if isinstance(end, Response):
        return end
    granularity = request.query_params.get("granularity", "hour")
    if granularity not in ("minute", "hour", "day"):
        return error(400, "granularity must be minute, hour or day")
    if end <= start:
        return error(400, "to must be after from")
    bucket_ms = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}[granularity]
    if (end - start) // bucket_ms > MAX_BUCKETS:
        return error(400, f"range too long for {granularity} granularity (at most {MAX_BUCKETS} buckets)")
    cp = state_of(request)
    if cp.reports is None:
        return error(503, "reporting store not configured in this process")
    rows = await cp.run_storage(cp.reports.campaign_metrics, current.value["id"], start, end, granularity)
    series = [r.as_dict() for r in rows]
    totals: dict[str, int] = {}
    for row in series:
        for key, value in row.items():
            if key not in ("bucket_start_ms", "ctr") and isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    impressions = totals.get("impressions", 0)
    totals_out: dict[str, Any] = {**totals, "ctr": (totals.get("clicks", 0) / impressions) if impressions else 0.0}
    return JSONResponse({
        "campaign_id": current.value["id"], "from": start, "to": end, "granularity": granularity,
        "totals": totals_out, "series": series,
        "budget": {"daily_budget_micros": current.value["daily_budget_micros"],
                   "total_budget_micros": current.value["total_budget_micros"]},
    })


async def create_postback_token(request: Request) -> Response:
    """Mint a token for server-to-server conversion postbacks to the edges. Shown once; only its hash is
    stored and shipped to the edges in the snapshot. The previous token keeps working until the next one."""
    advertiser_id = await authenticate(request)
    if isinstance(advertiser_id, Response):
        return advertiser_id
    token, token_hash = mint_token(advertiser_id)
    live = await state_of(request).store.add_postback_token(advertiser_id, token_hash)
    return JSONResponse({"token": token, "live_tokens": live,
                         "usage": "POST {edge}/v1/track/conversion with Authorization: Bearer <token>"},
                        status_code=201, headers={"Cache-Control": "no-store"})


_MAX_HOURS = 90 * 24


def _hours(raw: str | None, name: str, default: int) -> int | Response:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_HOURS:
        return error(400, f"{name} must be an integer number of hours from 1 to {_MAX_HOURS}")
    return int(raw)


async def attribution_report(request: Request) -> Response:
    """Multi-touch view of the advertiser's conversions: time-decay credit per campaign beside the last-touch
    credit that billing used. Conversions without a user key (no consent) cannot be shared and are left out."""
    advertiser_id = await authenticate(request)
    if isinstance(advertiser_id, Response):
        return advertiser_id
    cp = state_of(request)
    if cp.reports is None:
        return error(503, "reporting store not configured in this process")
    q = request.query_params
    model = q.get("model", "time_decay")
    if model != "time_decay":
        return error(400, "model must be time_decay (last-touch credit is always included)")
    now_ms = int(state_of(request).settings.clock.now() * 1000)
    lo = _parse_time(q.get("from"), "from", now_ms - 7 * 86_400_000)
    hi = _parse_time(q.get("to"), "to", now_ms)
    half_life = _hours(q.get("half_life_hours"), "half_life_hours", 24)
    lookback = _hours(q.get("lookback_hours"), "lookback_hours", 168)
    for parsed in (lo, hi, half_life, lookback):
        if isinstance(parsed, Response):
            return parsed
    assert isinstance(lo, int) and isinstance(hi, int) and isinstance(half_life, int) and isinstance(lookback, int)
    if hi <= lo:
        return error(400, "to must be after from")
    credit = await cp.run_storage(cp.reports.time_decay_attribution, advertiser_id, lo, hi,
                                  half_life_ms=half_life * 3_600_000, lookback_ms=lookback * 3_600_000)
    campaigns = [{"campaign_id": c, "conversions": round(n, 6), "value_micros": round(v)}
                 for c, (n, v) in credit.items()]
    return JSONResponse({"model": model, "half_life_hours": half_life, "lookback_hours": lookback,
                         "from_ms": lo, "to_ms": hi, "campaigns": campaigns})


async def admin_stats(request: Request) -> Response:
    cp = state_of(request)
    expected = cp.settings.cp_admin_token
    given = request.headers.get("authorization", "")
    import hmac

    if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        return error(401, "admin token required")
    if cp.reports is None:
        return error(503, "reporting store not configured in this process")
    stats = await cp.run_storage(cp.reports.stats)
    spend = await cp.run_storage(cp.reports.campaign_spend, None)
    reports = cp.reports

    async def stored(ids: list[str], window: tuple[int, int]) -> dict[str, int]:
        return await cp.run_storage(reports.campaign_spend, ids, window_s=window)

    assert cp.spend is not None
    budget = await budget_report(cp.builder.servable_ids(), cp.builder.terms, cp.store.get_grant_state, cp.spend,
                                 cp.grants.book, stored, cp.settings.clock.now())
    return JSONResponse({
        "store": stats.as_dict(),
        "spend_micros": spend,
        "collector": cp.collector_stats(),
        "snapshot": {"version": cp.builder.stats.version, "campaigns": cp.builder.stats.campaigns,
                     "size": cp.builder.stats.last_size, "build_ms": cp.builder.stats.last_build_ms},
        "granted_micros": cp.grants.granted_micros,
        "returned_micros": cp.grants.returned_micros,
        "reclaimed_micros": cp.grants.reclaimed_micros,
        "spend_sync": {"messages": cp.spend.messages, "bytes": cp.spend.bytes_in, "rejected": cp.spend.rejected,
                       "writers": len(cp.spend.heard)},
        "traffic_shape": {"weights": list(cp.builder.traffic_shape),
                          "decisions_seen": cp.shape.decisions_seen if cp.shape else 0},
        "click_model": None if cp.clicks is None else {
            "version": cp.clicks.version, "impressions": cp.clicks.model.seen, "clicks": cp.clicks.clicks,
            "creatives": len(cp.clicks.impressions), "creatives_with_variants": len(cp.clicks.variants.counts),
            "with_site": cp.clicks.with_site, "with_segments": cp.clicks.with_segments,
            "nonzero_weights": 0 if cp.builder.click_model is None
            else int((cp.builder.click_model.weights != 0).sum())},
        "conversion_rates": None if cp.conversions is None else {
            "clicks": cp.conversions.clicks, "conversions": cp.conversions.conversions,
            "campaigns": cp.conversions.campaigns},
        "budget": budget,
    })


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def livez(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    cp = state_of(request)
    dead = [t.get_name() for t in cp.tasks if t.done()]
    ready = cp.builder.stats.builds > 0 and not dead
    return JSONResponse({"ready": ready, "snapshot_version": cp.builder.stats.version, "stopped_tasks": dead,
                         "crashes": cp.crashes}, status_code=200 if ready else 503)


def by_method(**handlers: Handler) -> Handler:
    """One route per path, so a 405 lists every method the path has in its Allow header (Starlette answers
    from the first route whose path matches)."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


ROUTES = [
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/campaigns", by_method(GET=list_campaigns, POST=create_campaign), methods=["GET", "POST"]),
    Route("/v1/campaigns/{campaign_id}", by_method(GET=get_campaign, PATCH=patch_campaign),
          methods=["GET", "PATCH"]),
    Route("/v1/campaigns/{campaign_id}/creatives", add_creative, methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/submit", lifecycle("submit"), methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/pause", lifecycle("pause"), methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/resume", lifecycle("resume"), methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/complete", lifecycle("complete"), methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/metrics", campaign_metrics, methods=["GET"]),
    Route("/v1/postback-tokens", create_postback_token, methods=["POST"]),
    Route("/v1/attribution", attribution_report, methods=["GET"]),
    Route("/v1/admin/stats", admin_stats, methods=["GET"]),
    *DASHBOARD_ROUTES,
]
