"""The multi-region budget day simulator: one virtual day of publisher traffic, replayed over HTTP against a
running stack, and the per-campaign spend it produced compared with each campaign's daily budget.

The product promises that no campaign spends more than 1% over its daily budget, also while a region is cut
off. To measure that against other budget controllers on *identical* traffic, every controller runs in the
same stack: each synthetic campaign is created once per controller (its targeting keyword is namespaced by
the controller, ``t{topic}-{controller}``) and each synthetic page view is sent once per controller with that
controller's keyword, from the same region and user, at the same time, with the same beacon delays.

The servers run on a virtual clock (``virtual = v0 + (real - r0) * speed``); a campaign day is a virtual UTC
day and every timestamp this module reports is virtual. The parts:

- pure and seeded: the configuration, the diurnal traffic shape, the trace (a non-homogeneous Poisson process
  over the day, sampled by thinning), the campaigns and their demand, and the metrics;
- I/O: creating the campaigns over the control plane's API, the driver that replays the trace in real time
  against the edges (and runs the fault hooks), and reading spend back from the control plane.

It drives the system over HTTP only and imports none of it (ARCHITECTURE §3).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import msgpack

from loadtest.traffic import Progress

DAY_S = 86_400
HOUR_S = 3_600

# Traffic weight per UTC hour of the virtual day: a night trough around 03-04h, a working-day plateau and an
# evening peak at 20h. The servers' pacing plan prior should be configured with the same shape, so a
# controller that follows it exactly spends along ``plan_fractions()``.
DIURNAL: tuple[float, ...] = (
    0.38, 0.27, 0.20, 0.16, 0.16, 0.20, 0.30, 0.46, 0.60, 0.68, 0.72, 0.75,
    0.77, 0.75, 0.72, 0.71, 0.73, 0.79, 0.87, 0.95, 1.00, 0.96, 0.80, 0.58,
)

# Budget controller -> the campaign fields that select it. Every controller's campaigns live in one stack.
CONTROLLERS: Mapping[str, Mapping[str, str]] = {
    "ours": {"pacing": "even"},
    "asap": {"pacing": "asap"},
    "naive": {"pacing": "asap", "budget_mode": "counter"},
    "linkedin": {"pacing": "step"},
}

REGION_COUNTRY = {"eu": "DE", "us": "US", "ap": "JP"}
DEVICES = ("desktop", "mobile", "mobile", "tablet")
AD_FORMAT = "300x250"
# A campaign whose demand is at least this multiple of its budget is "constrained": the budget, not the
# traffic, should bind, so utilisation and plan tracking are judged on these.
CONSTRAINED_RATIO = 1.2


@dataclass(frozen=True)
class SimConfig:
    seed: int = 1
    regions: tuple[str, ...] = ("eu", "us", "ap")
    region_weights: tuple[float, ...] | None = None  # None: every region the same share of traffic
    controllers: tuple[str, ...] = tuple(CONTROLLERS)
    speed: float = 288.0  # virtual seconds per real second: a day in 5 real minutes
    campaigns: int = 12  # per controller
    # Campaign i targets topic i % topics, and a page view asks for one slot per campaign on its topic, so a
    # campaign could win every page view of its topic. Fewer topics (more campaigns per topic) give each
    # campaign more impressions per budget, so one stray impression is a smaller share of its budget.
    topics: int = 3
    topic_zipf: float = 0.3  # topic popularity ~ 1 / rank^s
    peak_views_per_s: float = 20.0  # page views per *real* second across regions at the diurnal peak
    placements: int = 200
    placement_zipf: float = 1.1
    users: int = 50_000
    user_zipf: float = 1.05
    cpm_median_micros: int = 2_500_000  # CPM bids, log-normal
    cpm_sigma: float = 0.35
    reserve_cpm_micros: int = 100_000  # must equal the control plane's ADSERVER_CP_RESERVE_CPM_MICROS
    budget_sigma: float = 0.8  # log-normal budgets; they only order campaigns before demand scaling
    ratio_lo: float = 0.5  # demand / daily budget spans ratio_lo .. ratio_hi
    ratio_hi: float = 4.0
    share_constrained: float = 0.75  # of campaigns, demand >= 1.3 x budget; the rest <= 1.1 x
    render_prob: float = 0.9  # the page renders its ads (and fires impression beacons)
    ctr: float = 0.02  # per rendered ad
    delay_median_s: float = 2.0  # impression beacon after the ad response, virtual seconds, log-normal
    delay_sigma: float = 0.9
    late_prob: float = 0.03  # a tail of beacons minutes late (tab in background, flaky mobile network)
    late_median_s: float = 150.0
    late_sigma: float = 0.7
    max_delay_s: float = 800.0  # below the edge's impression token TTL (900 s)
    click_delay_median_s: float = 8.0  # click after the impression
    # driver
    concurrency: int = 256  # HTTP requests in flight at most
    timeout_s: float = 5.0
    beacon_attempts: int = 5  # a publisher tag retries a beacon to a dead PoP on another PoP of its region
    beacon_retry_wait_s: float = 0.25  # real seconds, doubling
    drain_timeout_s: float = 60.0  # real seconds to wait for late beacons after the day ends

    @property
    def day_real_s(self) -> float:
        return DAY_S / self.speed

    @property
    def campaigns_per_topic(self) -> int:
        return math.ceil(self.campaigns / self.topics)

    def validate(self) -> None:
        errors = []
        if not self.regions:
            errors.append("regions: at least one")
        if self.region_weights is not None and len(self.region_weights) != len(self.regions):
            errors.append("region_weights: one per region")
        unknown = [c for c in self.controllers if c not in CONTROLLERS]
        if unknown or not self.controllers:
            errors.append(f"controllers: choose from {sorted(CONTROLLERS)}, got {list(self.controllers)}")
        if self.speed <= 0:
            errors.append("speed: must be > 0")
        if self.campaigns < 1 or self.topics < 1 or self.topics > self.campaigns:
            errors.append("campaigns, topics: need 1 <= topics <= campaigns")
        elif self.campaigns_per_topic > 6:
            errors.append("campaigns / topics: at most 6 campaigns per topic (the edge's slot limit)")
        if self.peak_views_per_s <= 0:
            errors.append("peak_views_per_s: must be > 0")
        if not 0 < self.ratio_lo < 1.1 or self.ratio_hi < 1.3:
            errors.append("ratio_lo, ratio_hi: need 0 < ratio_lo < 1.1 and ratio_hi >= 1.3")
        if not 0 <= self.share_constrained <= 1:
            errors.append("share_constrained: in [0, 1]")
        if not 0 < self.render_prob <= 1 or not 0 <= self.ctr <= 1:
            errors.append("render_prob in (0, 1], ctr in [0, 1]")
        if errors:
            raise ValueError("bad SimConfig: " + "; ".join(errors))


# --- the virtual clock --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VirtualClock:
    """The servers' clock mapping: virtual = v0 + (real - r0) * speed, both in epoch seconds (time.time())."""

    r0: float
    v0: float
    speed: float

    def virtual_at(self, real_s: float) -> float:
        return self.v0 + (real_s - self.r0) * self.speed

    def real_at(self, virtual_s: float) -> float:
        return self.r0 + (virtual_s - self.v0) / self.speed

    def now(self) -> float:
        return self.virtual_at(time.time())


