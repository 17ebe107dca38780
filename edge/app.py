"""Publisher-facing HTTP endpoints of an edge PoP (starlette). Thin: parse, call the pure core, emit events.

Nothing on these paths awaits NATS or ClickHouse: events go into the publisher's buffer and budget comes
from the in-process ledger, so a request costs only the auction and the JSON.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.adrequest import RepeatedParameter, parse_ad_request, parse_pixel, query_dict
from edge.attribution import Model, NoCredit, Touch, attribute, user_key
from edge.auction import AdRequest, Reason, run_auction
from edge.audiences import fresh_segments, keyword_segments, to_record
from edge.budget import Hold
from edge.frequency import NOTHING_CAPPED, Capped, all_capped, capped, fields_to_record
from edge.ivt import BROWSER_KINDS, NO_ACTIVITY, VALID, BeaconContext, Verdict, classify, client_ip, ua_hash
from edge.ivt_store import IvtStoreUnavailable
from edge.limits import middleware as limits
from edge.metrics import render as render_metrics
from edge.openapi import OPENAPI
from edge.pages import PAGE_ROUTES
from edge.profile_store import ProfileStoreDown
from edge.settings import EdgeSettings
from edge.state import EdgeState, lifespan
from edge.tokens import sign, verify
from edge.touches import CLICK, VIEW
from replication.ctr_model import join_segments
from replication.events import (
    BidType,
    Event,
    EventType,
    InvalidReason,
    click_event_id,
    conversion_event_id,
    decision_event_id,
    encode_decision_row,
    impression_event_id,
    postback_conversion_event_id,
    viewable_event_id,
)
from replication.observability import RequestIdMiddleware
from replication.segments import retargeting_segment
from replication.snapshot import Snapshot, SnapshotCreative
from replication.variants import Variant, pick, segment_of

MAX_BODY = 16 * 1024
_CORS = {"Access-Control-Allow-Origin": "*"}
_NO_STORE = {**_CORS, "Cache-Control": "no-store"}


class FastJSONResponse(Response):
    """Starlette's JSONResponse rendered by orjson: compact UTF-8 JSON that parses to the same values (a
    test compares the edge's bodies) at a fraction of the standard encoder's cost, which was a tenth of an
    ad request's CPU. The bytes can differ: floats in the shortest form (``5e-6``, not ``5e-06``), NaN as
    null where the standard encoder raises. orjson refuses what the edge never sends: keys that are not
    ``str`` (an enum member included), ints of 2**64 and more, numpy scalars."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _NoStoreJSON(FastJSONResponse):
    """A JSON answer with ``_NO_STORE``'s headers, encoded once here rather than per response (the filled ad
    request's)."""

    _RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in _NO_STORE.items()]

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        assert headers is None, "the headers are fixed"
        self.raw_headers = [*self._RAW, (b"content-type", b"application/json"),
                            (b"content-length", str(len(self.body)).encode("latin-1"))]


def edge_of(request: Request) -> EdgeState:
    return request.app.state.edge


def error(status: int, message: str, fields: list[dict[str, str]] | None = None,
          headers: dict[str, str] | None = None) -> FastJSONResponse:
    body: dict[str, object] = {"error": message}
    if fields:
        body["fields"] = fields
    return FastJSONResponse(body, status_code=status, headers={**_CORS, **(headers or {})})


