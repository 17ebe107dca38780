"""Admin commands: create an advertiser and print its token once (only the hash is stored)."""

from __future__ import annotations

from datetime import UTC, datetime

from control_plane.auth import mint_token, new_id
from control_plane.store import Store
from replication.nats_io import close_quietly, connect, ensure_jetstream


async def create_advertiser(nats_url: str, name: str) -> tuple[str, str]:
    """Return (advertiser id, bearer token)."""
    if not name.strip() or len(name) > 200:
        raise ValueError("advertiser name must be 1-200 characters")
    nc = await connect(nats_url, "adserver-admin")
    try:
        js = nc.jetstream()
        await ensure_jetstream(js)
        store = await Store(js).open()
        advertiser_id = new_id("adv")
        token, token_hash = mint_token(advertiser_id)
        await store.create_advertiser({
            "id": advertiser_id, "name": name.strip(), "token_sha256": token_hash,
            "created_at": datetime.now(UTC).isoformat(),
        })
        return advertiser_id, token
    finally:
        await close_quietly(nc)
