"""The ClickHouse event store against a real embedded chdb, plus the server adapter with a stand-in client.

chdb allows one data path per process at a time, so every test closes its store before the next opens one.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.storage import (
    EVENT_COLUMNS,
    SCHEMA_SQL,
    ChdbStore,
    ClickHouseConnectStore,
    EventStore,
    MetricsRow,
    SqlEventStore,
    event_row,
    open_store,
    parse_store_url,
    sql_literal,
)
from replication.events import BidType, Event, EventType, InvalidReason

pytestmark = pytest.mark.integration

# 2024-01-01T10:00:00Z: an hour boundary, so minute, hour and day buckets are easy to name.
T0 = 1_704_103_200_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_serial = iter(range(1_000_000))


def make_event(
    kind: EventType,
    ts_ms: int,
    *,
    campaign_id: str = "c1",
    cost_micros: int = 0,
    invalid: InvalidReason = InvalidReason.NONE,
    event_id: str | None = None,
    **overrides: Any,
) -> Event:
    n = next(_serial)
    values: dict[str, Any] = {
        "event_id": event_id or f"{kind.value[:3]}:imp-{n}",
        "type": kind,
        "ts_ms": ts_ms,
        "region": "eu-west",
        "pop": "ams1",
        "auction_id": f"auc-{n}",
        "impression_id": f"imp-{n}",
        "campaign_id": campaign_id,
        "creative_id": "cr-1",
        "advertiser_id": "adv-1",
        "placement": "top-banner",
        "bid_type": BidType.CPM,
        "price_micros": 2_000_000,
        "cost_micros": cost_micros,
        "value_micros": 0,
        "invalid_reason": invalid,
        "geo": "NL",
        "device": "mobile",
    }
    values.update(overrides)
    return Event(**values)


def imps(n: int, ts_ms: int, **kw: Any) -> list[Event]:
    return [make_event(EventType.IMPRESSION, ts_ms + i, **kw) for i in range(n)]




# --- deduplication --------------------------------------------------------------------------------------


def test_duplicates_inside_a_batch_are_stored_once(store: ChdbStore) -> None:
    batch = imps(5, T0, cost_micros=1_000)
    # Equal but distinct objects, as two decoded copies of one message would be.
    copies = [dataclasses.replace(batch[0]), dataclasses.replace(batch[3]), dataclasses.replace(batch[0])]
    written = store.insert_events([*batch, *copies], "b1")

    assert written == 5
    stats = store.stats()
    assert (stats.rows, stats.unique_events, stats.duplicates) == (5, 5, 0)
    assert store.campaign_spend(["c1"]) == {"c1": 5_000}


def test_retrying_a_batch_with_its_token_stores_nothing(store: ChdbStore) -> None:
    batch = imps(4, T0, cost_micros=1_000)
    assert store.insert_events(batch, "b1") == 4
    assert store.insert_events(batch, "b1") == 0
    assert store.insert_events(list(reversed(batch)), "b1") == 0

    assert store.stats().rows == 4
    assert store.campaign_spend(["c1"]) == {"c1": 4_000}


def test_overlapping_batches_store_only_new_events(store: ChdbStore) -> None:
    events = imps(10, T0, cost_micros=1_000)
    assert store.insert_events(events[:6], "b1") == 6
    assert store.insert_events(events[4:8], "b2") == 2
    assert store.insert_events(events, "b3") == 2
    assert store.insert_events(events[2:9], "b4") == 0

    stats = store.stats()
    assert (stats.rows, stats.unique_events, stats.duplicates) == (10, 10, 0)
    assert store.campaign_spend(["c1"]) == {"c1": 10_000}
    [row] = store.campaign_metrics("c1", T0, T0 + MINUTE, "minute")
    assert row.impressions == 10


def test_clickhouse_drops_a_retried_insert_that_raced_past_the_lookup(
    store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if another collector inserted the batch between our lookup and our INSERT: only the token is left.
    monkeypatch.setattr(store, "existing_event_ids", lambda ids: set())
    batch = imps(3, T0, cost_micros=1_000)

    store.insert_events(batch, "b1")
    store.insert_events(batch, "b1")
    assert store.stats().rows == 3
    assert store.campaign_spend(["c1"]) == {"c1": 3_000}, "the rollup must drop the retried block too"

    # Control: without the same token nothing else would have caught it.
    store.insert_events(batch, "another-token")
    assert store.stats().duplicates == 3


def test_reusing_a_token_for_different_events_does_not_lose_them(store: ChdbStore) -> None:
    first, second = imps(3, T0), imps(2, T0 + MINUTE)
    assert store.insert_events(first, "same") == 3
    assert store.insert_events(second, "same") == 2
    assert store.stats().rows == 5


def test_concurrent_writers_in_one_process_never_duplicate(store: ChdbStore) -> None:
    events = imps(200, T0, cost_micros=10)
    written: list[int] = []

    def writer(k: int) -> None:
        for j in range(5):
            lo = (k * 37 + j * 29) % 150
            written.append(store.insert_events(events[lo : lo + 50], f"w{k}-{j}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    covered = {e.event_id for k in range(4) for j in range(5) for e in events[(k * 37 + j * 29) % 150 :][:50]}

    stats = store.stats()
    assert sum(written) == len(covered) == stats.rows == stats.unique_events
    assert stats.duplicates == 0


# --- rollup and reports ---------------------------------------------------------------------------------


def _report_fixture() -> list[Event]:
    m0, m1 = T0 + 5_000, T0 + MINUTE + 5_000
    c1 = [
        *imps(3, m0, cost_micros=1_000),
        make_event(EventType.IMPRESSION, m0, cost_micros=1_000, invalid=InvalidReason.DUPLICATE),
        make_event(EventType.DECISION, m0),
        make_event(EventType.DECISION, m1),
        make_event(EventType.CLICK, m0 + 1_000),
        make_event(
            EventType.CLICK, m0 + 2_000, cost_micros=500, invalid=InvalidReason.CLICK_WITHOUT_IMPRESSION
        ),
        *imps(2, m1, cost_micros=1_000),
        make_event(EventType.CLICK, m1 + 1_000),
        make_event(EventType.CONVERSION, m1 + 2_000, cost_micros=7_000, value_micros=50_000),
        make_event(EventType.CONVERSION, m1 + 3_000, cost_micros=7_000, invalid=InvalidReason.DUPLICATE),
        *imps(1, T0 + 61 * MINUTE, cost_micros=1_000),
        *imps(1, T0 + DAY + 30 * MINUTE, cost_micros=1_000),
    ]
    c2 = [*imps(7, m0, campaign_id="c2", cost_micros=100), make_event(EventType.CLICK, m1, campaign_id="c2")]
    return c1 + c2


@pytest.fixture
def reported(store: ChdbStore) -> ChdbStore:
    events = _report_fixture()
    # Several small batches put one minute's counts into several unmerged parts of the SummingMergeTree.
    for i in range(0, len(events), 4):
        store.insert_events(events[i : i + 4][::-1], f"batch-{i}")
    return store


def _row(
    bucket: int, imps: int, clicks: int, convs: int, spend: int, inv_i: int, inv_c: int, inv_v: int
) -> MetricsRow:
    return MetricsRow(
        bucket_start_ms=bucket,
        impressions=imps,
        clicks=clicks,
        conversions=convs,
        spend_micros=spend,
        invalid_impressions=inv_i,
        invalid_clicks=inv_c,
        invalid_conversions=inv_v,
        gross_impressions=imps + inv_i,
        gross_clicks=clicks + inv_c,
        ctr=clicks / imps if imps else 0.0,
    )


def test_minute_rollup_counts_valid_and_invalid_traffic(reported: ChdbStore) -> None:
    rows = reported.campaign_metrics("c1", T0, T0 + 2 * DAY, "minute")
    assert rows == [
        _row(T0, 3, 1, 0, 3_000, 1, 1, 0),
        _row(T0 + MINUTE, 2, 1, 1, 9_000, 0, 0, 1),
        _row(T0 + 61 * MINUTE, 1, 0, 0, 1_000, 0, 0, 0),
        _row(T0 + DAY + 30 * MINUTE, 1, 0, 0, 1_000, 0, 0, 0),
    ]
    assert rows[0].gross_impressions == 4 and rows[0].gross_clicks == 2
    assert rows[0].ctr == pytest.approx(1 / 3)


def test_hour_and_day_buckets_sum_the_minutes(reported: ChdbStore) -> None:
    assert reported.campaign_metrics("c1", T0, T0 + 2 * DAY, "hour") == [
        _row(T0, 5, 2, 1, 12_000, 1, 1, 1),
        _row(T0 + HOUR, 1, 0, 0, 1_000, 0, 0, 0),
        _row(T0 + DAY, 1, 0, 0, 1_000, 0, 0, 0),
    ]
    day0 = T0 - 10 * HOUR
    assert reported.campaign_metrics("c1", T0, T0 + 2 * DAY, "day") == [
        _row(day0, 6, 2, 1, 13_000, 1, 1, 1),
        _row(day0 + DAY, 1, 0, 0, 1_000, 0, 0, 0),
    ]


def test_report_window_covers_minutes_starting_inside_it(reported: ChdbStore) -> None:
    only_m1 = reported.campaign_metrics("c1", T0 + 30_000, T0 + 61 * MINUTE, "minute")
    assert [r.bucket_start_ms for r in only_m1] == [T0 + MINUTE]
    assert reported.campaign_metrics("c1", T0 + 2 * DAY, T0 + 3 * DAY, "hour") == []
    with pytest.raises(ValueError, match="granularity"):
        reported.campaign_metrics("c1", T0, T0 + DAY, "week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before"):
        reported.campaign_metrics("c1", T0 + DAY, T0, "hour")


def test_spend_excludes_invalid_events(reported: ChdbStore) -> None:
    # c1 has 1_000 + 500 + 7_000 of invalid cost that must not be billed.
    assert reported.campaign_spend() == {"c1": 14_000, "c2": 700}
    assert reported.campaign_spend(["c2", "nobody"]) == {"c2": 700, "nobody": 0}
    assert reported.campaign_spend([]) == {}


def test_campaigns_are_isolated(reported: ChdbStore) -> None:
    c1 = reported.campaign_metrics("c1", T0, T0 + 2 * DAY, "day")
    c2 = reported.campaign_metrics("c2", T0, T0 + 2 * DAY, "day")
    assert sum(r.impressions for r in c1) == 7
    assert c2 == [_row(T0 - 10 * HOUR, 7, 1, 0, 700, 0, 0, 0)]
    assert reported.campaign_metrics("c", T0, T0 + 2 * DAY, "day") == []


def test_stats_count_rows_by_type(reported: ChdbStore) -> None:
    stats = reported.stats()
    assert stats.by_type == {"decision": 2, "impression": 15, "click": 4, "conversion": 2, "viewable": 0}
    assert stats.rows == stats.unique_events == 23
    assert stats.duplicates == 0
    assert stats.as_dict()["by_type"]["impression"] == 15


def test_rows_serialise_for_the_api(reported: ChdbStore) -> None:
    [row] = reported.campaign_metrics("c2", T0, T0 + DAY, "day")
    as_json = row.as_dict()
    assert as_json["impressions"] == 7 and as_json["ctr"] == pytest.approx(1 / 7)
    assert set(as_json) == {f.name for f in dataclasses.fields(MetricsRow)}


# --- strings, persistence, lifecycle --------------------------------------------------------------------

NASTY = "it's a \\ back\\slash \\' \\\\' \"dq\" \nnew\ttab\r\0nul ✓ {brace} %s ' OR 1=1 --"


def test_quotes_and_backslashes_round_trip(store: ChdbStore) -> None:
    event = make_event(
        EventType.IMPRESSION,
        T0,
        campaign_id=NASTY,
        event_id="imp:" + NASTY,
        cost_micros=-5,
        placement=NASTY + "p",
        geo="\\",
        device="'",
    )
    assert store.insert_events([event], NASTY) == 1
    assert store.insert_events([event], "other") == 0, "the lookup must match the stored id exactly"

    assert store.campaign_spend() == {NASTY: -5}
    [row] = store.campaign_metrics(NASTY, T0, T0 + MINUTE, "minute")
    assert row.impressions == 1
    stored = store._query_rows("SELECT event_id, campaign_id, placement, geo, device FROM ads.events")
    assert [tuple(r) for r in stored] == [("imp:" + NASTY, NASTY, NASTY + "p", "\\", "'")]


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    events = imps(5, T0, cost_micros=1_000)
    with ChdbStore(path) as first:
        first.ensure_schema()
        first.insert_events(events, "b1")

    with ChdbStore(path) as second:
        second.ensure_schema()
        assert second.stats().rows == 5
        assert second.campaign_spend(["c1"]) == {"c1": 5_000}
        assert second.insert_events(events, "b1-redelivered") == 0
        assert second.stats().duplicates == 0


def test_one_chdb_path_per_process(store: ChdbStore, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="one of each"):
        ChdbStore(str(tmp_path / "second"))
    assert store.stats().rows == 0, "a refused second path must leave the open store working"


def test_closed_store_refuses_queries(tmp_path: Path) -> None:
    s = ChdbStore(str(tmp_path / "chdb"))
    s.ensure_schema()
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.stats()


def test_bad_event_fails_before_any_write(store: ChdbStore) -> None:
    good = imps(2, T0)
    bad = make_event(EventType.IMPRESSION, T0, cost_micros=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost_micros"):
        store.insert_events([*good, bad], "b1")
    with pytest.raises(ValueError, match="dedup_token"):
        store.insert_events(good, "")
    assert store.stats().rows == 0
    assert store.insert_events([], "empty") == 0


# --- pure parts: URLs, literals, the server adapter -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "location", "interface"),
    [
        ("chdb:///var/lib/adserver/events", "chdb", "/var/lib/adserver/events", ""),
        ("/tmp/events", "chdb", "/tmp/events", ""),
        ("data/events", "chdb", "data/events", ""),
        ("http://localhost:8123", "clickhouse", "http://localhost:8123", "http"),
        ("https://ch.example.com:8443/ads", "clickhouse", "https://ch.example.com:8443/ads", "https"),
        ("clickhouse://default:pw@ch:8123/ads", "clickhouse", "clickhouse://default:pw@ch:8123/ads", "http"),
    ],
)
def test_store_urls(url: str, kind: str, location: str, interface: str) -> None:
    target = parse_store_url(url)
    assert (target.kind, target.location, target.interface) == (kind, location, interface)
    assert "pw" not in target.redacted


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("chdb://data/events", "host part"),
        ("chdb://", "no data directory"),
        ("chdb:///", "no data directory"),
        ("chdb:///x?mode=ro", "query string"),
        ("ftp://ch:21", "unsupported scheme"),
        ("http://", "no host"),
        ("clickhouse://u:secret@ch:9000", "native-protocol port 9000"),
        ("http://u:secret@ch:99999", "malformed"),
    ],
)
def test_bad_store_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_store_url(url)
    assert "secret" not in str(caught.value)


def test_open_store_picks_chdb(tmp_path: Path) -> None:
    for url in (f"chdb://{tmp_path}/a", str(tmp_path / "b")):
        s = open_store(url)
        try:
            assert isinstance(s, ChdbStore) and isinstance(s, EventStore)
        finally:
            s.close()
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_store("redis://localhost:6379")


def test_sql_literal() -> None:
    assert sql_literal(-42) == "-42"
    assert sql_literal("a'b\\c") == "'a\\'b\\\\c'"
    assert sql_literal(EventType.CLICK) == "'click'"
    for bad in (True, 1.5, None, b"x"):
        with pytest.raises(TypeError):
            sql_literal(bad)  # type: ignore[arg-type]


class FakeClient:
    """Records what the adapter sends to clickhouse-connect; answers queries from a script."""

    def __init__(self, answers: list[list[tuple[Any, ...]]]) -> None:
        self.answers = answers
        self.commands: list[str] = []
        self.queries: list[str] = []
        self.inserts: list[dict[str, Any]] = []
        self.closed = False

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def query(self, sql: str) -> SimpleNamespace:
        self.queries.append(sql)
        return SimpleNamespace(result_rows=self.answers.pop(0))

    def insert(self, **kwargs: Any) -> None:
        self.inserts.append(kwargs)

    def close(self) -> None:
        self.closed = True


def test_clickhouse_connect_adapter_sends_the_shared_sql_and_rows() -> None:
    stored, fresh = make_event(EventType.IMPRESSION, T0), make_event(EventType.CLICK, T0, cost_micros=300)
    client = FakeClient(answers=[[(stored.event_id,)], [(T0, "10", 2, 1, 500, 3, 1, 0, 0)]])
    ch = ClickHouseConnectStore("http://unused:8123", client=client)

    ch.ensure_schema()
    assert client.commands == list(SCHEMA_SQL)

    assert ch.insert_events([stored, fresh, fresh], "tok") == 1
    assert "WHERE event_id IN (" in client.queries[0] and stored.event_id in client.queries[0]
    [insert] = client.inserts
    assert (insert["database"], insert["table"]) == ("ads", "events")
    assert insert["column_names"] == list(EVENT_COLUMNS)
    assert insert["data"] == [event_row(fresh)]
    assert all(type(v) in (str, int) for v in insert["data"][0])
    assert insert["settings"]["insert_deduplication_token"].startswith("tok:")

    [row] = ch.campaign_metrics("c1", T0, T0 + HOUR, "hour")
    assert row == _row(T0, 10, 2, 1, 500, 3, 1, 0)
    ch.close()
    assert client.closed


def test_adapters_share_one_implementation() -> None:
    public = ("ensure_schema", "insert_events", "campaign_metrics", "campaign_spend", "stats")
    for adapter in (ChdbStore, ClickHouseConnectStore):
        assert issubclass(adapter, SqlEventStore)
        assert not set(public) & set(vars(adapter)), f"{adapter.__name__} overrides shared logic"


def test_viewable_beacons_give_viewability_without_billing(store: ChdbStore) -> None:
    imps = [make_event(EventType.IMPRESSION, T0, cost_micros=100) for _ in range(4)]
    views = [make_event(EventType.VIEWABLE, T0 + 1000, event_id=f"vw:{e.impression_id}",
                        impression_id=e.impression_id) for e in imps[:3]]
    store.insert_events([*imps, *views], "viewability")
    [row] = store.campaign_metrics("c1", T0, T0 + MINUTE, "minute")
    assert (row.impressions, row.viewable, row.spend_micros) == (4, 3, 400)
    assert row.viewability == 0.75


def test_repair_rollup_restores_what_a_crash_between_raw_insert_and_view_lost(store: ChdbStore) -> None:
    events = [make_event(EventType.IMPRESSION, T0 + i * 1000, cost_micros=100) for i in range(30)]
    events += [make_event(EventType.CLICK, T0 + 5_000, cost_micros=700)]
    store.insert_events(events, "batch-1")
    before = store.campaign_metrics("c1", T0, T0 + HOUR, "minute")
    assert store.repair_rollup(T0 - MINUTE) == 0  # nothing missing: a repair adds nothing
    # The crash: raw rows committed, the view's block never written.
    store._exec("TRUNCATE TABLE ads.events_minute")
    store.insert_events([make_event(EventType.IMPRESSION, T0 + 10_000, cost_micros=100, event_id="imp:late")],
                        "batch-2")
    assert store.repair_rollup(T0 - MINUTE) == 1  # one (campaign, minute, region, creative) row was behind
    after = store.campaign_metrics("c1", T0, T0 + HOUR, "minute")
    assert after[0].impressions == before[0].impressions + 1
    assert after[0].spend_micros == before[0].spend_micros + 100
    assert store.repair_rollup(T0 - MINUTE) == 0  # idempotent


# --- time-decay attribution ----------------------------------------------------------------------------


def test_time_decay_report_matches_the_reference_arithmetic(store: ChdbStore) -> None:
    """The SQL against ``control_plane.attribution`` on a random history: users with impressions and clicks
    on three campaigns of one advertiser, conversions, invalid and foreign events that must not count, and an
    old touch outside the look-back."""
    import random

    from control_plane.attribution import Conversion, Touch, time_decay_credit

    rng = random.Random(7)
    half_life, lookback = 6 * HOUR, 3 * DAY
    events: list[Event] = []
    touches: list[Touch] = []
    conversions: list[Conversion] = []
    for u in range(40):
        user = f"u{u}"
        for _ in range(rng.randint(0, 6)):
            ts = T0 + rng.randint(-4 * DAY, DAY)
            campaign = rng.choice(["c1", "c2", "c3"])
            kind = rng.choice([EventType.IMPRESSION, EventType.CLICK])
            events.append(make_event(kind, ts, campaign_id=campaign, user_key=user))
            touches.append(Touch(user, ts, campaign))
        if rng.random() < 0.7:
            ts, value = T0 + rng.randint(0, DAY), rng.randint(1, 50) * 1_000_000
            events.append(make_event(EventType.CONVERSION, ts, campaign_id="c1", user_key=user, value_micros=value))
            conversions.append(Conversion(user, ts, value))
    # Noise the report must ignore: invalid touches, another advertiser's, touches without a user key.
    events.append(make_event(EventType.CLICK, T0, campaign_id="c9", user_key="u1", invalid=InvalidReason.KNOWN_BOT))
    events.append(make_event(EventType.CLICK, T0, campaign_id="c8", user_key="u1", advertiser_id="other"))
    events.append(make_event(EventType.CLICK, T0, campaign_id="c7", user_key=""))
    store.insert_events(events, "attribution")

    got = store.time_decay_attribution("adv-1", T0, T0 + 2 * DAY, half_life_ms=half_life, lookback_ms=lookback)
    want = time_decay_credit(conversions, touches, half_life_ms=half_life, lookback_ms=lookback)
    assert set(got) == set(want) and {"c7", "c8", "c9"}.isdisjoint(got)
    for campaign, (conv, value) in want.items():
        assert got[campaign][0] == pytest.approx(conv, rel=1e-9)
        assert got[campaign][1] == pytest.approx(value, rel=1e-9)
    credited = sum(c for c, _ in got.values())
    reachable = sum(1 for c in conversions if any(
        t.user_key == c.user_key and c.ts_ms - lookback <= t.ts_ms <= c.ts_ms for t in touches))
    assert credited == pytest.approx(reachable)  # one unit per conversion with a touch, none invented


def test_a_table_from_before_user_key_is_migrated(tmp_path: Path) -> None:
    from control_plane.storage import CREATE_DATABASE_SQL, CREATE_EVENTS_SQL

    old_ddl = CREATE_EVENTS_SQL.replace(",\n    user_key String", "")
    assert old_ddl != CREATE_EVENTS_SQL
    with ChdbStore(str(tmp_path / "old")) as old:
        old._exec(CREATE_DATABASE_SQL)
        old._exec(old_ddl)
        old._exec("INSERT INTO ads.events (event_id, type, ts_ms) VALUES ('imp:before', 'impression', 1)")
    with ChdbStore(str(tmp_path / "old")) as migrated:
        migrated.ensure_schema()
        assert migrated.insert_events([make_event(EventType.IMPRESSION, T0, user_key="u1")], "after") == 1
        rows = migrated._query_rows("SELECT event_id, user_key FROM ads.events ORDER BY event_id")
    assert [tuple(r)[1] for r in rows] == ["", "u1"]  # the old row reads as no user


# --- the pacing shape learned from traffic ------------------------------------------------------------------


def test_the_traffic_shape_is_learned_from_past_days_decisions_in_campaign_local_hours(store: ChdbStore) -> None:
    import asyncio

    from control_plane.shape_learner import ShapeLearner

    day0 = T0 - 10 * HOUR  # 2024-01-01 00:00 UTC
    events = []
    for d in (1, 2):  # two past days: Berlin's campaign served at 18:00 UTC, the UTC one at 06:00
        events += [make_event(EventType.DECISION, day0 + d * DAY + 18 * HOUR + i, campaign_id="berlin")
                   for i in range(300)]
        events += [make_event(EventType.DECISION, day0 + d * DAY + 6 * HOUR + i, campaign_id="utc")
                   for i in range(100)]
    # Today so far: must not count (the hours still to come would look empty).
    events += [make_event(EventType.DECISION, day0 + 3 * DAY + HOUR + i, campaign_id="utc") for i in range(500)]
    events += imps(50, day0 + DAY + 3 * HOUR)  # impressions are not decisions
    store.insert_events(events, "shape")
    assert sorted(store.hourly_decisions(day0 + DAY, day0 + 3 * DAY)) == [("berlin", 18, 600), ("utc", 6, 200)]

    class Builder:  # what the learner needs of the snapshot builder: timezones in, the shape out
        shape: tuple[float, ...] = ()

        def timezone_of(self, campaign_id: str) -> str | None:
            return {"berlin": "Europe/Berlin", "utc": "UTC"}.get(campaign_id)

        def set_traffic_shape(self, weights: tuple[float, ...]) -> None:
            self.shape = weights

    class Clock:
        def now(self) -> float:
            return (day0 + 3 * DAY + 2 * HOUR) / 1000

    async def storage(fn: Any, *args: Any) -> Any:
        return fn(*args)

    builder = Builder()
    learner = ShapeLearner(store, builder, Clock(), storage, prior=(), days=7, prior_weight=240,  # type: ignore[arg-type]
                           every_s=60)
    shape = asyncio.run(learner.refresh())
    assert learner.decisions_seen == 800 and builder.shape == shape
    # 800 observed + 240 prior (10 per hour): 19:00 Berlin time holds 600 + 10, 06:00 holds 200 + 10.
    assert shape[19] == pytest.approx(610 / 1040, abs=1e-6)
    assert shape[6] == pytest.approx(210 / 1040, abs=1e-6)
    assert shape[0] == pytest.approx(10 / 1040, abs=1e-6)