async def ads(request: Request) -> Response:
    st = edge_of(request)
    snapshot = st.snapshot
    if snapshot is None:
        st.metrics.requests.labels("not_ready").inc()
        return error(503, "no snapshot loaded yet")
    try:
        params = query_dict(request.scope["query_string"])
    except RepeatedParameter as repeated:
        st.metrics.requests.labels("bad_request").inc()
        return error(400, f"invalid ad request: {repeated.name}: given more than once",
                     [{"field": repeated.name, "message": "given more than once"}])
    parsed = parse_ad_request(params, st.settings.edge_max_slots, st.settings.edge_tcf_vendor_id)
    if isinstance(parsed, list):
        st.metrics.requests.labels("bad_request").inc()
        return error(400, f"invalid ad request: {parsed[0].field}: {parsed[0].message}",
                     [{"field": e.field, "message": e.message} for e in parsed])
    explain = params.get("explain", "")
    if explain not in ("", "0", "1", "false", "true"):
        st.metrics.requests.labels("bad_request").inc()
        return error(400, "invalid ad request: explain: must be 1 or true (or 0, false)",
                     [{"field": "explain", "message": "must be 1 or true (or 0, false)"}])
    now = st.settings.clock.now()
    explaining = explain in ("1", "true")
    scope: str | None = None  # whose campaigns a dry run shows, None: the admin's view of all
    if explaining:
        found = _explain_scope(st, snapshot, request.headers.get("authorization", ""))
        if isinstance(found, FastJSONResponse):
            return found
        scope = found
        if scope is not None and parsed.user:
            # An advertiser's dry run is the page's context alone: with a user's profile, its fates would tell
            # which segments (pages read elsewhere, other advertisers' lists) and caps any user id has.
            parsed = dataclasses.replace(parsed, user="")
    excluded, segments = await _personal(st, snapshot, parsed.user, now)
    if segments:  # the user's fresh behavioural segments target like the page's interests, and the model reads them
        parsed = dataclasses.replace(parsed, interests=tuple(dict.fromkeys((*parsed.interests, *segments))),
                                     segments=segments)
    if explaining:
        return _explain(st, snapshot, parsed, scope, now, excluded)
    if parsed.user and parsed.keywords and snapshot.segments_in_use:
        _record_segments(st, user_key(parsed.user), keyword_segments(parsed.keywords, snapshot.segments_in_use),
                         now)
    started = time.perf_counter()
    result = run_auction(snapshot, parsed, now_s=now, rng=st.rng, allowance=st.ledger.allowance_view(),
                         throttle=st.spend.throttle or None, capped=excluded)
    st.metrics.decision_seconds.observe(time.perf_counter() - started)
    for reason, count in result.reason_counts.items():
        st.metrics.filtered.labels(reason.value).inc(count)
    settings = st.settings
    auction_id = secrets.token_hex(12)
    # Signed into the tokens for the IVT rules: when the ad was served (click_too_fast), which browser asked
    # (ua_mismatch) and the slot's format (invalid_size).
    ivt_claims = {"iat": round(now, 3), "uah": ua_hash(request.headers.get("user-agent", "")), "fmt": parsed.format}
    if parsed.user:  # set only with consent (adrequest): the key that joins this user's touches to conversions
        ivt_claims["usr"] = user_key(parsed.user)
    out = []
    decisions: list[tuple[str, bytes]] = []  # (event id, encoded event)
    arms = snapshot.click_model.arms if snapshot.click_model is not None else {}
    segment = segment_of(parsed.device)
    # Every win's expected cost is held before its tokens are signed: the holds ride in them (claim "rsv").
    joined_segments = join_segments(parsed.segments)
    holds = st.ledger.reserve_many([(w.campaign.campaign_id, w.reserve_micros) for w in result.wins], now_s=now)
    for win, hold in zip(result.wins, holds, strict=True):
        if hold is None:  # refused: the allowance or the lease ran out since the auction read it
            st.metrics.filtered.labels("budget").inc()
            continue
        impression_id = f"{auction_id}-{win.slot}"
        c, k = win.campaign, win.creative
        common = {
            "imp": impression_id, "auc": auction_id, "cmp": c.campaign_id, "crv": k.creative_id,
            "adv": c.advertiser_id, "plc": parsed.placement, "bt": c.bid_type, "px": win.price_micros,
            "geo": parsed.geo, "dev": parsed.device, **ivt_claims,
        }
        shown = pick(k, arms, segment, st.variant_rng, snapshot.variant_memo)
        if shown is not None:  # the click token carries it too: a click credits the variant it was on
            common["var"] = shown.key
        common["rsv"] = hold  # rides in the tokens: the billable event settles exactly this reservation
        imp_token = sign({**common, "k": "i", "exp": int(now) + settings.edge_impression_ttl_s},
                         settings.edge_signing_keys)
        click_token = sign({**common, "k": "c", "url": k.landing_url, "exp": int(now) + settings.edge_click_ttl_s},
                           settings.edge_signing_keys)
        base = settings.edge_public_url
        out.append({
            "viewable_url": f"{base}/v1/track/viewable?t={imp_token}",
            "ad_id": impression_id,
            "campaign_id": c.campaign_id,
            "creative": _creative_json(k, shown),
            "impression_url": f"{base}/v1/track/impression?t={imp_token}",
            "click_url": f"{base}/v1/track/click?t={click_token}",
        })
        if settings.edge_decision_events:
            event_id = decision_event_id(impression_id)
            decisions.append((event_id, encode_decision_row(
                event_id, int(now * 1000), settings.edge_region, settings.edge_pop, auction_id, impression_id,
                c.campaign_id, k.creative_id, c.advertiser_id, parsed.placement, c.bid_type, win.price_micros,
                parsed.geo, parsed.device, ivt_claims.get("usr", ""), shown.key if shown is not None else "",
                parsed.site, joined_segments)))
    if decisions:  # batched across requests into few messages (EdgeState.emit_decisions)
        st.emit_decisions(decisions)
    if not out:
        reason = result.no_fill.value if result.no_fill else "budget"
        st.metrics.requests.labels("no_fill").inc()
        st.metrics.no_fill.labels(reason).inc()
        return Response(status_code=204, headers=_CORS)
    st.metrics.filled.inc()
    st.metrics.fills.inc(len(out))
    return _NoStoreJSON({"auction_id": auction_id, "ads": out})


