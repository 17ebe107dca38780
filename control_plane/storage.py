"""Event storage in ClickHouse: the one place that knows the schema, the SQL and the deduplication rules.

Events arrive at least once (JetStream redelivers, a collector may crash after inserting but before
acking), yet billing must count each ``event_id`` once. This module makes a write idempotent in three
layers: duplicates inside a batch are dropped, event ids already stored are looked up and skipped, and
every INSERT carries an ``insert_deduplication_token`` on tables with a
``non_replicated_deduplication_window``, so ClickHouse itself drops a retried block that raced past the
lookup. Reports read a per-minute rollup
that a materialized view writes in the same INSERT as the raw rows, so the two cannot drift apart.

Two adapters share every SQL string and every row conversion; each supplies only how to run a statement,
run a query and insert rows:

- ``ChdbStore``: embedded chdb, the default for ``adserver demo`` and the integration tests. chdb runs the
  engine inside this process and locks its data directory: one process per data path, and one data path
  per process (opening a second path while a session is open raises ``RuntimeError``). Share one store
  between the collector thread and the reporting API instead of opening two.
- ``ClickHouseConnectStore``: a ClickHouse server over HTTP(S) through clickhouse-connect.

``open_store(url)`` picks the adapter from a URL. Money is integer micros; times are epoch milliseconds,
bucketed in UTC.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from control_plane.cvr import Counts
from replication.ctr_model import split_segments
from replication.events import Event, EventType

if TYPE_CHECKING:
    from chdb.session import Session
    from clickhouse_connect.driver.client import Client

Granularity = Literal["minute", "hour", "day"]
SqlValue = str | int
Row = tuple[SqlValue, ...]

DATABASE = "ads"
EVENTS_TABLE = f"{DATABASE}.events"
ROLLUP_TABLE = f"{DATABASE}.events_minute"
ROLLUP_VIEW = f"{DATABASE}.events_minute_mv"

# How many recent insert blocks each table remembers for token deduplication. A retry arrives within seconds
# of the original, so this only has to cover the blocks written in between, with a wide margin.
DEDUP_WINDOW = 10_000

# The SQL parser rejects queries over max_query_size (256 KiB by default); the event-id lookup is chunked
# well below that. INSERT data after VALUES is read by the format parser and does not count.
_LOOKUP_CHUNK_CHARS = 100_000

# toDateTime takes UInt32 seconds; clamp query bounds so "everything" (0 .. a huge end) stays valid.
_MAX_EPOCH_S = 2**32 - 1


# --- the port -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledImpression:
    """A valid impression and whether it was clicked: one training row of the click model."""

    campaign_id: str
    creative_id: str
    advertiser_id: str
    placement: str
    geo: str
    device: str
    ts_ms: int
    clicked: bool
    variant: str = ""  # which combination of the creative's components was shown (replication.variants)
    site: str = ""  # from the impression's decision event, "" without one (replication.events.Event.site)
    segments: tuple[str, ...] = ()  # the same


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """A time bucket of a campaign's report. Valid counts exclude IVT; gross is valid + invalid."""

    bucket_start_ms: int
    impressions: int
    clicks: int
    conversions: int
    spend_micros: int
    invalid_impressions: int
    invalid_clicks: int
    invalid_conversions: int
    gross_impressions: int
    gross_clicks: int
    ctr: float
    viewable: int = 0
    viewability: float = 0.0  # viewable / valid impressions

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Raw-table health: ``duplicates`` must stay 0, or billing double counts."""

    rows: int
    unique_events: int
    duplicates: int
    # Raw rows per event type; every EventType value is present.
    by_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class EventStore(Protocol):
    def ensure_schema(self) -> None: ...

    def insert_events(self, events: Sequence[Event], dedup_token: str) -> int: ...

    def campaign_metrics(
        self, campaign_id: str, start_ms: int, end_ms: int, granularity: Granularity
    ) -> list[MetricsRow]: ...

    def campaign_spend(self, campaign_ids: Sequence[str] | None = None, *,
                       window_s: tuple[int, int] | None = None) -> dict[str, int]: ...

    def time_decay_attribution(self, advertiser_id: str, start_ms: int, end_ms: int, *, half_life_ms: int,
                               lookback_ms: int) -> dict[str, tuple[float, float]]: ...

    def hourly_decisions(self, start_ms: int, end_ms: int) -> list[tuple[str, int, int]]: ...

    def labelled_impressions(self, start_ms: int, end_ms: int, limit: int,
                             decided_within_ms: int = 3_600_000) -> list[LabelledImpression]: ...

    def click_conversions(self, start_ms: int, end_ms: int) -> dict[str, Counts]: ...

    def stats(self) -> StoreStats: ...

    def repair_rollup(self, since_ms: int) -> int: ...

    def close(self) -> None: ...


# --- schema ---------------------------------------------------------------------------------------------

# Per-event ids stay String; everything with a bounded set of values is LowCardinality, which also degrades
# gracefully (falls back to plain strings per part) if a "bounded" column turns out not to be.
_EVENT_COLUMN_TYPES: dict[str, str] = {
    "event_id": "String",
    "type": "LowCardinality(String)",
    "ts_ms": "Int64",
    "region": "LowCardinality(String)",
    "pop": "LowCardinality(String)",
    "auction_id": "String",
    "impression_id": "String",
    "campaign_id": "LowCardinality(String)",
    "creative_id": "LowCardinality(String)",
    "advertiser_id": "LowCardinality(String)",
    "placement": "LowCardinality(String)",
    "bid_type": "LowCardinality(String)",
    "price_micros": "Int64",
    "cost_micros": "Int64",
    "value_micros": "Int64",
    "invalid_reason": "LowCardinality(String)",
    "geo": "LowCardinality(String)",
    "device": "LowCardinality(String)",
    "user_key": "String",
    "variant": "LowCardinality(String)",
    "site": "LowCardinality(String)",
    "segments": "String",
}

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Event))

# Fail at import, not at the first INSERT, when replication/events.py gains a field the schema lacks.
if set(EVENT_COLUMNS) != set(_EVENT_COLUMN_TYPES):
    raise RuntimeError(
        "control_plane.storage schema is out of step with replication.events.Event: "
        f"missing {sorted(set(EVENT_COLUMNS) - set(_EVENT_COLUMN_TYPES))}, "
        f"extra {sorted(set(_EVENT_COLUMN_TYPES) - set(EVENT_COLUMNS))}"
    )

_INT_COLUMNS = frozenset(name for name, ch_type in _EVENT_COLUMN_TYPES.items() if "Int" in ch_type)

_VALID = "invalid_reason = ''"


def _clicked_since(start_ms: int) -> str:
    """The impressions a valid click since ``start_ms`` was made on, each once: what labels an impression
    clicked (the click model) and counts a CPA campaign's clicks (its conversion rate)."""
    return (f"SELECT DISTINCT impression_id FROM {EVENTS_TABLE} WHERE type = '{EventType.CLICK}' AND {_VALID} "
            f"AND {_in_window(start_ms)}")


