"""Advertisers working the control-plane API: the dashboard's calls, as a mix of reads and writes.

Each user holds one advertiser's bearer token (taken in turn from ADSERVER_LOCUST_TOKENS, a comma-separated
list, so the run's set-up can create the advertisers: ``adserver admin create-advertiser NAME`` prints one).
Users sharing a token see and edit the same campaigns, so they race the way two dashboard tabs do:

- list, get and read metrics (the dashboard's polling);
- create a campaign and submit it for review (the automatic review approves it: it must come back active);
- PATCH with ``If-Match: "<revision>"``; a 409 means someone changed it first — the expected answer to a
  stale revision, counted as a success and followed by a re-read, never as a failure;
- pause an active campaign, resume a paused one (a 409 because the state changed meanwhile is expected too).

Anything else — a 5xx, a 4xx the request did not deserve, a body without the promised fields — is a failure.

    ADSERVER_LOCUST_TOKENS=adv1.secret,adv2.secret locust -f loadtest/locustfiles/advertiser.py --headless \
        -u 4 -r 2 -t 60s --host http://127.0.0.1:8000 --csv out/advertiser

Environment: ADSERVER_LOCUST_TOKENS (required), ADSERVER_LOCUST_MAX_CAMPAIGNS (campaigns one user creates at
most, default 20: a long run must not grow the store without bound), ADSERVER_LOCUST_ADVERTISER_WAIT
("0.5,2.0" seconds between actions), ADSERVER_LOCUST_SEED.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import KEYWORDS, env_int, env_str, env_wait
from locust import FastHttpUser, between, events, task
from locust.env import Environment

TOKENS = tuple(t.strip() for t in env_str("ADSERVER_LOCUST_TOKENS", "").split(",") if t.strip())
MAX_CAMPAIGNS = env_int("ADSERVER_LOCUST_MAX_CAMPAIGNS", 20)
WAIT = env_wait("ADSERVER_LOCUST_ADVERTISER_WAIT", (0.5, 2.0))
SEED = env_int("ADSERVER_LOCUST_SEED", 0)

log = logging.getLogger("advertiser")
_user_numbers = itertools.count()
# Expected non-2xx answers (409 on a stale revision or a state changed meanwhile) succeed in locust's stats;
# counted here and logged at the end so a run shows how often advertisers actually raced.
outcomes: Counter[str] = Counter()


@events.test_start.add_listener
def _require_tokens(environment: Environment, **_: Any) -> None:
    # Without tokens every request would be a 401: stop at once with the reason instead of measuring that.
    if not TOKENS and environment.runner is not None:
        log.error("ADSERVER_LOCUST_TOKENS is empty: set it to advertiser bearer tokens, comma-separated")
        environment.process_exit_code = 2
        environment.runner.quit()


@events.test_stop.add_listener
def _log_outcomes(environment: Environment, **_: Any) -> None:
    log.info("advertiser outcomes: %s", ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "none")


def campaign_body(rng: random.Random, number: int) -> dict[str, Any]:
    keyword = rng.choice(KEYWORDS)
    bid_type = rng.choice(("cpm", "cpm", "cpc"))
    return {
        "name": f"locust {keyword} {number}",
        "bid_type": bid_type,
        "max_bid_micros": rng.randrange(1_000_000, 5_000_000) if bid_type == "cpm" else rng.randrange(100_000, 800_000),
        "daily_budget_micros": 20_000_000,
        "total_budget_micros": 200_000_000,
        "start": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        "timezone": "UTC",
        "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": f"Great {keyword} deals", "cta": "Shop now", "size": "300x250",
                       "image_url": f"https://cdn.example.com/{keyword}.png",
                       "landing_url": f"https://shop.example.com/{keyword}?src=locust"}],
    }


class AdvertiserUser(FastHttpUser):
    """One advertiser at the dashboard."""

    wait_time = between(*WAIT)

    def on_start(self) -> None:
        self.number = next(_user_numbers)
        self.rng = random.Random(SEED * 1_000_003 + self.number) if SEED else random.Random()
        token = TOKENS[self.number % len(TOKENS)] if TOKENS else ""
        self.auth = {"Authorization": f"Bearer {token}"}
        # What this user knows about the advertiser's campaigns: id -> (revision, status). Stale on purpose:
        # other users with the same token change them, and the API's answers (409) keep us honest.
        self.known: dict[str, tuple[int, str]] = {}
        self.created = 0
        self.create_campaign()

    def remember(self, campaign: dict[str, Any]) -> None:
        self.known[campaign["id"]] = (int(campaign["revision"]), str(campaign["status"]))

    def pick(self) -> str | None:
        return self.rng.choice(sorted(self.known)) if self.known else None

    @task(5)
    def list_campaigns(self) -> None:
        with self.client.get("/v1/campaigns", headers=self.auth, name="/v1/campaigns", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                for campaign in r.json()["campaigns"]:
                    self.remember(campaign)
            except (ValueError, KeyError, TypeError) as exc:
                r.failure(f"malformed campaign list: {exc!r}")

    @task(1)
    def create_campaign(self) -> None:
        if self.created >= MAX_CAMPAIGNS:
            self.list_campaigns()
            return
        self.created += 1
        body = campaign_body(self.rng, self.created)
        with self.client.post("/v1/campaigns", json=body, headers=self.auth, name="/v1/campaigns",
                              catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return
            campaign_id = r.json()["id"]
        with self.client.post(f"/v1/campaigns/{campaign_id}/submit", headers=self.auth,
                              name="/v1/campaigns/{id}/submit", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return
            campaign = r.json()
            if campaign.get("status") != "active":
                r.failure(f"automatic review did not approve a valid campaign: {campaign.get('review')}")
            self.remember(campaign)

    @task(4)
    def get_campaign(self) -> None:
        campaign_id = self.pick()
        if campaign_id is None:
            return
        with self.client.get(f"/v1/campaigns/{campaign_id}", headers=self.auth, name="/v1/campaigns/{id}",
                             catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return
            campaign = r.json()
            if r.headers.get("etag") != f'"{campaign.get("revision")}"':
                r.failure(f"ETag {r.headers.get('etag')!r} is not the revision {campaign.get('revision')}")
            self.remember(campaign)

    @task(3)
    def patch_campaign(self) -> None:
        campaign_id = self.pick()
        if campaign_id is None:
            return
        revision, _ = self.known[campaign_id]
        change: dict[str, Any] = self.rng.choice((
            {"max_bid_micros": self.rng.randrange(1_000_000, 5_000_000)},
            {"daily_budget_micros": self.rng.randrange(10, 40) * 1_000_000},
            {"name": f"locust renamed {self.rng.randrange(1_000_000)}"},
        ))
        with self.client.request("PATCH", f"/v1/campaigns/{campaign_id}", json=change, name="/v1/campaigns/{id}",
                                 headers={**self.auth, "If-Match": f'"{revision}"'}, catch_response=True) as r:
            outcomes[f"patch {r.status_code}"] += 1
            if r.status_code == 200:
                self.remember(r.json())
            elif r.status_code == 409:
                # Stale revision: what If-Match is for. Forget it so the next get/list reads the current one.
                r.success()
                self.known.pop(campaign_id, None)
            else:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")

    @task(2)
    def pause_or_resume(self) -> None:
        campaign_id = self.pick()
        if campaign_id is None:
            return
        _, status = self.known[campaign_id]
        if status not in ("active", "paused"):
            return
        action = "pause" if status == "active" else "resume"
        with self.client.post(f"/v1/campaigns/{campaign_id}/{action}", headers=self.auth,
                              name=f"/v1/campaigns/{{id}}/{action}", catch_response=True) as r:
            outcomes[f"{action} {r.status_code}"] += 1
            if r.status_code == 200:
                campaign = r.json()
                want = "paused" if action == "pause" else "active"
                if campaign.get("status") != want:
                    r.failure(f"{action} answered 200 with status {campaign.get('status')!r}")
                self.remember(campaign)
            elif r.status_code == 409:
                # Another tab paused/resumed or edited it first; re-read before acting again.
                r.success()
                self.known.pop(campaign_id, None)
            else:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")

    @task(3)
    def campaign_metrics(self) -> None:
        campaign_id = self.pick()
        if campaign_id is None:
            return
        since_ms = int((time.time() - 3600) * 1000)
        with self.client.get(f"/v1/campaigns/{campaign_id}/metrics?granularity=minute&from={since_ms}",
                             headers=self.auth, name="/v1/campaigns/{id}/metrics", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                totals = r.json()["totals"]
                if not isinstance(totals.get("ctr"), int | float):
                    raise KeyError("totals.ctr")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                r.failure(f"metrics without totals: {exc!r}")