def _creative_json(k: SnapshotCreative, shown: Variant | None) -> dict[str, str]:
    if shown is None:
        return {"id": k.creative_id, "headline": k.headline, "image_url": k.image_url, "cta": k.cta, "size": k.format}
    return {"id": k.creative_id, "headline": shown.headline, "image_url": shown.image_url, "cta": shown.cta,
            "size": k.format, "variant": shown.key}


async def _personal(st: EdgeState, snapshot: Snapshot, user: str, now: float) -> tuple[Capped, tuple[str, ...]]:
    """What this user has seen enough of, and the behavioural segments they are in, from one read of their
    profile. Only consenting users have a user id (``adrequest``); without one, or when no campaign caps or
    targets a segment, nothing is looked up."""
    if not user or not (snapshot.caps_of or snapshot.segments_in_use):
        return NOTHING_CAPPED, ()
    try:
        history = await st.profiles.history(user_key(user), now)
    except ProfileStoreDown:
        st.metrics.profile_store.labels("read", "failed").inc()
        return (NOTHING_CAPPED if st.settings.edge_frequency_fail_open else all_capped(snapshot.caps_of)), ()
    st.metrics.profile_store.labels("read", "ok").inc()
    if not history:
        return NOTHING_CAPPED, ()
    return capped(history, snapshot.caps_of, now), fresh_segments(history, now)


def _record_segments(st: EdgeState, key: str, segments: list[str], now: float) -> None:
    """Put the user in these segments, in the background (best effort, like a cap record)."""
    if segments:
        st.spawn(_record_profile(st, key, now, to_record(segments), "segments"))


async def _record_profile(st: EdgeState, key: str, now: float, fields: list[tuple[str, int, int]],
                          op: str) -> None:
    try:
        evicted = await st.profiles.record(key, now, fields)
    except ProfileStoreDown:
        st.metrics.profile_store.labels(op, "failed").inc()
        return
    st.metrics.profile_store.labels(op, "ok").inc()
    if evicted:  # a full profile gave up its stalest fields for these (edge.profile_store.MAX_FIELDS)
        st.metrics.profile_store.labels(op, "evicted").inc(evicted)


def _count_towards_caps(st: EdgeState, claims: dict, now: float) -> None:
    """A new, valid impression of a consenting user counts towards its campaign's caps (in the background:
    the beacon's answer waits only for its billing event)."""
    snapshot = st.snapshot
    caps = snapshot.caps_of.get(claims["cmp"]) if snapshot is not None and claims.get("usr") else None
    if not caps:
        return
    st.spawn(_record_profile(st, claims["usr"], now, fields_to_record(claims["cmp"], claims["crv"], caps), "record"))


