"""Campaign, advertiser and budget-grant records in JetStream KV, with compare-and-set on revision.

Every write names the revision it read; JetStream refuses it if the key moved on, and the API turns that
into a 409. Two concurrent PATCHes therefore give one success and one conflict, never a lost update. A
campaign and its creatives are one value, so a write is all-or-nothing.

Keys are ``<advertiser_id>.<campaign_id>``: an advertiser can only name its own keys, which is the tenant
boundary (another advertiser's campaign is simply not found).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

from control_plane.allocator import GrantState
from replication import subjects as S
from replication.nats_io import replay


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Versioned:
    value: dict[str, Any]
    revision: int


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Store:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def open(self) -> Store:
        self.campaigns = await self._js.key_value(S.CAMPAIGNS_BUCKET)
        self.advertisers = await self._js.key_value(S.ADVERTISERS_BUCKET)
        self.budget = await self._js.key_value(S.BUDGET_BUCKET)
        return self

    # advertisers -----------------------------------------------------------------------------------
    async def create_advertiser(self, advertiser: dict[str, Any]) -> None:
        await self.advertisers.create(advertiser["id"], _dump(advertiser))

    async def get_advertiser(self, advertiser_id: str) -> dict[str, Any] | None:
        try:
            entry = await self.advertisers.get(advertiser_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return json.loads(entry.value) if entry.value else None

    async def add_postback_token(self, advertiser_id: str, token_hash: str, keep: int = 2) -> int:
        """Store a new postback token's hash, keeping the ``keep`` newest (rotation: the previous token works
        until the next rotation). Compare-and-set on the record's revision, retried on a concurrent write.
        Returns how many tokens are live."""
        for _ in range(5):
            entry = await self.advertisers.get(advertiser_id)
            record = json.loads(entry.value or b"{}")
            record["postback_token_sha256s"] = [token_hash, *record.get("postback_token_sha256s", [])][:keep]
            try:
                await self.advertisers.update(advertiser_id, _dump(record), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return len(record["postback_token_sha256s"])
        raise Conflict(f"advertiser {advertiser_id} kept changing")

    # campaigns -------------------------------------------------------------------------------------
    @staticmethod
    def _key(advertiser_id: str, campaign_id: str) -> str:
        return f"{advertiser_id}.{campaign_id}"

    async def create_campaign(self, campaign: dict[str, Any]) -> Versioned:
        key = self._key(campaign["advertiser_id"], campaign["id"])
        revision = await self.campaigns.create(key, _dump(campaign))
        return Versioned(campaign, revision)

    async def get_campaign(self, advertiser_id: str, campaign_id: str) -> Versioned:
        try:
            entry = await self.campaigns.get(self._key(advertiser_id, campaign_id))
        except (KeyNotFoundError, KeyDeletedError) as exc:
            raise NotFound(campaign_id) from exc
        if not entry.value:
            raise NotFound(campaign_id)
        return Versioned(json.loads(entry.value), entry.revision or 0)

    async def update_campaign(self, campaign: dict[str, Any], revision: int) -> Versioned:
        key = self._key(campaign["advertiser_id"], campaign["id"])
        try:
            new_revision = await self.campaigns.update(key, _dump(campaign), last=revision)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(f"campaign {campaign['id']} changed since revision {revision}") from exc
        return Versioned(campaign, new_revision)

    async def list_campaigns(self, advertiser_id: str) -> list[Versioned]:
        """The advertiser's campaigns, oldest first: exactly the watch's replay (``replay``), not up to
        nats-py's end-of-replay marker, which came early enough once to list 0 of 782 campaigns (in an e2e
        run). A replay that stalls raises nats' TimeoutError rather than list fewer campaigns than there are."""
        watcher = await self.campaigns.watch(f"{advertiser_id}.>")
        out: list[Versioned] = []
        try:
            async for entry in replay(watcher):
                if entry.value and entry.operation is None:  # a put (a delete or purge carries an operation)
                    out.append(Versioned(json.loads(entry.value), entry.revision or 0))
        finally:
            await watcher.stop()
        return sorted(out, key=lambda v: v.value.get("created_at", ""))

    # budget grants ---------------------------------------------------------------------------------
    async def get_grant_state(self, campaign_id: str) -> tuple[GrantState | None, int]:
        try:
            entry = await self.budget.get(campaign_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None, 0
        raw = json.loads(entry.value or b"{}")
        return GrantState(raw["day"], raw["granted_day"], raw["granted_total"]), entry.revision or 0

    async def put_grant_state(self, campaign_id: str, state: GrantState, revision: int) -> int:
        value = _dump({"day": state.day, "granted_day": state.granted_day, "granted_total": state.granted_total})
        try:
            if revision == 0:
                return await self.budget.create(campaign_id, value)
            return await self.budget.update(campaign_id, value, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(campaign_id) from exc
        except Exception as exc:
            if revision == 0 and "exists" in str(exc).lower():
                raise Conflict(campaign_id) from exc
            raise
