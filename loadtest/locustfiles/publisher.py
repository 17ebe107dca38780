"""Publisher traffic against one edge PoP: what the tag on a page does, one page view per task.

A page view asks ``GET /v1/ads`` with the parameters a real tag sends (placement, format, slots, geo, device,
page keywords, user, page url); then, per ad returned, the tag fires the impression beacon when it renders
(most ads), the viewability beacon when the ad has been in view (fewer), and a visitor sometimes clicks (a
302 to the landing page, not followed: the landing page is the advertiser's, not ours) and the advertiser's
server sometimes posts a conversion with the ``adclid`` the landing page received.

Requests are named by endpoint, so locust's stats (and ``python -m loadtest.results``) give one row per
endpoint rather than one per signed URL. Every response is checked for exactly what the contract promises:
a 204 no-fill is a success, a 200 without ads or a beacon that is not 204 is a failure.

    locust -f loadtest/locustfiles/publisher.py --headless -u 50 -r 10 -t 60s \
        --host http://127.0.0.1:8080 --csv out/publisher

Environment (all optional): ADSERVER_LOCUST_IMPRESSION_RATE (0.9 of ads), ADSERVER_LOCUST_VIEWABLE_RATE (0.6
of ads), ADSERVER_LOCUST_CLICK_RATE (0.03 of ads), ADSERVER_LOCUST_CONVERSION_RATE (0.3 of clicks),
ADSERVER_LOCUST_KEYWORDS (the page keywords to draw from), ADSERVER_LOCUST_WAIT ("0.1,1.0" seconds between
page views), ADSERVER_LOCUST_SEED (makes each user's choices reproducible).
"""

from __future__ import annotations

import itertools
import random
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from _common import (
    DEVICES,
    FORMATS,
    GEOS,
    KEYWORDS,
    PLACEMENTS,
    SITES,
    env_int,
    env_rate,
    env_terms,
    env_wait,
)
from locust import FastHttpUser, between, task

IMPRESSION_RATE = env_rate("ADSERVER_LOCUST_IMPRESSION_RATE", 0.9)
VIEWABLE_RATE = env_rate("ADSERVER_LOCUST_VIEWABLE_RATE", 0.6)
CLICK_RATE = env_rate("ADSERVER_LOCUST_CLICK_RATE", 0.03)
CONVERSION_RATE = env_rate("ADSERVER_LOCUST_CONVERSION_RATE", 0.3)
PAGE_KEYWORDS = env_terms("ADSERVER_LOCUST_KEYWORDS", KEYWORDS)
SEED = env_int("ADSERVER_LOCUST_SEED", 0)
WAIT = env_wait("ADSERVER_LOCUST_WAIT", (0.1, 1.0))

# Viewability and clicks happen only to ads that rendered, so their rates (given per ad served) cannot exceed
# the impression rate; say so at start-up rather than quietly measuring something else.
for _name, _rate in (("VIEWABLE", VIEWABLE_RATE), ("CLICK", CLICK_RATE)):
    if _rate > IMPRESSION_RATE:
        raise ValueError(f"ADSERVER_LOCUST_{_name}_RATE={_rate} exceeds ADSERVER_LOCUST_IMPRESSION_RATE="
                         f"{IMPRESSION_RATE}: only rendered ads can be seen or clicked")

_user_numbers = itertools.count()