def _explain_scope(st: EdgeState, snapshot: Snapshot, authorization: str) -> str | FastJSONResponse | None:
    """Whose campaigns a dry run may show: None (all) for the control plane's admin token, else the advertiser
    its postback token belongs to; 401 for anyone else."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token and "." not in token:
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not snapshot.admin_key or not hmac.compare_digest(digest, snapshot.admin_key):
            return error(401, "invalid admin token for explain")
        return None
    return _postback_advertiser(st, authorization)


def _explain(st: EdgeState, snapshot: Snapshot, parsed: AdRequest, scope: str | None, now: float,
             excluded: Capped) -> Response:
    """A dry run of the auction that says what happened to every candidate: an admin (``scope`` None) sees all
    of them; an advertiser every campaign of its own, those the request's targeting leaves out
    (not retrieved: placement, geo, device, keywords, interests, no creative of the format) as
    ``targeting``, and not what a win paid. Nothing is served, reserved, recorded or published."""
    result = run_auction(snapshot, parsed, now_s=now, rng=st.rng, allowance=st.ledger.allowance_view(),
                         throttle=st.spend.throttle or None, capped=excluded, explain=True)
    fates: list[dict[str, Any]] = [
        {"campaign_id": w.campaign.campaign_id, "fate": "won", "slot": w.slot, "creative_id": w.creative.creative_id,
         "ecpm_micros": w.ecpm_micros, "price_micros": w.price_micros, "ctr": round(w.ctr, 6)}
        for w in result.wins]
    fates += [{"campaign_id": cid, "fate": reason.value} for cid, reason in sorted(result.reasons.items())]
    candidates = result.candidates
    if scope is not None:
        own = _campaigns_of(snapshot).get(scope, ())
        fates = [f for f in fates if f["campaign_id"] in own]
        candidates = len(fates)
        for fate in fates:
            # A won price is the runner-up's eCPM: free, unlimited dry runs would map competitors' bids.
            fate.pop("price_micros", None)
        not_retrieved = own - {f["campaign_id"] for f in fates}
        fates += [{"campaign_id": cid, "fate": Reason.TARGETING.value} for cid in sorted(not_retrieved)]
    st.metrics.requests.labels("explain").inc()
    return _NoStoreJSON({"dry_run": True, "snapshot_version": snapshot.version, "candidates": candidates,
                         "fates": fates})


def _campaigns_of(snapshot: Snapshot) -> dict[str, frozenset[str]]:
    """Advertiser id -> its campaigns' ids in ``snapshot``, worked out once per snapshot by the first explain."""
    def build() -> dict[str, frozenset[str]]:
        by: dict[str, set[str]] = {}
        for c in snapshot.campaigns:
            by.setdefault(c.advertiser_id, set()).add(c.campaign_id)
        return {adv: frozenset(ids) for adv, ids in by.items()}
    assert snapshot.columns is not None  # built with every snapshot
    return snapshot.columns.memoized("campaigns-by-advertiser", build)


def _event(st: EdgeState, kind: EventType, event_id: str, claims: dict, now: float, *, cost: int,
           value: int = 0, reason: InvalidReason = InvalidReason.NONE) -> Event:
    return Event(
        event_id=event_id, type=kind, ts_ms=int(now * 1000), region=st.settings.edge_region,
        pop=st.settings.edge_pop, auction_id=claims["auc"], impression_id=claims["imp"],
        campaign_id=claims["cmp"], creative_id=claims["crv"], advertiser_id=claims["adv"],
        placement=claims["plc"], bid_type=BidType(claims["bt"]), price_micros=int(claims["px"]),
        cost_micros=cost, value_micros=value, geo=claims.get("geo", ""), device=claims.get("dev", ""),
        invalid_reason=reason, user_key=str(claims.get("usr", "")), variant=str(claims.get("var", "")),
    )


def _verify(st: EdgeState, token: str | None, kind: str, beacon: str) -> dict | FastJSONResponse:
    result = verify(token or "", st.settings.edge_signing_keys, now_s=st.settings.clock.now(), kind=kind)
    if not result.ok:
        st.metrics.beacons.labels(beacon, result.reason.value).inc()
        return error(403 if token else 400, f"invalid {beacon} token: {result.reason.value}")
    return dict(result.claims)