def _in_window(start_ms: int | str, end_ms: int | str | None = None) -> str:
    """Events made in [start_ms, end_ms) (or since ``start_ms``), written on ``ts``, the partition key's column
    (``ts_ms`` to the millisecond): a bound on ``ts_ms`` alone prunes no partition, and the table is ordered by
    event id, so every such query read the whole table's ``ts_ms``. Bounds may be SQL expressions."""
    since = f"ts >= fromUnixTimestamp64Milli(toInt64({start_ms}), 'UTC')"
    return since if end_ms is None else f"{since} AND ts < fromUnixTimestamp64Milli(toInt64({end_ms}), 'UTC')"
_INVALID = "invalid_reason != ''"

_COLUMN_SEP = ",\n"
# A consenting user's keyword segments are kept next to their user key only as long as the edge itself keeps
# them in a profile (``edge.audiences.SEGMENT_TTL_S``, 30 days): the click trainer needs a day of them.
_COLUMN_TTL = {"segments": " TTL toDateTime(ts) + INTERVAL 30 DAY"}
_EVENT_COLUMNS_DDL = _COLUMN_SEP.join(f"    {name} {_EVENT_COLUMN_TYPES[name]}{_COLUMN_TTL.get(name, '')}"
                                      for name in EVENT_COLUMNS)

CREATE_DATABASE_SQL = f"CREATE DATABASE IF NOT EXISTS {DATABASE}"

