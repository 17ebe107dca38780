"""Publisher traffic over HTTP: page views ask edges for ads, fire impression, click and conversion beacons.

Seeded, bounded in time, and it reports what it did, so a run can be checked against what the system
stored. Some beacons are deliberately replayed to prove they are counted once.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx

PLACEMENTS = ("news-top", "news-side", "sports-top", "tech-inline", "blog-footer")
FORMATS = ("300x250", "300x250", "300x250", "728x90")
GEOS = ("US-CA", "US-NY", "DE-BE", "FR-IDF", "GB-LND", "US-TX")
DEVICES = ("desktop", "mobile", "mobile", "tablet")
KEYWORDS = ("shoes", "running", "travel", "laptops", "coffee", "finance", "news", "football")


@dataclass
class TrafficStats:
    requests: int = 0
    fills: int = 0
    ads: int = 0
    no_fill: int = 0
    errors: int = 0
    impressions: int = 0
    replays: int = 0
    clicks: int = 0
    conversions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    campaigns_served: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class TrafficProfile:
    impression_rate: float = 0.9
    click_rate: float = 0.06
    conversion_rate: float = 0.3  # of clicks
    replay_rate: float = 0.03  # impressions fired twice on purpose


class Progress:
    """A one-line progress bar on stderr (a plain log line every few seconds when not a terminal)."""

    def __init__(self, total_s: float, label: str) -> None:
        self.total = total_s
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, stats: TrafficStats, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        done = min(1.0, (now - self.start) / self.total)
        bar = "#" * int(done * 30)
        line = (f"{self.label} [{bar:<30}] {done * 100:5.1f}%  requests={stats.requests} fills={stats.fills} "
                f"impressions={stats.impressions} clicks={stats.clicks} errors={stats.errors}")
        if self.tty:
            sys.stderr.write("\r" + line)
            if force:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


async def _page_view(client: httpx.AsyncClient, edges: Sequence[str], rng: random.Random,
                     profile: TrafficProfile, stats: TrafficStats) -> None:
    base = rng.choice(edges)
    params = {
        "placement": rng.choice(PLACEMENTS),
        "format": rng.choice(FORMATS),
        "slots": str(rng.choice((1, 1, 2, 3))),
        "user": f"u{int(rng.paretovariate(1.2)) % 5000}",
        "geo": rng.choice(GEOS),
        "device": rng.choice(DEVICES),
        "keywords": ",".join(rng.sample(KEYWORDS, 2)),
    }
    started = time.perf_counter()
    try:
        r = await client.get(f"{base}/v1/ads", params=params)
    except httpx.HTTPError:
        stats.errors += 1
        return
    stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    stats.requests += 1
    if r.status_code == 204:
        stats.no_fill += 1
        return
    if r.status_code != 200:
        stats.errors += 1
        return
    stats.fills += 1
    for ad in r.json()["ads"]:
        stats.ads += 1
        stats.campaigns_served[ad["campaign_id"]] = stats.campaigns_served.get(ad["campaign_id"], 0) + 1
        if rng.random() >= profile.impression_rate:
            continue
        await _beacon(client, "GET", ad["impression_url"], stats)
        stats.impressions += 1
        if rng.random() < profile.replay_rate:
            await _beacon(client, "POST", ad["impression_url"], stats)
            stats.replays += 1
        if rng.random() < profile.click_rate:
            try:
                c = await client.get(ad["click_url"], follow_redirects=False)
            except httpx.HTTPError:
                stats.errors += 1
                continue
            if c.status_code != 302:
                stats.errors += 1
                continue
            stats.clicks += 1
            if rng.random() < profile.conversion_rate:
                adclid = parse_qs(urlsplit(c.headers["location"]).query)["adclid"][0]
                body = {"conversion_id": f"order-{rng.getrandbits(48):x}", "adclid": adclid,
                        "value_micros": rng.randrange(5_000_000, 80_000_000)}
                try:
                    v = await client.post(f"{base}/v1/track/conversion", json=body)
                except httpx.HTTPError:
                    stats.errors += 1
                    continue
                if v.status_code == 204:
                    stats.conversions += 1
                else:
                    stats.errors += 1


async def _beacon(client: httpx.AsyncClient, method: str, url: str, stats: TrafficStats) -> None:
    try:
        r = await client.request(method, url)
        if r.status_code != 204:
            stats.errors += 1
    except httpx.HTTPError:
        stats.errors += 1


async def drive(edges: Sequence[str], *, duration_s: float, concurrency: int, seed: int,
                profile: TrafficProfile | None = None, progress: bool = True) -> TrafficStats:
    profile = profile or TrafficProfile()
    stats = TrafficStats()
    deadline = time.monotonic() + duration_s
    bar = Progress(duration_s, "traffic") if progress else None
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < deadline:
                await _page_view(client, edges, rng, profile, stats)
                if bar is not None:
                    bar.update(stats)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    if bar is not None:
        bar.update(stats, force=True)
    return stats