async def _ivt(st: EdgeState, request: Request, kind: EventType, claims: dict, now: float) -> Verdict | Response:
    """Count the beacon in the region's store and run the IVT rules. A Response (503) only when the store is
    down and the policy is fail-closed."""
    peer = request.client.host if request.client else ""
    ip = client_ip(peer, request.headers.get("x-forwarded-for", ""), st.settings.edge_trusted_proxy_hops)
    ctx = BeaconContext.from_request(kind, claims, ip=ip, headers=request.headers, params=request.query_params)
    history = NO_ACTIVITY
    if kind in BROWSER_KINDS:
        try:
            history = await st.ivt_store.observe(
                ip, ua_hash(ctx.user_agent), now,
                mark_impression=claims["imp"] if kind is EventType.IMPRESSION else "",
                check_impression=claims["imp"] if kind is EventType.CLICK else "",
            )
        except IvtStoreUnavailable:
            st.metrics.beacons.labels(kind.value, "ivt_store_down").inc()
            return error(503, "invalid-traffic store unavailable, retry later", headers={"Retry-After": "1"})
    return classify(ctx, now_s=now, lists=st.ivt_lists.current(now), history=history, policy=st.ivt_policy)


async def _record(st: EdgeState, request: Request, kind: EventType, event_id: str, claims: dict, *, bills: bool,
                  value: int = 0, inherited: InvalidReason = InvalidReason.NONE) -> Response | InvalidReason:
    """Deduplicate, classify (IVT), settle the budget and emit one beacon's event. Returns the reason it was
    recorded with (NONE: valid and billed if billable; also NONE for a duplicate), or a 503 when the event
    buffer is full, so the client retries instead of being told it was counted. Invalid traffic is recorded
    with its reason and never billed (mark, don't block); ``inherited`` marks an event invalid because the
    event it follows was (a conversion after an invalid click)."""
    beacon = kind.value
    if event_id in st.seen:  # before the store: a replayed beacon must not count towards the flood limits
        st.metrics.beacons.labels(beacon, "duplicate").inc()
        return await _durable(st, st.unacked.get(event_id), InvalidReason.NONE)
    now = st.settings.clock.now()
    verdict = await _ivt(st, request, kind, claims, now) if st.settings.edge_ivt_enabled else VALID
    if isinstance(verdict, Response):
        return verdict
    # Nothing below awaits, so the checks and the record are atomic on this worker's event loop. Check the id
    # again: a copy of this beacon may have been recorded while the store answered.
    if event_id in st.seen:
        st.metrics.beacons.labels(beacon, "duplicate").inc()
        return await _durable(st, st.unacked.get(event_id), InvalidReason.NONE)
    if not st.publisher_has_room():
        st.metrics.beacons.labels(beacon, "buffer_full").inc()
        return error(503, "event buffer full, retry later", headers={"Retry-After": "1"})
    cost = int(claims["px"]) if bills else 0
    reason = InvalidReason(verdict.reason.value) if verdict.reason.value else inherited
    if reason is not InvalidReason.NONE:
        if cost:
            st.ledger.release(claims["cmp"], _hold(claims))  # never billed: the reservation goes back now
    elif cost and not st.ledger.settle(claims["cmp"], cost, _hold(claims)):
        # Shown, but past what this process was granted: recorded with a reason, never billed.
        reason = InvalidReason.OVER_BUDGET
    durable = st.emit_durable(_event(st, kind, event_id, claims, now, cost=cost, value=value, reason=reason))
    st.seen.add(event_id)
    if kind is EventType.IMPRESSION and reason in (InvalidReason.NONE, InvalidReason.OVER_BUDGET):
        _count_towards_caps(st, claims, now)  # a real view counts, billed or not; invalid traffic does not
    st.metrics.beacons.labels(beacon, reason.value or "ok").inc()
    return await _durable(st, durable, reason)


def _hold(claims: dict) -> Hold | None:
    """The reservation hold signed into the ad's tokens (None in a token minted without one)."""
    rsv = claims.get("rsv")
    if not isinstance(rsv, list) or len(rsv) != 4:
        return None
    return (str(rsv[0]), int(rsv[1]), int(rsv[2]), int(rsv[3]))


async def _durable(st: EdgeState, acked: asyncio.Future[None] | None,
                   reason: InvalidReason) -> Response | InvalidReason:
    """Answer only once JetStream holds the event: a 204 must survive a kill -9 of this process. If the ack
    is slow (NATS stalled), answer 503: the event stays buffered and is retried under its id, and the
    client's retry waits on the same acknowledgement instead of creating a second event."""
    if acked is None or acked.done():
        return reason
    if not await st.ack_waits.wait(acked):
        return error(503, "event not yet durable, retry", headers={"Retry-After": "1"})
    return reason