def next_midnight(virtual_s: float) -> float:
    """The first UTC midnight at or after ``virtual_s``."""
    return math.ceil(virtual_s / DAY_S) * DAY_S


def fmt_virtual(virtual_s: float) -> str:
    return datetime.fromtimestamp(virtual_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- the plan --------------------------------------------------------------------------------------------


def plan_fractions(shape: Sequence[float] = DIURNAL) -> tuple[float, ...]:
    """The planned cumulative fraction of the daily budget spent by the end of each hour."""
    total = sum(shape)
    out, acc = [], 0.0
    for w in shape:
        acc += w
        out.append(acc / total)
    return tuple(out)


# --- the trace --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    """One page view. Slot-indexed fields are the same for every controller: the ad in slot ``i`` of any
    controller's answer gets impression delay ``imp_delays_s[i]`` and is clicked if ``clicks[i]``."""

    t_s: float  # virtual seconds since the day's start
    region: str
    edge_pick: float  # in [0, 1): which of the region's edges the page asks first
    placement: str
    user: str
    device: str
    topic: int
    rendered: bool
    clicks: tuple[bool, ...]
    imp_delays_s: tuple[float, ...]
    click_delays_s: tuple[float, ...]


def _zipf_cum(n: int, s: float) -> list[float]:
    acc, out = 0.0, []
    for rank in range(1, n + 1):
        acc += 1.0 / rank**s
        out.append(acc)
    return out


def _draw(rng: random.Random, cum: list[float]) -> int:
    return bisect.bisect_right(cum, rng.random() * cum[-1])


def _delay(rng: random.Random, cfg: SimConfig) -> float:
    if rng.random() < cfg.late_prob:
        d = rng.lognormvariate(math.log(cfg.late_median_s), cfg.late_sigma)
    else:
        d = rng.lognormvariate(math.log(cfg.delay_median_s), cfg.delay_sigma)
    return min(d, cfg.max_delay_s)


def generate_trace(cfg: SimConfig, shape: Sequence[float] = DIURNAL) -> tuple[Arrival, ...]:
    """Page views over one virtual day: Poisson with intensity peak * shape[hour] (per virtual second
    ``peak_views_per_s / speed``), sampled by thinning a homogeneous process at the peak rate."""
    cfg.validate()
    rng = random.Random(cfg.seed * 1_000_003 + 17)
    peak_shape = max(shape)
    rate = cfg.peak_views_per_s / cfg.speed  # per virtual second at the peak
    placements = _zipf_cum(cfg.placements, cfg.placement_zipf)
    users = _zipf_cum(cfg.users, cfg.user_zipf)
    topics = _zipf_cum(cfg.topics, cfg.topic_zipf)
    region_cum = list(_cumsum(cfg.region_weights or [1.0] * len(cfg.regions)))
    slots = cfg.campaigns_per_topic
    out: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= DAY_S:
            break
        if rng.random() * peak_shape >= shape[int(t // HOUR_S)]:
            continue
        rendered = rng.random() < cfg.render_prob
        out.append(Arrival(
            t_s=t,
            region=cfg.regions[_draw(rng, region_cum)],
            edge_pick=rng.random(),
            placement=f"pub{_draw(rng, placements)}",
            user=f"u{_draw(rng, users)}",
            device=DEVICES[rng.randrange(len(DEVICES))],
            topic=_draw(rng, topics),
            rendered=rendered,
            clicks=tuple(rendered and rng.random() < cfg.ctr for _ in range(slots)),
            imp_delays_s=tuple(_delay(rng, cfg) for _ in range(slots)),
            click_delays_s=tuple(rng.lognormvariate(math.log(cfg.click_delay_median_s), 0.8) for _ in range(slots)),
        ))
    return tuple(out)


def _cumsum(values: Sequence[float]) -> list[float]:
    acc, out = 0.0, []
    for v in values:
        acc += v
        out.append(acc)
    return out


def keyword(topic: int, controller: str) -> str:
    return f"t{topic}-{controller}"


def slots_for_topic(cfg: SimConfig, topic: int) -> int:
    return sum(1 for i in range(cfg.campaigns) if i % cfg.topics == topic)


def ad_params(arrival: Arrival, controller: str, cfg: SimConfig) -> dict[str, str]:
    """The GET /v1/ads query of one page view for one controller: only the keyword differs by controller."""
    params = {
        "placement": arrival.placement,
        "format": AD_FORMAT,
        "slots": str(slots_for_topic(cfg, arrival.topic)),
        "user": arrival.user,
        "device": arrival.device,
        "keywords": keyword(arrival.topic, controller),
    }
    country = REGION_COUNTRY.get(arrival.region)
    if country:
        params["geo"] = country
    return params


def expected_http_rate(cfg: SimConfig, shape: Sequence[float] = DIURNAL) -> dict[str, float]:
    """Requests per real second the driver sends: ad requests, and all requests (ads + beacons), at the
    diurnal peak and on average over the day. A campaign whose demand is r times its budget fills about 1/r
    of the slots it could (its budget binds), so beacons are fewer than slots."""
    weights = _zipf_cum(cfg.topics, cfg.topic_zipf)
    probs = [b - a for a, b in zip([0.0, *weights[:-1]], weights, strict=True)]
    mean_slots = sum(p / weights[-1] * slots_for_topic(cfg, t) for t, p in enumerate(probs))
    served = statistics.fmean(min(1.0, 1 / r) for r in _target_ratios(cfg.campaigns, cfg, random.Random(0)))
    per_view = len(cfg.controllers) * (1 + mean_slots * served * cfg.render_prob * (1 + cfg.ctr))
    mean_shape = sum(shape) / len(shape) / max(shape)
    return {
        "peak_ad_requests_per_s": cfg.peak_views_per_s * len(cfg.controllers),
        "peak_requests_per_s": cfg.peak_views_per_s * per_view,
        "mean_requests_per_s": cfg.peak_views_per_s * per_view * mean_shape,
        "page_views_per_day": cfg.peak_views_per_s * cfg.day_real_s * mean_shape,
    }


# --- campaigns ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """One synthetic campaign (the same for every controller)."""

    index: int
    topic: int
    advertiser: int  # index into the advertiser tokens: distinct for campaigns sharing a topic
    cpm_micros: int
    price_micros: int  # expected clearing price per impression when every campaign on its topic serves
    demand_micros: int  # what it would spend on the trace if never throttled
    daily_budget_micros: int

    @property
    def demand_ratio(self) -> float:
        return self.demand_micros / self.daily_budget_micros

    @property
    def budget_impressions(self) -> float:
        """The daily budget in impressions at the expected price: one stray impression is 1/this of it."""
        return self.daily_budget_micros / self.price_micros


def _target_ratios(n: int, cfg: SimConfig, rng: random.Random) -> list[float]:
    """n demand/budget ratios, ascending, stratified: the unconstrained share log-uniform in [lo, 1.1], the
    constrained share in [1.3, hi]; the gap keeps every campaign clearly on one side of CONSTRAINED_RATIO."""
    n_high = round(n * cfg.share_constrained)
    n_low = n - n_high

    def strata(k: int, lo: float, hi: float) -> list[float]:
        return [math.exp(math.log(lo) + (j + rng.random()) / k * (math.log(hi) - math.log(lo))) for j in range(k)]

    return strata(n_low, cfg.ratio_lo, 1.1) + strata(n_high, 1.3, cfg.ratio_hi)


def impression_price(bid_cpm: int, runner_up_cpm: int, reserve_cpm: int) -> int:
    """Micros one impression costs a CPM campaign in the edge's second-price auction."""
    return max(1, math.ceil(min(bid_cpm, max(runner_up_cpm, reserve_cpm)) / 1000))


def token_price(url: str) -> int | None:
    """The impression price an ad's beacon URL carries: the ``px`` claim of its token (``edge/tokens.py``:
    base64url(msgpack(claims)).kid.mac), read without verifying it, as any holder of the URL can."""
    payload = parse_qs(urlsplit(url).query).get("t", [""])[0].split(".")[0]
    try:
        return int(msgpack.unpackb(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["px"])
    except Exception:  # not a token this code understands: no price
        return None


def generate_campaigns(cfg: SimConfig, trace: Sequence[Arrival]) -> tuple[CampaignSpec, ...]:
    """Bids, prices, demand and budgets. Campaigns on a topic all serve on each of its page views (one slot
    each), ranked by bid; each pays the next lower bid (or the reserve), as the edge's second-price auction
    does. Demand is that price times the topic's rendered page views. Budgets are drawn log-normal, which
    orders the campaigns (the biggest budget gets the lowest ratio), and then set to demand / target ratio."""
    cfg.validate()
    rng = random.Random(cfg.seed * 1_000_003 + 29)
    n = cfg.campaigns
    topics = [i % cfg.topics for i in range(n)]
    floor = 2 * cfg.reserve_cpm_micros
    bids = [max(floor, int(round(rng.lognormvariate(math.log(cfg.cpm_median_micros), cfg.cpm_sigma), -3)))
            for _ in range(n)]
    rendered = Counter(a.topic for a in trace if a.rendered)
    price = [0] * n
    for topic in range(cfg.topics):
        members = sorted((i for i in range(n) if topics[i] == topic), key=lambda i: -bids[i])
        for rank, i in enumerate(members):
            runner_up = bids[members[rank + 1]] if rank + 1 < len(members) else 0
            price[i] = impression_price(bids[i], runner_up, cfg.reserve_cpm_micros)
    demand = [rendered[topics[i]] * price[i] for i in range(n)]
    raw_budget = [rng.lognormvariate(0.0, cfg.budget_sigma) for _ in range(n)]
    ratios = _target_ratios(n, cfg, rng)
    ratio = [0.0] * n
    for rank, i in enumerate(sorted(range(n), key=lambda i: -raw_budget[i])):
        ratio[i] = ratios[rank]
    return tuple(
        CampaignSpec(index=i, topic=topics[i], advertiser=i // cfg.topics, cpm_micros=bids[i],
                     price_micros=price[i], demand_micros=demand[i],
                     daily_budget_micros=max(1_000, round(demand[i] / ratio[i])))
        for i in range(n)
    )


def campaign_body(spec: CampaignSpec, controller: str, day_start_v: float) -> dict[str, Any]:
    """The POST /v1/campaigns body of ``spec`` under ``controller``. The total budget is far above the daily
    one so only the daily budget binds."""
    return {
        "name": f"daysim {controller} c{spec.index}",
        "bid_type": "cpm",
        "max_bid_micros": spec.cpm_micros,
        "daily_budget_micros": spec.daily_budget_micros,
        "total_budget_micros": spec.daily_budget_micros * 100,
        "timezone": "UTC",
        "start": datetime.fromtimestamp(day_start_v, UTC).isoformat(),
        "targeting": {"keywords": [keyword(spec.topic, controller)]},
        "creatives": [{"headline": f"daysim c{spec.index}", "size": AD_FORMAT,
                       "image_url": "https://img.example.com/daysim.png",
                       "landing_url": "https://shop.example.com/daysim"}],
        **CONTROLLERS[controller],
    }


@dataclass(frozen=True, slots=True)
class LiveCampaign:
    spec: CampaignSpec
    controller: str
    campaign_id: str
    token: str


EdgesSource = Mapping[str, Sequence[str]] | Callable[[], Mapping[str, Sequence[str]]]


def _edges_now(edges: EdgesSource) -> Mapping[str, Sequence[str]]:
    return edges() if callable(edges) else edges


async def _request(client: httpx.AsyncClient, method: str, url: str, *, token: str | None = None,
                   json: Any = None, attempts: int = 4) -> httpx.Response:
    """A control-plane call, retried on transport errors and 5xx; 4xx raises at once with the message."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for attempt in range(attempts):
        try:
            r = await client.request(method, url, headers=headers, json=json)
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        else:
            if r.status_code < 500 or attempt == attempts - 1:
                if r.status_code >= 400:
                    raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:500]}")
                return r
        await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


async def create_campaigns(client: httpx.AsyncClient, cfg: SimConfig, specs: Sequence[CampaignSpec], *,
                           cp_url: str, tokens: Sequence[str], edges: EdgesSource, day_start_v: float,
                           ready_timeout_s: float = 60.0) -> list[LiveCampaign]:
    """Create and submit every campaign once per controller, then wait until every edge serves all of them
    (its /readyz ``revisions`` holds each id)."""
    need = max(s.advertiser for s in specs) + 1
    if len(tokens) < need:
        raise ValueError(f"need at least {need} advertiser tokens (campaigns sharing a topic must belong to "
                         f"different advertisers, or the edge shows only one of them per page); got {len(tokens)}")
    sem = asyncio.Semaphore(8)

    async def one(spec: CampaignSpec, controller: str) -> LiveCampaign:
        token = tokens[spec.advertiser]
        async with sem:
            r = await _request(client, "POST", f"{cp_url}/v1/campaigns", token=token,
                               json=campaign_body(spec, controller, day_start_v))
            cid = r.json()["id"]
            r = await _request(client, "POST", f"{cp_url}/v1/campaigns/{cid}/submit", token=token)
        if r.json().get("status") != "active":
            raise RuntimeError(f"campaign {controller} c{spec.index} not approved: {r.json().get('review')}")
        return LiveCampaign(spec, controller, cid, token)

    live = list(await asyncio.gather(*(one(s, c) for c in cfg.controllers for s in specs)))
    ids = {c.campaign_id for c in live}
    deadline = time.monotonic() + ready_timeout_s
    pending = {url for urls in _edges_now(edges).values() for url in urls}
    unreachable: Counter[str] = Counter()
    while pending:
        for url in sorted(pending):
            try:
                r = await client.get(f"{url}/readyz", timeout=2)
                if ids <= set(r.json().get("revisions", {})):
                    pending.discard(url)
            except httpx.TransportError:
                # A PoP that is down loads the current snapshot whole when it comes back: do not wait for it.
                unreachable[url] += 1
                if unreachable[url] >= 20:
                    sys.stderr.write(f"[daysim] {url} unreachable; not waiting for it to load the campaigns\n")
                    pending.discard(url)
            except (httpx.HTTPError, ValueError):
                pass
        if not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sorted(pending)} never served all {len(ids)} daysim campaigns")
        await asyncio.sleep(0.1)
    return live


# --- the driver --------------------------------------------------------------------------------------------


@dataclass
class ControllerTraffic:
    page_views: int = 0  # ad requests the schedule asked for
    requests: int = 0  # ad requests answered (any status)
    fills: int = 0  # 200
    no_fill: int = 0  # 204
    ads: int = 0
    failed: int = 0  # page views that got no answer on any edge of the region, or a final non-200/204
    conn_errors: int = 0  # attempts (ads and beacons) that failed in transport
    http_5xx: int = 0  # attempts answered 5xx
    retries: int = 0  # extra attempts on another edge
    impressions: int = 0  # impression beacons answered 204
    impressions_failed: int = 0
    clicks: int = 0  # click beacons answered 302
    clicks_failed: int = 0
    beacon_status: Counter[str] = field(default_factory=Counter)  # final non-success statuses, by kind:code


@dataclass
class DriverStats:
    by_controller: dict[str, ControllerTraffic]
    ad_lag_s: list[float] = field(default_factory=list)  # sent - scheduled, real seconds
    beacon_lag_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    no_edge: int = 0  # page views for a region with no edge at that moment
    # (controller, campaign index) -> micros it would have paid on the rendered page views it could have
    # served, at the prices it met there (see DayDriver._realized_demand)
    realized_demand: Counter[tuple[str, int]] = field(default_factory=Counter)

    # Totals under the names loadtest.traffic.Progress reads.
    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.by_controller.values())

    @property
    def fills(self) -> int:
        return sum(c.fills for c in self.by_controller.values())

    @property
    def impressions(self) -> int:
        return sum(c.impressions for c in self.by_controller.values())

    @property
    def clicks(self) -> int:
        return sum(c.clicks for c in self.by_controller.values())

    @property
    def errors(self) -> int:
        return sum(c.failed + c.impressions_failed + c.clicks_failed for c in self.by_controller.values())

    def summary(self) -> dict[str, Any]:
        sent = sum(c.requests + c.conn_errors + c.impressions + c.impressions_failed + c.clicks + c.clicks_failed
                   for c in self.by_controller.values())
        return {
            "wall_s": round(self.wall_s, 1),
            "requests_per_s": round(sent / self.wall_s, 1) if self.wall_s else 0.0,
            "ad_lag_ms": lag_summary(self.ad_lag_s),
            "beacon_lag_ms": lag_summary(self.beacon_lag_s),
            "no_edge": self.no_edge,
            "controllers": {k: {**asdict(v), "beacon_status": dict(v.beacon_status)}
                            for k, v in self.by_controller.items()},
        }


def lag_summary(lags_s: Sequence[float]) -> dict[str, float]:
    if not lags_s:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "late_over_1s": 0}
    ordered = sorted(lags_s)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": round(ordered[-1] * 1000, 1),
            "late_over_1s": sum(1 for x in ordered if x > 1.0)}


@dataclass(frozen=True)
class FaultEvent:
    name: str
    fraction: float
    scheduled_v: float
    started_v: float
    finished_v: float
    error: str | None = None


Fault = tuple[float, Callable[[], Awaitable[None]]]


class DayProgress(Progress):
    """loadtest.traffic's progress line, plus the virtual time of day and the schedule lag."""

    def __init__(self, total_s: float, label: str, clock: VirtualClock) -> None:
        super().__init__(total_s, label)
        self.clock = clock

    def update(self, stats: DriverStats, force: bool = False) -> None:  # type: ignore[override]
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        done = min(1.0, (now - self.start) / self.total)
        bar = "#" * int(done * 30)
        recent = stats.ad_lag_s[-500:]
        lag = max(recent) * 1000 if recent else 0.0
        line = (f"{self.label} [{bar:<30}] {done * 100:5.1f}% {fmt_virtual(self.clock.now())[11:16]} "
                f"requests={stats.requests} fills={stats.fills} impressions={stats.impressions} "
                f"clicks={stats.clicks} errors={stats.errors} lag={lag:.0f}ms")
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            if force:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def rebase(url: str, base: str) -> str:
    """``url`` with the scheme and host of ``base`` (a beacon retried on another PoP of the region)."""
    u, b = urlsplit(url), urlsplit(base)
    return urlunsplit((b.scheme, b.netloc, u.path, u.query, u.fragment))


def _origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


class DayDriver:
    """Replays a trace in real time through the virtual clock: each arrival's ad requests go out at its
    scheduled moment without waiting for earlier ones; beacons are scheduled from the ad response."""

    def __init__(self, cfg: SimConfig, trace: Sequence[Arrival], *, client: httpx.AsyncClient,
                 edges: EdgesSource, clock: VirtualClock, day_start_v: float, label: str = "daysim",
                 progress: bool = True, live: Sequence[LiveCampaign] = ()) -> None:
        self.cfg = cfg
        # campaign id -> spec, and topic -> its campaigns' specs: what a response's ads mean
        self._spec_of = {c.campaign_id: c.spec for c in live}
        self._topic_specs: dict[int, list[CampaignSpec]] = {}
        for spec in {c.spec.index: c.spec for c in live}.values():
            self._topic_specs.setdefault(spec.topic, []).append(spec)
        self.trace = trace
        self.client = client
        self.edges = edges
        self.clock = clock
        self.day_start_v = day_start_v
        self.stats = DriverStats({c: ControllerTraffic() for c in cfg.controllers})
        self.faults: list[FaultEvent] = []
        self.label = label
        self.progress = progress
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._mono_offset = time.time() - time.monotonic()

    def _mono_at_virtual(self, virtual_s: float) -> float:
        return self.clock.real_at(virtual_s) - self._mono_offset

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pick(self, region: str, pick: float, exclude: Sequence[str]) -> str | None:
        urls = [u for u in _edges_now(self.edges).get(region, ()) if u not in exclude]
        return urls[min(len(urls) - 1, int(pick * len(urls)))] if urls else None

    async def run(self, faults: Sequence[Fault] = ()) -> DriverStats:
        bar = DayProgress(self.cfg.day_real_s, self.label, self.clock) if self.progress else None
        if bar is not None:
            bar.start = self._mono_at_virtual(self.day_start_v)
        started = time.monotonic()
        for fraction, action in faults:
            self._spawn(self._fault(fraction, action))
        for arrival in self.trace:
            target = self._mono_at_virtual(self.day_start_v + arrival.t_s)
            wait = target - time.monotonic()
            # Behind schedule, still yield: the requests already spawned must go out, not pile up.
            await asyncio.sleep(max(0.0, wait))
            for controller in self.cfg.controllers:
                self._spawn(self._page_view(arrival, controller, target))
            if bar is not None:
                bar.update(self.stats)
        end = self._mono_at_virtual(self.day_start_v + DAY_S)
        while (wait := end - time.monotonic()) > 0:
            await asyncio.sleep(min(wait, 1.0))
            if bar is not None:
                bar.update(self.stats)
        drain_deadline = time.monotonic() + self.cfg.drain_timeout_s
        while self._tasks and time.monotonic() < drain_deadline:
            await asyncio.wait(set(self._tasks), timeout=1.0)
            if bar is not None:
                bar.update(self.stats)
        for task in list(self._tasks):
            task.cancel()
        self.stats.wall_s = time.monotonic() - started
        if bar is not None:
            bar.update(self.stats, force=True)
        return self.stats

    async def _fault(self, fraction: float, action: Callable[[], Awaitable[None]]) -> None:
        name = getattr(action, "label", None) or getattr(action, "__name__", None) or repr(action)
        scheduled_v = self.day_start_v + fraction * DAY_S
        wait = self._mono_at_virtual(scheduled_v) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        started_v = self.clock.now()
        error = None
        sys.stderr.write(f"\n[daysim] fault {name} at {fmt_virtual(started_v)} ({fraction:.0%} of the day)\n")
        try:
            await action()
        except Exception as exc:  # a failed fault is recorded, the day goes on
            error = f"{type(exc).__name__}: {exc}"
            sys.stderr.write(f"[daysim] fault {name} failed: {error}\n")
        self.faults.append(FaultEvent(str(name), fraction, scheduled_v, started_v, self.clock.now(), error))

    async def _page_view(self, arrival: Arrival, controller: str, target: float) -> None:
        st = self.stats.by_controller[controller]
        st.page_views += 1
        params = ad_params(arrival, controller, self.cfg)
        tried: list[str] = []
        response: httpx.Response | None = None
        while response is None:
            base = self._pick(arrival.region, arrival.edge_pick, tried)
            if base is None:
                if not tried:
                    self.stats.no_edge += 1
                st.failed += 1
                return
            if tried:
                st.retries += 1
            tried.append(base)
            async with self._sem:
                if len(tried) == 1:
                    self.stats.ad_lag_s.append(time.monotonic() - target)
                try:
                    r = await self.client.get(f"{base}/v1/ads", params=params)
                except httpx.TransportError:
                    st.conn_errors += 1
                    continue
            st.requests += 1
            if r.status_code >= 500:  # e.g. 503 from a restarted PoP without a snapshot yet: try another
                st.http_5xx += 1
                continue
            response = r
        if response.status_code == 204:
            st.no_fill += 1
            self._realized_demand(arrival, controller, [])
            return
        if response.status_code != 200:
            st.failed += 1
            return
        st.fills += 1
        answered = time.monotonic()
        ads = response.json()["ads"]
        self._realized_demand(arrival, controller, ads)
        for slot, ad in enumerate(ads):
            st.ads += 1
            if not arrival.rendered or slot >= len(arrival.imp_delays_s):
                continue
            imp_at = answered + arrival.imp_delays_s[slot] / self.cfg.speed
            click_at = imp_at + arrival.click_delays_s[slot] / self.cfg.speed if arrival.clicks[slot] else None
            self._spawn(self._ad_events(ad, arrival.region, st, imp_at, click_at))

    def _realized_demand(self, arrival: Arrival, controller: str, ads: Sequence[Mapping[str, Any]]) -> None:
        """What each of the topic's campaigns would have paid on this page view had it served: its bid against
        the highest lower bid among the campaigns that did serve (or the reserve). The campaign generator's
        demand assumes every lower bidder always serves; when pacing or spent budgets keep them out, the
        price falls toward the reserve and the budget may become unreachable. Summed over a day this is the
        demand a campaign really met, which utilisation is judged against."""
        if not arrival.rendered or not self._spec_of:
            return
        paid = {self._spec_of[a["campaign_id"]].index: token_price(a.get("impression_url", ""))
                for a in ads if a.get("campaign_id") in self._spec_of}
        specs = self._topic_specs.get(arrival.topic, [])
        bids = sorted((x.cpm_micros for x in specs if x.index in paid), reverse=True)
        reserve = self.cfg.reserve_cpm_micros
        for spec in specs:
            price = paid.get(spec.index)
            if price is None:  # it did not serve: price it against the lower bidders that did
                # (a lower bound: a candidate that ranked but could not afford its slot also sets a price)
                runner_up = next((b for b in bids if b < spec.cpm_micros), 0)
                price = impression_price(spec.cpm_micros, runner_up, reserve)
            self.stats.realized_demand[(controller, spec.index)] += price

    async def _ad_events(self, ad: Mapping[str, Any], region: str, st: ControllerTraffic, imp_at: float,
                         click_at: float | None) -> None:
        await asyncio.sleep(max(0.0, imp_at - time.monotonic()))
        if await self._beacon(ad["impression_url"], region, 204, "impression", st, imp_at):
            st.impressions += 1
        else:
            st.impressions_failed += 1
        if click_at is None:
            return
        await asyncio.sleep(max(0.0, click_at - time.monotonic()))
        if await self._beacon(ad["click_url"], region, 302, "click", st, click_at):
            st.clicks += 1
        else:
            st.clicks_failed += 1

    async def _beacon(self, url: str, region: str, expect: int, kind: str, st: ControllerTraffic,
                      target: float) -> bool:
        """Fire a beacon; when its PoP is gone (transport error or 5xx), wait and retry on another PoP of the
        region, as a publisher tag would. A 4xx is final (expired or forged token, ...)."""
        failed_base: str | None = None
        wait = self.cfg.beacon_retry_wait_s
        for attempt in range(self.cfg.beacon_attempts):
            if attempt:
                st.retries += 1
                await asyncio.sleep(wait)
                wait *= 2
                base = self._pick(region, 0.0, [failed_base] if failed_base else []) or \
                    self._pick(region, 0.0, [])
                if base is None:
                    continue
                target_url = rebase(url, base)
            else:
                target_url = url
            async with self._sem:
                if attempt == 0:
                    self.stats.beacon_lag_s.append(time.monotonic() - target)
                try:
                    r = await self.client.get(target_url, follow_redirects=False)
                except httpx.TransportError:
                    st.conn_errors += 1
                    failed_base = _origin(target_url)
                    continue
            if r.status_code == expect:
                return True
            if r.status_code >= 500:
                st.http_5xx += 1
                failed_base = _origin(target_url)
                continue
            st.beacon_status[f"{kind}:{r.status_code}"] += 1
            return False
        st.beacon_status[f"{kind}:gave_up"] += 1
        return False


# --- outcomes and metrics ----------------------------------------------------------------------------------


def overspend_pct(spend: int, budget: int) -> float:
    return max(0, spend - budget) / budget * 100


def utilisation_pct(spend: int, budget: int, demand: int) -> float:
    """Spend as a share of what the campaign could have spent: its budget, or its demand when that is less."""
    cap = min(budget, demand)
    return spend / cap * 100 if cap > 0 else 0.0


def rmse_vs_plan(hourly_spend: Sequence[int], budget: int, plan: Sequence[float] | None = None) -> float:
    """RMSE over the day's 24 hour ends of (cumulative spend / budget) - planned cumulative fraction."""
    plan = plan_fractions() if plan is None else plan
    if len(hourly_spend) != len(plan):
        raise ValueError(f"need {len(plan)} hourly points, got {len(hourly_spend)}")
    acc, sq = 0, 0.0
    for spent, planned in zip(hourly_spend, plan, strict=True):
        acc += spent
        sq += (acc / budget - planned) ** 2
    return math.sqrt(sq / len(plan))


def stranded_pct(granted: int | None, spent: int | None, budget: int) -> float | None:
    """Allowance granted to the regions but never spent, as a percentage of the daily budget."""
    if granted is None or spent is None:
        return None
    return max(0, granted - spent) / budget * 100


@dataclass(frozen=True)
class CampaignOutcome:
    controller: str
    campaign_id: str
    spec: CampaignSpec
    hourly_spend: tuple[int, ...]  # 24 virtual hours
    granted: int | None = None
    allowance_spent: int | None = None
    # What it could have spent at the prices it met (DayDriver._realized_demand); None: not measured, the
    # generator's nominal demand stands in.
    realized_demand: int | None = None

    @property
    def demand(self) -> int:
        return self.spec.demand_micros if self.realized_demand is None else self.realized_demand

    @property
    def spend(self) -> int:
        return sum(self.hourly_spend)

    @property
    def budget(self) -> int:
        return self.spec.daily_budget_micros

    @property
    def constrained(self) -> bool:
        return self.demand >= CONSTRAINED_RATIO * self.budget

    @property
    def overspend_pct(self) -> float:
        return overspend_pct(self.spend, self.budget)

    @property
    def utilisation_pct(self) -> float:
        return utilisation_pct(self.spend, self.budget, self.demand)

    @property
    def rmse_vs_plan(self) -> float:
        return rmse_vs_plan(self.hourly_spend, self.budget)

    @property
    def stranded_pct(self) -> float | None:
        return stranded_pct(self.granted, self.allowance_spent, self.budget)

    def cumulative_fractions(self) -> list[float]:
        return [x / self.budget for x in _cumsum(self.hourly_spend)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller, "campaign_id": self.campaign_id, "index": self.spec.index,
            "topic": self.spec.topic, "cpm_micros": self.spec.cpm_micros, "price_micros": self.spec.price_micros,
            "daily_budget_micros": self.budget, "demand_micros": self.spec.demand_micros,
            "demand_ratio": round(self.spec.demand_ratio, 3), "realized_demand_micros": self.realized_demand,
            "realized_demand_ratio": round(self.demand / self.budget, 3), "constrained": self.constrained,
            "budget_impressions": round(self.spec.budget_impressions, 1),
            "spend_micros": self.spend, "hourly_spend_micros": list(self.hourly_spend),
            "overspend_pct": round(self.overspend_pct, 3), "utilization_pct": round(self.utilisation_pct, 2),
            "rmse_vs_plan": round(self.rmse_vs_plan, 4),
            "granted_micros": self.granted, "allowance_spent_micros": self.allowance_spent,
            "stranded_pct": None if self.stranded_pct is None else round(self.stranded_pct, 3),
        }


@dataclass(frozen=True)
class ControllerSummary:
    controller: str
    campaigns: int
    constrained_campaigns: int
    max_overspend_pct: float  # over all its campaigns
    overspent_campaigns: int  # campaigns more than 1% over budget
    mean_utilization_pct: float | None  # over constrained campaigns
    rmse_vs_plan: float | None  # mean over constrained campaigns (others cannot follow a budget plan)
    rmse_vs_plan_all: float | None  # mean over all campaigns
    max_stranded_pct: float | None  # None when the control plane does not report allowances
    spend_micros: int
    budget_micros: int


def summarise(outcomes: Sequence[CampaignOutcome]) -> dict[str, ControllerSummary]:
    by: dict[str, list[CampaignOutcome]] = {}
    for o in outcomes:
        by.setdefault(o.controller, []).append(o)
    out = {}
    for controller, group in by.items():
        constrained = [o for o in group if o.constrained]
        stranded = [o.stranded_pct for o in group if o.stranded_pct is not None]
        out[controller] = ControllerSummary(
            controller=controller,
            campaigns=len(group),
            constrained_campaigns=len(constrained),
            max_overspend_pct=max(o.overspend_pct for o in group),
            overspent_campaigns=sum(1 for o in group if o.overspend_pct > 1.0),
            mean_utilization_pct=statistics.fmean(o.utilisation_pct for o in constrained) if constrained else None,
            rmse_vs_plan=statistics.fmean(o.rmse_vs_plan for o in constrained) if constrained else None,
            rmse_vs_plan_all=statistics.fmean(o.rmse_vs_plan for o in group),
            max_stranded_pct=max(stranded) if stranded else None,
            spend_micros=sum(o.spend for o in group),
            budget_micros=sum(o.budget for o in group),
        )
    return out


def hourly_from_series(series: Sequence[Mapping[str, Any]], day_start_ms: int) -> tuple[int, ...]:
    """24 hourly spends from a metrics ``series`` (buckets of any granularity up to an hour)."""
    hours = [0] * 24
    for row in series:
        h = (int(row["bucket_start_ms"]) - day_start_ms) // (HOUR_S * 1000)
        if 0 <= h < 24:
            hours[h] += int(row.get("spend_micros", 0))
    return tuple(hours)


async def fetch_outcomes(client: httpx.AsyncClient, live: Sequence[LiveCampaign], *, cp_url: str,
                         admin_token: str | None, day_start_v: float,
                         budget_snapshot: Mapping[str, Any] | None = None,
                         realized: Mapping[tuple[str, int], int] | None = None) -> list[CampaignOutcome]:
    """Each campaign's hourly spend over the virtual day, and its allowance granted/spent when the control
    plane's admin stats report them (``budget: {campaign_id: {granted, spent}}``). ``budget_snapshot``: that
    section as read just before the day ended (after midnight the control plane reports the next day)."""
    start_ms = int(day_start_v * 1000)
    end_ms = start_ms + DAY_S * 1000
    budget: Mapping[str, Any] = budget_snapshot or {}
    if admin_token and budget_snapshot is None:
        try:
            r = await _request(client, "GET", f"{cp_url}/v1/admin/stats", token=admin_token)
            budget = r.json().get("budget") or {}
        except (httpx.HTTPError, RuntimeError, ValueError):
            budget = {}
    sem = asyncio.Semaphore(8)

    async def one(c: LiveCampaign) -> CampaignOutcome:
        async with sem:
            r = await _request(client, "GET", f"{cp_url}/v1/campaigns/{c.campaign_id}/metrics?from={start_ms}"
                                              f"&to={end_ms}&granularity=hour", token=c.token)
        entry = budget.get(c.campaign_id)
        granted = int(entry["granted"]) if isinstance(entry, Mapping) and "granted" in entry else None
        spent = int(entry["spent"]) if isinstance(entry, Mapping) and "spent" in entry else None
        return CampaignOutcome(c.controller, c.campaign_id, c.spec,
                               hourly_from_series(r.json().get("series", []), start_ms), granted, spent,
                               None if realized is None else int(realized.get((c.controller, c.spec.index), 0)))

    return list(await asyncio.gather(*(one(c) for c in live)))


# --- one day, end to end -----------------------------------------------------------------------------------


@dataclass
class DayResult:
    name: str  # the scenario
    config: SimConfig
    day_start_v: float
    campaigns: list[CampaignOutcome]
    controllers: dict[str, ControllerSummary]
    traffic: dict[str, Any]
    faults: list[FaultEvent]
    fault_windows: tuple[tuple[float, float, str], ...] = ()  # (from, to) as fractions of the day, label
    live: list[LiveCampaign] = field(default_factory=list, repr=False)  # reusable for a following day

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "day_start": fmt_virtual(self.day_start_v), "seed": self.config.seed,
            "speed": self.config.speed, "controllers": {k: asdict(v) for k, v in self.controllers.items()},
            "traffic": self.traffic, "faults": [asdict(f) for f in self.faults],
            "fault_windows": [list(w) for w in self.fault_windows],
            "campaigns": [o.as_dict() for o in self.campaigns],
        }


async def run_day(
    cfg: SimConfig,
    *,
    name: str,
    edges: EdgesSource,
    cp_url: str,
    tokens: Sequence[str],
    admin_token: str | None,
    clock: VirtualClock | tuple[float, float, float],
    day_start_v: float | None = None,
    campaigns: Sequence[LiveCampaign] | None = None,
    faults: Sequence[Fault] = (),
    fault_windows: Sequence[tuple[float, float, str]] = (),
    settle: Callable[[], Awaitable[None]] | None = None,
    budget_snapshot: Mapping[str, Any] | None = None,
    progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DayResult:
    """Simulate one virtual day against a running stack and measure every controller's spend.

    ``edges``: {region: [edge base URL]}, a mapping the caller mutates or a callable read at every request,
    so a killed edge can be removed and a restarted one added. ``tokens``: advertiser bearer tokens, at least
    ``cfg.campaigns_per_topic``. ``clock``: the servers' (r0, v0, speed). ``day_start_v``: the virtual UTC
    midnight the day starts at; by default the first one after the campaigns exist. ``campaigns``: the
    ``live`` of an earlier day's result to reuse (same cfg) instead of creating new ones. ``faults``:
    (fraction of the day, coroutine function) run at that virtual time. ``settle``: awaited after the day,
    before spend is read, until every event is stored.
    """
    cfg.validate()
    clock = clock if isinstance(clock, VirtualClock) else VirtualClock(*clock)
    if abs(clock.speed - cfg.speed) > 1e-9:
        raise ValueError(f"clock speed {clock.speed} differs from SimConfig.speed {cfg.speed}")
    trace = generate_trace(cfg)
    specs = generate_campaigns(cfg, trace)
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    timeout = httpx.Timeout(cfg.timeout_s, pool=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:
        if day_start_v is None:
            day_start_v = next_midnight(clock.now() + (1.0 if campaigns else 10.0) * cfg.speed)
        if campaigns is None:
            live = await create_campaigns(client, cfg, specs, cp_url=cp_url, tokens=tokens, edges=edges,
                                          day_start_v=day_start_v)
        else:
            live = list(campaigns)
        if clock.now() > day_start_v:
            raise RuntimeError(f"the day was to start at {fmt_virtual(day_start_v)} but it is already "
                               f"{fmt_virtual(clock.now())}: start the virtual clock earlier")
        rate = expected_http_rate(cfg)
        sys.stderr.write(
            f"[daysim] {name}: {len(trace)} page views x {len(cfg.controllers)} controllers, "
            f"{len(live)} campaigns, day {fmt_virtual(day_start_v)} in {cfg.day_real_s:.0f} s real, "
            f"about {rate['mean_requests_per_s']:.0f} requests/s (peak {rate['peak_requests_per_s']:.0f})\n")
        driver = DayDriver(cfg, trace, client=client, edges=edges, clock=clock, day_start_v=day_start_v,
                           label=name, progress=progress, live=live)
        stats = await driver.run(faults)
        if settle is not None:
            await settle()
        outcomes = await fetch_outcomes(client, live, cp_url=cp_url, admin_token=admin_token,
                                        day_start_v=day_start_v, budget_snapshot=budget_snapshot or None,
                                        realized=stats.realized_demand)
    return DayResult(name=name, config=cfg, day_start_v=day_start_v, campaigns=outcomes,
                     controllers=summarise(outcomes), traffic=stats.summary(),
                     faults=sorted(driver.faults, key=lambda f: f.started_v),
                     fault_windows=tuple(fault_windows), live=live)
