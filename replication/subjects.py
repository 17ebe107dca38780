"""NATS names: subjects, streams, buckets. One place, so edge and control plane cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Mapping

from replication.events import EventType

# Events are written to a stream per region (on the region's leaf node, in its own JetStream domain, or on
# the hub's server in a one-server setup) and the hub's ADS_EVENTS sources them all. ADS_EVENTS has no
# subjects of its own: if it also listened on ads.ev.> a message would be stored twice (ARCHITECTURE §6).
EVENTS_STREAM = "ADS_EVENTS"
EVENTS_SUBJECTS = "ads.ev.>"
REGION_EVENTS_STREAM_PREFIX = "ADS_EVENTS_"
SNAPSHOT_STREAM = "ADS_SNAPSHOTS"
SNAPSHOT_SUBJECTS = "ads.snap.>"
SNAPSHOT_BUCKET = "ads_snapshots"  # Object Store, for snapshots larger than one message
CAMPAIGNS_BUCKET = "ads_campaigns"
ADVERTISERS_BUCKET = "ads_advertisers"
BUDGET_BUCKET = "ads_budget"
BUDGET_GRANT_SUBJECT = "ads.budget.grant"
# Spend CRDT sync: core NATS (not JetStream). Every writer publishes its deltas on a tick and its whole own
# state now and then, so a receiver that missed deltas (a cut-off leaf) converges once the link is back.
SPEND_SUBJECTS = "ads.budget.spend.>"


def spend_subject(region: str) -> str:
    return f"ads.budget.spend.{region}"
COLLECTOR_DURABLE = "collector"

# JetStream drops a re-published event id inside this window; ClickHouse dedups beyond it.
EVENTS_DUPLICATE_WINDOW_S = 30 * 60

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(name: str, what: str) -> str:
    """Regions and PoP names become subject tokens: no dots, wildcards or spaces."""
    if not _TOKEN.match(name):
        raise ValueError(f"{what} {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def event_subject(region: str, event_type: EventType) -> str:
    return f"ads.ev.{region}.{event_type.value}"


def event_batch_subject(region: str, event_type: EventType, count: int) -> str:
    """A batch of ``count`` events of one type (``replication.events.join_event_rows``). The count rides in
    the subject so a stream's per-subject message counts still add up to its events (``events_in``)."""
    return f"ads.ev.{region}.{event_type.value}.{count}"


def events_in(messages_by_subject: Mapping[str, int]) -> int:
    """Events held under these event subjects: one per message, ``count`` per message of a batch subject."""
    total = 0
    for subject, messages in messages_by_subject.items():
        parts = subject.split(".")
        total += messages * (int(parts[4]) if len(parts) == 5 and parts[4].isdigit() else 1)
    return total


def region_events_stream(region: str) -> str:
    return f"{REGION_EVENTS_STREAM_PREFIX}{region}"


def region_event_subjects(region: str) -> str:
    return f"ads.ev.{region}.>"


def snapshot_subject(region: str) -> str:
    return f"ads.snap.{region}"


def snapshot_object_name(region: str) -> str:
    return f"snapshot-{region}"