# ORDER BY event_id makes the pre-insert lookup a primary-key search. Reports never scan this table (they
# read the rollup), so nothing is lost by not sorting it by campaign and time. ts is derived from ts_ms, so
# both adapters insert plain integers and never convert datetimes.
CREATE_EVENTS_SQL = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE}
(
{_EVENT_COLUMNS_DDL},
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
""".strip()

_ROLLUP_COUNTERS: tuple[tuple[str, str, str], ...] = (
    # (column, type, aggregate over the raw rows of one minute)
    ("decisions", "UInt64", f"countIf(type = '{EventType.DECISION}')"),
    ("impressions", "UInt64", f"countIf(type = '{EventType.IMPRESSION}' AND {_VALID})"),
    ("clicks", "UInt64", f"countIf(type = '{EventType.CLICK}' AND {_VALID})"),
    ("conversions", "UInt64", f"countIf(type = '{EventType.CONVERSION}' AND {_VALID})"),
    ("viewable", "UInt64", f"countIf(type = '{EventType.VIEWABLE}' AND {_VALID})"),
    ("spend_micros", "Int64", f"sumIf(cost_micros, {_VALID})"),
    ("invalid_impressions", "UInt64", f"countIf(type = '{EventType.IMPRESSION}' AND {_INVALID})"),
    ("invalid_clicks", "UInt64", f"countIf(type = '{EventType.CLICK}' AND {_INVALID})"),
    ("invalid_conversions", "UInt64", f"countIf(type = '{EventType.CONVERSION}' AND {_INVALID})"),
)

_ROLLUP_COUNTERS_DDL = _COLUMN_SEP.join(f"    {name} {ch_type}" for name, ch_type, _ in _ROLLUP_COUNTERS)
_ROLLUP_COUNTERS_SELECT = _COLUMN_SEP.join(f"    {expr} AS {name}" for name, _, expr in _ROLLUP_COUNTERS)

# SummingMergeTree adds up rows with the same key only when parts merge, which may be never for recent
# data: every read must sum() and GROUP BY. The dedup window matters here too: the view's block for a
# retried INSERT carries a token derived from the source block's, so ClickHouse drops it with the source.
CREATE_ROLLUP_SQL = f"""
CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE}
(
    campaign_id LowCardinality(String),
    minute DateTime('UTC'),
    region LowCardinality(String),
    creative_id LowCardinality(String),
{_ROLLUP_COUNTERS_DDL}
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (campaign_id, minute, region, creative_id)
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
""".strip()

# A TO view runs inside the INSERT into ads.events, so the rollup is written with the raw rows or not at all.
CREATE_ROLLUP_VIEW_SQL = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {ROLLUP_VIEW} TO {ROLLUP_TABLE} AS
SELECT
    campaign_id,
    toStartOfMinute(ts) AS minute,
    region,
    creative_id,
{_ROLLUP_COUNTERS_SELECT}
FROM {EVENTS_TABLE}
GROUP BY campaign_id, minute, region, creative_id
""".strip()

SCHEMA_SQL: tuple[str, ...] = (
    CREATE_DATABASE_SQL,
    CREATE_EVENTS_SQL,
    # Columns added after the table first shipped: a no-op on a new table, a migration on an old one.
    f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS user_key String",
    f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS variant LowCardinality(String)",
    f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS site LowCardinality(String)",
    f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS segments String{_COLUMN_TTL['segments']}",
    CREATE_ROLLUP_SQL,
    CREATE_ROLLUP_VIEW_SQL,
)

# Time-decay multi-touch attribution: each valid conversion of the advertiser that carries a user key shares
# one unit of credit (and its value) among that user's valid impressions and clicks of the same advertiser in
# the look-back window, each weighted 2^(-age / half-life). Read from the raw table (user keys are not in the
# rollup); LIMIT 1 BY event_id so a copy that slipped past every dedup layer still counts once.
_TIME_DECAY_SQL = f"""
WITH
conv AS (
    SELECT event_id, user_key, ts_ms, value_micros FROM {EVENTS_TABLE}
    WHERE type = '{EventType.CONVERSION}' AND {_VALID} AND advertiser_id = {{adv}} AND user_key != ''
      AND {_in_window("{lo}", "{hi}")}
    LIMIT 1 BY event_id
),
touch AS (
    SELECT event_id, user_key, ts_ms, campaign_id FROM {EVENTS_TABLE}
    WHERE type IN ('{EventType.IMPRESSION}', '{EventType.CLICK}') AND {_VALID} AND advertiser_id = {{adv}}
      AND user_key != '' AND {_in_window("{lo} - {lookback}", "{hi}")}
    LIMIT 1 BY event_id
),
pairs AS (
    SELECT conv.event_id AS conversion, conv.value_micros AS value, touch.campaign_id AS campaign,
           touch.ts_ms AS touch_ms
    FROM conv INNER JOIN touch ON conv.user_key = touch.user_key
    WHERE touch.ts_ms <= conv.ts_ms AND touch.ts_ms >= conv.ts_ms - {{lookback}}
),
weighted AS (
    -- relative to the conversion's newest touch (weight 1), so the total never underflows to 0
    SELECT conversion, value, campaign,
           pow(2, (touch_ms - max(touch_ms) OVER (PARTITION BY conversion)) / {{half_life}}) AS weight
    FROM pairs
)
SELECT campaign, sum(weight / total), sum(value * weight / total)
FROM weighted INNER JOIN (SELECT conversion, sum(weight) AS total FROM weighted GROUP BY conversion) AS t
    USING (conversion)
GROUP BY campaign
ORDER BY campaign
""".strip()

_BUCKET_EXPR: dict[str, str] = {
    "minute": "minute",
    "hour": "toStartOfHour(minute)",
    "day": "toStartOfDay(minute)",
}

_METRICS_SQL = f"""
SELECT
    toInt64(toUnixTimestamp({{bucket}})) * 1000 AS bucket_start_ms,
    sum(impressions), sum(clicks), sum(conversions), sum(spend_micros),
    sum(invalid_impressions), sum(invalid_clicks), sum(invalid_conversions), sum(viewable)
FROM {ROLLUP_TABLE}
WHERE campaign_id = {{campaign}}
  AND minute >= toDateTime({{lo_s}}, 'UTC') AND minute < toDateTime({{hi_s}}, 'UTC')
GROUP BY bucket_start_ms
ORDER BY bucket_start_ms
""".strip()

_SPEND_SQL = (
    f"SELECT campaign_id, sum(spend_micros) FROM {ROLLUP_TABLE}{{where}}"
    " GROUP BY campaign_id ORDER BY campaign_id"
)

_STATS_SQL = (
    "SELECT count(), uniqExact(event_id), "
    + ", ".join(f"countIf(type = '{t}')" for t in EventType)
    + f" FROM {EVENTS_TABLE}"
)

_EXISTING_IDS_SQL = f"SELECT DISTINCT event_id FROM {EVENTS_TABLE} WHERE event_id IN ({{ids}})"


def insert_settings(token: str) -> dict[str, SqlValue]:
    """Settings for every INSERT into ads.events; both adapters send exactly these."""
    return {
        # Superseded by deduplicate_insert (default "enable") from ClickHouse 26, but still what older
        # servers read; sending deduplicate_insert would be an unknown-setting error on those.
        "insert_deduplicate": 1,
        "insert_deduplication_token": token,
        # The rollup table drops the view's block of a retried INSERT through its own dedup log (measured:
        # without its window, a retry dropped from ads.events was still counted in the rollup).
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }


# --- shared SQL and row building ------------------------------------------------------------------------

# One pass with translate, so an escaped backslash is never escaped again. Newlines and NUL are escaped so
# a statement stays one readable line in logs and never carries a byte that a C string would cut short.
_STRING_ESCAPES = str.maketrans(
    {"\\": "\\\\", "'": "\\'", "\0": "\\0", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)


def sql_literal(value: SqlValue) -> str:
    """A ClickHouse literal for a str or int: the only way values enter SQL text in this module."""
    # bool is an int subclass; a True that became 1 would hide a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"cannot write {type(value).__name__} {value!r} as a SQL literal")
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).translate(_STRING_ESCAPES) + "'"


def event_row(event: Event) -> Row:
    """The values of one event in EVENT_COLUMNS order, as plain str and int."""
    row: list[SqlValue] = []
    for name in EVENT_COLUMNS:
        value = getattr(event, name)
        if name in _INT_COLUMNS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"event {event.event_id!r}: {name} must be an int, not {value!r}")
            row.append(int(value))
        else:
            if not isinstance(value, str):
                raise TypeError(f"event {event.event_id!r}: {name} must be a str, not {value!r}")
            # The enum's value, as a plain str, is what both the SQL text and clickhouse-connect expect.
            row.append(str(value) if isinstance(value, StrEnum) else value)
    return tuple(row)