async def impression(request: Request) -> Response:
    st = edge_of(request)
    claims = _verify(st, request.query_params.get("t"), "i", "impression")
    if isinstance(claims, FastJSONResponse):
        return claims
    recorded = await _record(st, request, EventType.IMPRESSION, impression_event_id(claims["imp"]), claims,
                             bills=claims["bt"] == "cpm")
    if isinstance(recorded, Response):
        return recorded
    await _remember(st, VIEW, claims, recorded)
    return Response(status_code=204, headers=_CORS)


_TOUCH_CLAIMS = ("imp", "auc", "cmp", "crv", "adv", "plc", "bt", "px", "geo", "dev", "usr", "rsv")


async def _remember(st: EdgeState, kind: str, claims: dict, reason: InvalidReason) -> None:
    """A valid rendered impression or click of a consenting user, kept for conversion attribution."""
    if reason is not InvalidReason.NONE or not claims.get("usr"):
        return
    touch = Touch(st.settings.clock.now(), {k: claims[k] for k in _TOUCH_CLAIMS if k in claims})
    try:
        await st.touches.record(kind, claims["adv"], claims["usr"], touch)
    except Exception:  # attribution is best effort; the billing event is already durable
        st.metrics.beacons.labels(kind, "touch_store_down").inc()


async def viewable(request: Request) -> Response:
    """The tag's MRC viewability beacon. Measured once per impression id; it bills nothing."""
    st = edge_of(request)
    claims = _verify(st, request.query_params.get("t"), "i", "viewable")
    if isinstance(claims, FastJSONResponse):
        return claims
    recorded = await _record(st, request, EventType.VIEWABLE, viewable_event_id(claims["imp"]), claims,
                             bills=False)
    return recorded if isinstance(recorded, Response) else Response(status_code=204, headers=_CORS)


def _with_param(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), (key, value)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