class PublisherUser(FastHttpUser):
    """A visitor reading pages that carry our tag."""

    wait_time = between(*WAIT)

    def on_start(self) -> None:
        number = next(_user_numbers)
        # Seeded per user: the same seed gives each user the same sequence of choices from run to run.
        self.rng = random.Random(SEED * 1_000_003 + number) if SEED else random.Random()
        self.visitor = f"u{number}-{self.rng.getrandbits(32):08x}"

    def page_params(self) -> dict[str, str]:
        rng = self.rng
        placement = rng.choice(PLACEMENTS)
        params = {
            "placement": placement,
            "format": rng.choice(FORMATS),
            "slots": str(rng.choice((1, 1, 1, 2, 3))),
            "device": rng.choice(DEVICES),
            "keywords": ",".join(rng.sample(PAGE_KEYWORDS, min(len(PAGE_KEYWORDS), rng.choice((1, 2, 3))))),
            # Most page views come from returning visitors: a heavy-tailed pick among a few thousand ids.
            "user": self.visitor if rng.random() < 0.5 else f"u{int(rng.paretovariate(1.2)) % 5000}",
            "url": f"https://{rng.choice(SITES)}/{placement}/{rng.randrange(10_000)}",
        }
        geo = rng.choice(GEOS)
        if geo:  # some requests carry no geo at all (no IP geolocation): a real case the edge must handle
            params["geo"] = geo
        return params

    @task(20)
    def page_view(self) -> None:
        ads = self.ask_for_ads()
        for ad in ads:
            if self.rng.random() >= IMPRESSION_RATE:
                continue  # never rendered: below the fold, page closed, ad blocker
            self.beacon(ad["impression_url"], "/v1/track/impression")
            # Drawn among the rendered ads with probability rate / IMPRESSION_RATE, so that per ad served the
            # configured rates hold.
            if self.rng.random() * IMPRESSION_RATE < VIEWABLE_RATE:
                self.beacon(ad["viewable_url"], "/v1/track/viewable")
            if self.rng.random() * IMPRESSION_RATE < CLICK_RATE:
                adclid = self.click(ad["click_url"])
                if adclid and self.rng.random() < CONVERSION_RATE:
                    self.convert(adclid)

    @task(1)
    def load_tag(self) -> None:
        # Browsers cache the tag for its max-age, so a page view fetches it only now and then.
        with self.client.get("/tag.js", name="/tag.js", catch_response=True) as r:
            kind = r.headers.get("content-type") or ""
            if r.status_code != 200 or "javascript" not in kind or not r.content:
                r.failure(f"status {r.status_code}, content-type {kind!r}, {len(r.content or b'')} bytes")

    def ask_for_ads(self) -> list[dict[str, Any]]:
        url = "/v1/ads?" + urlencode(self.page_params())
        with self.client.get(url, name="/v1/ads", catch_response=True) as r:
            if r.status_code == 204:
                return []  # no fill is an answer, not an error
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return []
            try:
                body = r.json()
                ads = body["ads"]
                for ad in ads:
                    for key in ("ad_id", "campaign_id", "impression_url", "viewable_url", "click_url"):
                        if not ad.get(key):
                            raise KeyError(key)
            except (ValueError, KeyError, TypeError) as exc:
                r.failure(f"200 without a well-formed ad list: {exc!r}")
                return []
            if not ads:
                r.failure("200 with an empty ad list (no fill must be a 204)")
            return ads

    def beacon(self, url: str, name: str) -> None:
        with self.client.get(url, name=name, catch_response=True) as r:
            if r.status_code != 204:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")

    def click(self, url: str) -> str | None:
        """Click without following the redirect; returns the signed adclid the landing page would get."""
        with self.client.get(url, name="/v1/track/click", allow_redirects=False, catch_response=True) as r:
            location = r.headers.get("location") or r.headers.get("Location") or ""
            if r.status_code != 302 or not location:
                r.failure(f"status {r.status_code} (want 302 with Location)")
                return None
            adclid = parse_qs(urlsplit(location).query).get("adclid", [""])[0]
            if not adclid:
                r.failure(f"302 to {location[:120]} carries no adclid")
                return None
            return adclid

    def convert(self, adclid: str) -> None:
        # The advertiser's server posts the conversion (S2S) with an order id unique to this purchase.
        body = {"conversion_id": f"order-{uuid.UUID(int=self.rng.getrandbits(128))}", "adclid": adclid,
                "value_micros": self.rng.randrange(5_000_000, 120_000_000)}
        with self.client.post("/v1/track/conversion", json=body, name="/v1/track/conversion",
                              catch_response=True) as r:
            if r.status_code != 204:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