def values_insert_sql(rows: Sequence[Row], token: str) -> str:
    """An INSERT of literal rows, for adapters that send SQL text (chdb)."""
    settings = dict(insert_settings(token))
    # Refuse, rather than silently take the slow per-row SQL parser path, if a value is ever not a literal.
    settings["input_format_values_interpret_expressions"] = 0
    settings_sql = ", ".join(f"{name} = {sql_literal(value)}" for name, value in settings.items())
    values_sql = ", ".join("(" + ", ".join(sql_literal(v) for v in row) + ")" for row in rows)
    columns = ", ".join(EVENT_COLUMNS)
    return f"INSERT INTO {EVENTS_TABLE} ({columns}) SETTINGS {settings_sql} VALUES {values_sql}"


def batch_token(dedup_token: str, event_ids: Iterable[str]) -> str:
    """The token sent to ClickHouse: the caller's token plus a digest of the event ids actually inserted.

    ClickHouse drops any block whose token it has seen, whatever the block holds. A caller that reuses a
    token for a batch with different contents (say, a redelivered batch that grew) would lose those events
    silently; with the digest, only a truly identical block is dropped.
    """
    digest = hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()[:32]
    return f"{dedup_token}:{digest}"


def _id_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for event_id in ids:
        literal = sql_literal(event_id)
        if chunk and size + len(literal) > _LOOKUP_CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
        chunk.append(literal)
        size += len(literal) + 2
    if chunk:
        yield chunk