async def click(request: Request) -> Response:
    st = edge_of(request)
    claims = _verify(st, request.query_params.get("t"), "c", "click")
    if isinstance(claims, FastJSONResponse):
        return claims
    recorded = await _record(st, request, EventType.CLICK, click_event_id(claims["imp"]), claims,
                             bills=claims["bt"] == "cpc")
    if isinstance(recorded, Response):
        return recorded
    await _remember(st, CLICK, claims, recorded)
    # The landing page gets a signed attribution id, so a later conversion can only name a real click; it
    # carries the click's IVT reason, so a bot's click cannot turn into a billed conversion, and it expires
    # with the campaign's click-through window.
    attribution = {k: claims[k] for k in _TOUCH_CLAIMS if k in claims}
    attribution["ivr"] = recorded.value
    windows = _windows(st)(claims["cmp"])
    window_s = windows[0] if windows else st.settings.edge_attribution_window_s
    expires = int(st.settings.clock.now()) + window_s
    adclid = sign({**attribution, "k": "v", "exp": expires}, st.settings.edge_signing_keys)
    return RedirectResponse(_with_param(claims["url"], "adclid", adclid), status_code=302)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` (a chunked body has no Content-Length to check)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def _windows(st: EdgeState) -> Callable[[str], tuple[int, int] | None]:
    """A campaign's (click, view) attribution windows from the current snapshot."""
    snapshot = st.snapshot

    def lookup(campaign_id: str) -> tuple[int, int] | None:
        c = snapshot.campaign(campaign_id) if snapshot else None
        return (c.click_window_s, c.view_window_s) if c else None

    return lookup


def _postback_advertiser(st: EdgeState, header: str) -> str | FastJSONResponse:
    """The advertiser a server-to-server postback's bearer token belongs to (checked against the token hashes
    in the snapshot, in constant time), or a 401."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    advertiser_id, sep, _secret = token.partition(".")
    if scheme.lower() != "bearer" or not sep or len(token) > 256:
        return error(401, "malformed postback token (Authorization: Bearer <advertiser_id>.<secret>)")
    hashes = st.snapshot.postback_keys.get(advertiser_id, ()) if st.snapshot else ()
    digest = hashlib.sha256(token.encode()).hexdigest()
    if not any(hmac.compare_digest(digest, h) for h in hashes):  # no early exit on the first mismatch
        return error(401, "invalid postback token")
    return advertiser_id


def _conversion_fields(data: Any) -> list[dict[str, str]]:
    fields = []
    conversion_id, adclid, user, value = (data.get("conversion_id"), data.get("adclid"), data.get("user_id"),
                                          data.get("value_micros", 0))
    if not isinstance(conversion_id, str) or not 1 <= len(conversion_id) <= 128:
        fields.append({"field": "conversion_id", "message": "required string of 1-128 characters"})
    if (adclid is None) == (user is None):
        fields.append({"field": "adclid", "message": "send exactly one of adclid (the id the landing page "
                                                     "received) and user_id (authenticated postbacks)"})
    elif adclid is not None and (not isinstance(adclid, str) or not adclid):
        fields.append({"field": "adclid", "message": "must be the adclid string the landing page received"})
    elif user is not None and (not isinstance(user, str) or not 1 <= len(user) <= 128):
        fields.append({"field": "user_id", "message": "must be a string of 1-128 characters"})
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**15:
        fields.append({"field": "value_micros", "message": "integer micros from 0 to 10^15"})
    return fields


async def conversion(request: Request) -> Response:
    """A conversion: the advertiser's pixel (no credentials: it must carry the adclid of a real click, and a
    click converts at most once), or an authenticated server-to-server postback (deduplicated by the
    advertiser's conversion id; credited to the named adclid, or to the user's last click within the
    campaign's click window, else last view within its view window)."""
    st = edge_of(request)
    auth = request.headers.get("authorization")
    advertiser = _postback_advertiser(st, auth) if auth is not None else None
    if isinstance(advertiser, FastJSONResponse):
        return advertiser
    body = await _read_limited(request, MAX_BODY)
    if body is None:
        return error(413, f"body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError):  # also "[[[[..." nesting and integers past 4300 digits
        return error(400, "body must be a JSON object")
    if not isinstance(data, dict):
        return error(400, "body must be a JSON object with conversion_id, adclid or user_id, and value_micros")
    fields = _conversion_fields(data)
    if fields:
        return error(400, f"invalid conversion: {fields[0]['field']}: {fields[0]['message']}", fields)
    if advertiser is None and data.get("user_id") is not None:
        return error(401, "a conversion by user_id needs an authenticated postback "
                          "(Authorization: Bearer <postback token>)")
    value = data.get("value_micros", 0)
    model = Model.LAST_CLICK
    if data.get("adclid") is not None:
        claims = _verify(st, data["adclid"], "v", "conversion")
        if isinstance(claims, FastJSONResponse):
            return claims
        if advertiser is not None and claims["adv"] != advertiser:
            return error(403, "adclid belongs to another advertiser's ad")
        try:
            inherited = InvalidReason(claims.get("ivr", ""))
        except ValueError:
            inherited = InvalidReason.NONE
    else:
        assert advertiser is not None
        try:
            last_click, last_view = await st.touches.last(advertiser, user_key(data["user_id"]))
        except Exception:
            st.metrics.beacons.labels("conversion", "touch_store_down").inc()
            return error(503, "attribution store unavailable, retry later", headers={"Retry-After": "1"})
        credit = attribute(st.settings.clock.now(), last_click, last_view, _windows(st))
        if isinstance(credit, NoCredit):
            st.metrics.beacons.labels("conversion", "not_attributed").inc()
            return FastJSONResponse({"attributed": False, "reason": credit.value})
        claims, model, inherited = dict(credit.touch.claims), credit.model, InvalidReason.NONE
    event_id = (postback_conversion_event_id(advertiser, data["conversion_id"]) if advertiser is not None
                else conversion_event_id(claims["imp"]))
    recorded = await _record(st, request, EventType.CONVERSION, event_id, claims,
                             bills=claims["bt"] == "cpa", value=value, inherited=inherited)
    if isinstance(recorded, Response):
        return recorded
    if advertiser is None:
        return Response(status_code=204)
    return FastJSONResponse({"attributed": True, "model": model.value, "campaign_id": claims["cmp"],
                         "event_id": event_id, "invalid_reason": recorded.value or None})


async def openapi(request: Request) -> Response:
    return FastJSONResponse(OPENAPI)


async def livez(request: Request) -> Response:
    return FastJSONResponse({"status": "ok"})


# A 1x1 transparent GIF: what an <img> retargeting pixel expects back.
_PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


async def pixel(request: Request) -> Response:
    """An advertiser's retargeting pixel: a consenting user joins the advertiser's list ``seg``, which its
    campaigns target as ``rt-<seg>`` from the next ad request on (the record is awaited). Without consent
    nothing is recorded; a store failure is counted and the pixel still answers."""
    st = edge_of(request)
    hit = parse_pixel(request.query_params, st.settings.edge_tcf_vendor_id)
    if isinstance(hit, list):
        st.metrics.profile_store.labels("pixel", "bad_request").inc()
        return error(400, f"invalid pixel: {hit[0].field}: {hit[0].message}",
                     [{"field": e.field, "message": e.message} for e in hit])
    headers = _NO_STORE
    if not hit.user:
        st.metrics.profile_store.labels("pixel", "no_consent").inc()
        return Response(_PIXEL_GIF, media_type="image/gif", headers=headers)
    segment = retargeting_segment(hit.advertiser_id, hit.segment)
    snapshot = st.snapshot
    if snapshot is None or segment not in snapshot.segments_in_use:
        # Only lists a live campaign targets are kept (as for keyword segments): anyone can fire a pixel,
        # and a profile must not fill up with names nobody will ever read.
        st.metrics.profile_store.labels("pixel", "unused_list").inc()
        return Response(_PIXEL_GIF, media_type="image/gif", headers=headers)
    await _record_profile(st, user_key(hit.user), st.settings.clock.now(), to_record([segment]), "pixel")
    return Response(_PIXEL_GIF, media_type="image/gif", headers=headers)


async def readyz(request: Request) -> Response:
    st = edge_of(request)
    snap = st.snapshot
    body = {
        "ready": snap is not None,
        "region": st.settings.edge_region,
        "pop": st.settings.edge_pop,
        "snapshot_version": snap.version if snap else None,
        "campaigns": len(snap.campaigns) if snap else 0,
        "revisions": {c.campaign_id: c.revision for c in snap.campaigns} if snap else {},
        # The click model the auction ranks with (None: the creatives' prior CTRs).
        "click_model_version": snap.click_model.version if snap and snap.click_model else None,
    }
    return FastJSONResponse(body, status_code=200 if snap else 503)


async def metrics(request: Request) -> Response:
    st = edge_of(request)
    await st.publisher_metrics()
    return Response(render_metrics(st.metrics), media_type=CONTENT_TYPE_LATEST)


# The requests a PoP gets most: a page view brings an ad request and two to four beacons.
HOT_ROUTES = [
    Route("/v1/ads", ads, methods=["GET"]),
    Route("/v1/track/impression", impression, methods=["GET", "POST"]),
    Route("/v1/track/viewable", viewable, methods=["GET", "POST"]),
    Route("/v1/track/click", click, methods=["GET"]),
]
ROUTES = [
    *HOT_ROUTES,
    Route("/v1/track/conversion", conversion, methods=["POST"]),
    Route("/v1/pixel", pixel, methods=["GET"]),
    *PAGE_ROUTES,
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


class HotRoutes:
    """The innermost middleware: answers ``HOT_ROUTES`` itself with one dict lookup, skipping the Router's
    regex scan of every route and the exception middleware's per-request wrappers. Those endpoints raise no
    HTTPException (they return their errors), and anything else they raise still reaches Starlette's
    ServerErrorMiddleware as a 500; the request id and the request limits run before, as for every route."""

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.endpoints = {(method, r.path): r.endpoint for r in routes for method in r.methods or ()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get((scope.get("method"), scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)


def create_app(settings: EdgeSettings | None = None) -> Starlette:
    settings = settings or EdgeSettings.from_env()
    # Access lines per ad request are off by default: at thousands of requests a second they cost more than
    # the auction. Request ids are always on.
    middleware = [Middleware(RequestIdMiddleware, access_log_enabled=settings.edge_access_log), *limits(),
                  Middleware(HotRoutes, routes=HOT_ROUTES)]
    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=middleware)
    app.state.settings = settings
    return app