def _metrics_row(row: Sequence[Any]) -> MetricsRow:
    # int(): JSON formats may quote 64-bit integers, and clickhouse-connect returns ints already.
    bucket, imps, clicks, convs, spend, inv_imps, inv_clicks, inv_convs, viewable = (int(v) for v in row)
    return MetricsRow(
        bucket_start_ms=bucket,
        impressions=imps,
        clicks=clicks,
        conversions=convs,
        spend_micros=spend,
        invalid_impressions=inv_imps,
        invalid_clicks=inv_clicks,
        invalid_conversions=inv_convs,
        gross_impressions=imps + inv_imps,
        gross_clicks=clicks + inv_clicks,
        ctr=clicks / imps if imps else 0.0,
        viewable=viewable,
        viewability=viewable / imps if imps else 0.0,
    )


def _minute_bound_s(ms: int) -> int:
    # A report covers the minutes that start in [start_ms, end_ms): round both bounds up to a minute.
    return min(max(-(-ms // 60_000) * 60, 0), _MAX_EPOCH_S)


# --- the shared implementation --------------------------------------------------------------------------


class SqlEventStore(ABC):
    """EventStore over any ClickHouse. Adapters supply ``_exec``, ``_query_rows``, ``_insert``, ``close``."""

    def __init__(self) -> None:
        # Lookup-then-insert must not interleave with another writer in this process, or both would see an
        # id as new. Writers in other processes are caught by the insert token instead.
        self._write_lock = threading.Lock()

    @abstractmethod
    def _exec(self, sql: str) -> None: ...

    @abstractmethod
    def _query_rows(self, sql: str) -> list[Sequence[Any]]: ...

    @abstractmethod
    def _insert(self, rows: Sequence[Row], token: str) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SqlEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ensure_schema(self) -> None:
        for sql in SCHEMA_SQL:
            self._exec(sql)

    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these ids are already stored. Not bounded by time: a click on an old impression has the
        same id as the first click, however much later it comes."""
        found: set[str] = set()
        for chunk in _id_chunks(event_ids):
            rows = self._query_rows(_EXISTING_IDS_SQL.format(ids=", ".join(chunk)))
            found.update(str(row[0]) for row in rows)
        return found

    def insert_events(self, events: Sequence[Event], dedup_token: str) -> int:
        """Store the events not stored yet and return how many that was. Safe to retry as it was called."""
        if not isinstance(dedup_token, str) or not dedup_token:
            raise ValueError("dedup_token must be a non-empty string")
        first_seen: dict[str, Event] = {}
        for event in events:
            # First copy wins: copies of one event id are the same event seen twice.
            first_seen.setdefault(event.event_id, event)
        if not first_seen:
            return 0
        # Convert before touching the database, so a malformed event fails the batch before any I/O.
        rows = {event_id: event_row(event) for event_id, event in first_seen.items()}
        with self._write_lock:
            stored = self.existing_event_ids(list(rows))
            fresh = [row for event_id, row in rows.items() if event_id not in stored]
            if not fresh:
                return 0
            self._insert(fresh, batch_token(dedup_token, (str(row[0]) for row in fresh)))
        return len(fresh)

    def repair_rollup(self, since_ms: int) -> int:
        """Add to the rollup whatever the raw table holds beyond it, for the minutes since ``since_ms``.

        The view writes the rollup in the same INSERT as the raw rows but not atomically: a collector killed
        between the two leaves raw rows the rollup never counted, and their redelivery is skipped as already
        stored. Run at collector start (the only writer, so nothing races it); returns the rows added."""
        keys = "campaign_id, minute, region, creative_id"
        names = [name for name, _, _ in _ROLLUP_COUNTERS]
        diffs = ", ".join(f"if(r.{n} > m.{n}, r.{n} - m.{n}, 0)" for n in names)
        behind = " OR ".join(f"r.{n} > m.{n}" for n in names)
        since_s = max(0, since_ms // 1000)
        count_sql = (
            f"SELECT count() FROM (SELECT campaign_id, toStartOfMinute(ts) AS minute, region, creative_id, "
            f"{_ROLLUP_COUNTERS_SELECT.strip()} FROM {EVENTS_TABLE} "
            f"WHERE ts >= toDateTime({since_s}, 'UTC') GROUP BY {keys}) AS r LEFT JOIN (SELECT {keys}, "
            + ", ".join(f"sum({n}) AS {n}" for n in names)
            + f" FROM {ROLLUP_TABLE} WHERE minute >= toStartOfMinute(toDateTime({since_s}, 'UTC')) GROUP BY {keys})"
            f" AS m USING ({keys}) WHERE {behind}"
        )
        with self._write_lock:
            missing = int(self._query_rows(count_sql)[0][0])
            if missing:
                select = count_sql.replace("SELECT count() FROM", f"SELECT {keys}, {diffs} FROM", 1)
                token = f"repair-{secrets.token_hex(8)}"  # a repair block is never a retry of an earlier one
                self._exec(f"INSERT INTO {ROLLUP_TABLE} ({keys}, {', '.join(names)}) "
                           f"SETTINGS insert_deduplication_token = '{token}' {select}")
        return missing

    def campaign_metrics(
        self, campaign_id: str, start_ms: int, end_ms: int, granularity: Granularity
    ) -> list[MetricsRow]:
        """Buckets of ``granularity`` (UTC) over the minutes starting in [start_ms, end_ms); empty buckets are
        left out. The first bucket may start before start_ms and then holds only the minutes inside."""
        bucket = _BUCKET_EXPR.get(granularity)
        if bucket is None:
            raise ValueError(f"granularity must be one of {sorted(_BUCKET_EXPR)}, not {granularity!r}")
        if end_ms < start_ms:
            raise ValueError(f"end_ms ({end_ms}) is before start_ms ({start_ms})")
        sql = _METRICS_SQL.format(
            bucket=bucket,
            campaign=sql_literal(campaign_id),
            lo_s=_minute_bound_s(start_ms),
            hi_s=_minute_bound_s(end_ms),
        )
        return [_metrics_row(row) for row in self._query_rows(sql)]

    def time_decay_attribution(self, advertiser_id: str, start_ms: int, end_ms: int, *, half_life_ms: int,
                               lookback_ms: int) -> dict[str, tuple[float, float]]:
        """Campaign -> (conversions credited, value credited in micros) under time-decay attribution, for
        the advertiser's conversions in [start_ms, end_ms)."""
        for name, value in (("half_life_ms", half_life_ms), ("lookback_ms", lookback_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int")
        sql = _TIME_DECAY_SQL.format(adv=sql_literal(advertiser_id), lo=sql_literal(int(start_ms)),
                                     hi=sql_literal(int(end_ms)), lookback=lookback_ms, half_life=half_life_ms)
        return {str(row[0]): (float(row[1]), float(row[2])) for row in self._query_rows(sql)}

    def campaign_spend(self, campaign_ids: Sequence[str] | None = None, *,
                       window_s: tuple[int, int] | None = None) -> dict[str, int]:
        """Valid spend in micros per campaign (within ``window_s``, whole UTC minutes [lo, hi), if given);
        every requested campaign is present, 0 if it spent nothing."""
        if isinstance(campaign_ids, str):
            raise TypeError("campaign_ids must be a sequence of ids, not one str")
        clauses = []
        if campaign_ids is not None:
            if not campaign_ids:
                return {}
            clauses.append("campaign_id IN (" + ", ".join(sql_literal(c) for c in campaign_ids) + ")")
        if window_s is not None:
            lo, hi = (int(v) for v in window_s)
            clauses.append(f"minute >= toDateTime({sql_literal(lo)}, 'UTC') "
                           f"AND minute < toDateTime({sql_literal(hi)}, 'UTC')")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        spend = {str(row[0]): int(row[1]) for row in self._query_rows(_SPEND_SQL.format(where=where))}
        if campaign_ids is not None:
            return {c: spend.get(c, 0) for c in campaign_ids}
        return spend

    def hourly_decisions(self, start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
        """Ad decisions per (campaign, UTC hour of day) over the minutes starting in [start_ms, end_ms): the
        traffic the pacing plan's shape is learned from (control_plane.traffic)."""
        sql = (f"SELECT campaign_id, toHour(minute) AS hour, sum(decisions) FROM {ROLLUP_TABLE} "
               f"WHERE minute >= toDateTime({_minute_bound_s(start_ms)}, 'UTC') "
               f"AND minute < toDateTime({_minute_bound_s(end_ms)}, 'UTC') "
               "GROUP BY campaign_id, hour HAVING sum(decisions) > 0")
        return [(str(row[0]), int(row[1]), int(row[2])) for row in self._query_rows(sql)]

    def click_conversions(self, start_ms: int, end_ms: int) -> dict[str, Counts]:
        """CPA campaign -> the valid clicks on its valid impressions served in [start_ms, end_ms), each once,
        and the billed conversions (made by now) credited to those impressions, each once (by event id;
        view-through ones and several per click included): what ``control_plane.cvr`` learns conversion
        rates from. Campaigns without a click are left out."""
        sql = (
            "SELECT i.cid, countIf(c.impression_id != '') AS clicks, sum(v.n) AS conversions "
            "FROM (SELECT impression_id, any(campaign_id) AS cid "
            f"FROM {EVENTS_TABLE} WHERE type = '{EventType.IMPRESSION}' AND bid_type = 'cpa' AND {_VALID} "
            f"AND {_in_window(int(start_ms), int(end_ms))} GROUP BY impression_id) AS i "
            f"LEFT JOIN ({_clicked_since(int(start_ms))}) AS c ON i.impression_id = c.impression_id "
            f"LEFT JOIN (SELECT impression_id, uniqExact(event_id) AS n FROM {EVENTS_TABLE} "
            f"WHERE type = '{EventType.CONVERSION}' AND {_VALID} AND cost_micros > 0 AND {_in_window(int(start_ms))} "
            "GROUP BY impression_id) AS v ON i.impression_id = v.impression_id "
            "GROUP BY i.cid HAVING clicks > 0"
        )
        return {str(r[0]): Counts(int(r[1]), int(r[2])) for r in self._query_rows(sql)}

    def labelled_impressions(self, start_ms: int, end_ms: int, limit: int,
                             decided_within_ms: int = 3_600_000) -> list[LabelledImpression]:
        """Valid impressions served in [start_ms, end_ms), each once, oldest first (at most ``limit``), each
        with whether a valid click on it is stored: the click model's training rows. Invalid traffic is
        left out on both sides, so bots teach the model nothing. The page's site and the user's segments come
        from the impression's decision event (they are not in the signed impression token), made at most
        ``decided_within_ms`` before the window (``CP_CTR_DECISION_LOOKBACK_S``: at least an impression token's
        life, ``EDGE_IMPRESSION_TTL_S``): ""
        and none where it is missing (decision events off, or shed under pressure). Decisions are the
        largest kind of event, one per ad served, so they are looked up by their id (the table's key) among
        the impressions' and in the day partitions of that span only."""
        impressions = (f"FROM {EVENTS_TABLE} WHERE type = '{EventType.IMPRESSION}' AND {_VALID} "
                       f"AND {_in_window(int(start_ms), int(end_ms))}")
        decided_from = int(start_ms) - int(decided_within_ms)
        sql = (
            # Aliases differ from the column names: ClickHouse would read a same-named alias in WHERE.
            "SELECT i.cid, i.kid, i.aid, i.plc, i.geo1, i.dev1, i.first_ms, c.impression_id != '' AS clicked, "
            "i.var1, d.site1, d.seg1 FROM (SELECT impression_id, any(campaign_id) AS cid, any(creative_id) AS kid, "
            "any(advertiser_id) AS aid, any(placement) AS plc, any(geo) AS geo1, any(device) AS dev1, "
            f"min(ts_ms) AS first_ms, any(variant) AS var1 {impressions} GROUP BY impression_id) AS i "
            f"LEFT JOIN ({_clicked_since(int(start_ms))}) AS c ON i.impression_id = c.impression_id "
            "LEFT JOIN (SELECT impression_id, any(site) AS site1, any(segments) AS seg1 "
            f"FROM {EVENTS_TABLE} WHERE event_id IN (SELECT concat('dec:', impression_id) {impressions}) "
            f"AND {_in_window(decided_from, int(end_ms))} "
            "GROUP BY impression_id) AS d ON i.impression_id = d.impression_id "
            f"ORDER BY i.first_ms, i.impression_id LIMIT {int(limit)}"
        )
        return [LabelledImpression(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]),
                                   bool(r[7]), str(r[8]), str(r[9]), split_segments(str(r[10])))
                for r in self._query_rows(sql)]

    def stats(self) -> StoreStats:
        rows, unique, *per_type = (int(v) for v in self._query_rows(_STATS_SQL)[0])
        return StoreStats(
            rows=rows,
            unique_events=unique,
            duplicates=rows - unique,
            by_type={str(t): n for t, n in zip(EventType, per_type, strict=True)},
        )


# --- adapters -------------------------------------------------------------------------------------------


class ChdbStore(SqlEventStore):
    """ClickHouse embedded in this process, storing its data under ``data_path``.

    chdb locks the directory: a second process on the same path fails to open it, and this process can
    have only one chdb path open at a time. Open one store per process and share it between threads.
    """

    def __init__(self, data_path: str) -> None:
        super().__init__()
        if not data_path:
            raise ValueError("chdb data path is empty")
        if "?" in data_path:
            # chdb reads everything after '?' as engine settings: such a path would silently mean another.
            raise ValueError(f"chdb data path must not contain '?': {data_path!r}")
        from chdb.session import Session  # here, so a process using a ClickHouse server never loads chdb

        self.data_path = os.path.abspath(data_path)
        os.makedirs(self.data_path, exist_ok=True)
        # chdb's sessions claim to be thread-safe, but the collector's worker thread and the reporting API
        # share this one; a lock costs nothing next to a query and leaves no doubt.
        self._lock = threading.Lock()
        try:
            # Query-level settings in the connection string apply to every query of this session.
            self._session: Session | None = Session(
                f"{self.data_path}?output_format_json_quote_64bit_integers=0"
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot open chdb data path {self.data_path}: another process may hold it, or this process "
                f"already has a different chdb path open (chdb allows one of each): {exc}"
            ) from exc

    def _run(self, sql: str, fmt: str) -> str:
        with self._lock:
            if self._session is None:
                raise RuntimeError(f"chdb store at {self.data_path} is closed")
            result = self._session.query(sql, fmt)
            return str(result.data())

    def _exec(self, sql: str) -> None:
        self._run(sql, "CSV")

    def _query_rows(self, sql: str) -> list[Sequence[Any]]:
        text = self._run(sql, "JSONCompact")
        return json.loads(text)["data"] if text else []

    def _insert(self, rows: Sequence[Row], token: str) -> None:
        self._run(values_insert_sql(rows, token), "CSV")

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


class ClickHouseConnectStore(SqlEventStore):
    """A ClickHouse server over HTTP(S). ``client`` lets tests and callers supply a ready client."""

    def __init__(self, url: str, *, client: Client | Any | None = None) -> None:
        super().__init__()
        if client is None:
            target = parse_store_url(url)
            if target.kind != "clickhouse":
                raise ValueError(f"not a ClickHouse server URL: {target.redacted}")
            import clickhouse_connect  # here, so the embedded path never imports the HTTP client

            client = clickhouse_connect.get_client(
                dsn=url,
                interface=target.interface,
                # A session id per client makes the server reject concurrent queries from our two threads.
                autogenerate_session_id=False,
            )
        self._client = client

    def _exec(self, sql: str) -> None:
        self._client.command(sql)

    def _query_rows(self, sql: str) -> list[Sequence[Any]]:
        return list(self._client.query(sql).result_rows)

    def _insert(self, rows: Sequence[Row], token: str) -> None:
        database, table = EVENTS_TABLE.split(".")
        self._client.insert(
            table=table,
            database=database,
            data=rows,
            column_names=list(EVENT_COLUMNS),
            settings=insert_settings(token),
        )

    def close(self) -> None:
        self._client.close()


# --- choosing an adapter --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreTarget:
    kind: Literal["chdb", "clickhouse"]
    # The chdb data directory, or the server URL as given.
    location: str
    # clickhouse-connect interface ("http" or "https"); empty for chdb.
    interface: str = ""
    # The URL with any password replaced, for messages and logs.
    redacted: str = ""


_SERVER_SCHEMES = {"http": "http", "https": "https", "clickhouse": "http"}
# clickhouse-connect speaks HTTP only; these are the native-protocol ports, a common mix-up.
_NATIVE_PORTS = {9000, 9440}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def parse_store_url(url: str) -> StoreTarget:
    """Where ``url`` points: ``chdb:///abs/dir`` or a bare path is chdb, http(s):// or clickhouse:// a server.

    Raises ValueError naming the problem; passwords never appear in the message.
    """
    if not url or not url.strip():
        raise ValueError("store URL is empty")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"store URL {_redact(url)!r} is malformed: {exc}") from exc
    redacted = _redact(url)
    scheme = parts.scheme.lower()
    if scheme == "":
        return StoreTarget(kind="chdb", location=url, redacted=url)
    if scheme == "chdb":
        if parts.netloc:
            raise ValueError(
                f"chdb URL {url!r} has a host part {parts.netloc!r}; "
                "write chdb:///absolute/path (three slashes)"
            )
        if not parts.path or parts.path == "/":
            raise ValueError(f"chdb URL {url!r} names no data directory")
        if parts.query or parts.fragment:
            raise ValueError(f"chdb URL {url!r} must not have a query string or fragment")
        return StoreTarget(kind="chdb", location=parts.path, redacted=url)
    if scheme in _SERVER_SCHEMES:
        if not parts.hostname:
            raise ValueError(f"ClickHouse URL {redacted!r} names no host")
        if port in _NATIVE_PORTS:
            raise ValueError(
                f"ClickHouse URL {redacted!r} uses native-protocol port {port}; clickhouse-connect needs the "
                "HTTP port (8123, or 8443 for TLS)"
            )
        return StoreTarget(
            kind="clickhouse", location=url, interface=_SERVER_SCHEMES[scheme], redacted=redacted
        )
    raise ValueError(
        f"store URL {redacted!r} has unsupported scheme {parts.scheme!r}; use chdb:///path, a bare path, "
        "http(s)://host:port or clickhouse://host:port"
    )


def open_store(url: str) -> EventStore:
    """Open the store ``url`` names. The caller runs ``ensure_schema()`` once at start-up."""
    target = parse_store_url(url)
    if target.kind == "chdb":
        return ChdbStore(target.location)
    return ClickHouseConnectStore(url)
