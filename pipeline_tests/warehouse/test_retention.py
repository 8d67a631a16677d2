"""telemetry_events' partitions (issue #26): made ahead of the data by the pipeline, dropped whole
past the retention horizon, with everything that describes those days following. Real loads into
a warehouse of the test's own (its own database, the stack's S3)."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pipeline.bench.importer import scratch_warehouse
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import ObjectRejected, load_object
from pipeline.importer.reconcile import find_drift
from pipeline.importer.verify import verify
from pipeline.warehouse import partitions, retention
from pipeline.warehouse.projections import rebuild, refresh
from pipeline_tests.support import new_customer, put_and_load

PROJECTIONS = (
    "daily_domain_compliance",
    "daily_source_summary",
    "daily_reports",
    "daily_domain_services",
    "daily_domain_sources",
    "source_summary",
    "service_summary",
    "customer_summary",
)


@pytest.fixture
def own_warehouse(stack):
    with scratch_warehouse(stack) as settings:
        yield settings


def _projections(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {
            t: sorted(map(repr, conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t))).fetchall()))
            for t in PROJECTIONS
        }


def _rows_by_day(url: str, customer: str) -> dict:
    with psycopg.connect(url) as conn:
        return dict(
            conn.execute(
                "SELECT day::text, count(*) FROM telemetry_events WHERE customer_id = %s GROUP BY 1", (customer,)
            ).fetchall()
        )


def test_retention_drops_whole_partitions_past_the_horizon_and_the_rest_follows(own_warehouse, clients, monkeypatch):
    settings, s3 = own_warehouse, clients("s3")
    url = settings.database_url
    customer = new_customer()
    days = {"2026-01-15": 30, "2026-02-10": 20, "2026-02-27": 10, "2026-03-05": 40, "2026-11-01": 25}
    keys = {
        day: put_and_load(settings, s3, customer, f"{day}.parquet", n, seed=i, day=day)
        for i, (day, n) in enumerate(days.items())
    }
    refresh(url)
    # the horizon is 2026-03-01 whatever day the test runs on: January and February are past it
    keep = (dt.date.today() - dt.date(2026, 3, 1)).days
    monkeypatch.setenv("PIPELINE_RETENTION_DAYS", str(keep))
    assert retention.horizon() == dt.date(2026, 3, 1)

    planned = retention.apply(url, dry_run=True)
    assert [(p.name, p.rows) for p in planned.dropped] == [
        ("telemetry_events_2026_01", 30),
        ("telemetry_events_2026_02", 30),
    ]
    assert _rows_by_day(url, customer) == days  # a dry run drops nothing

    result = retention.apply(url)
    assert result.horizon == "2026-03-01" and result.rows_removed == 60
    assert [p.name for p in result.dropped] == ["telemetry_events_2026_01", "telemetry_events_2026_02"]
    assert _rows_by_day(url, customer) == {"2026-03-05": 40, "2026-11-01": 25}
    with psycopg.connect(url) as conn:
        names = [p.name for p in partitions.partitions(conn)]
        assert "telemetry_events_2026_01" not in names and "telemetry_events_2026_03" in names
        dropped_table = conn.execute("SELECT to_regclass('telemetry_events_2026_02')").fetchone()[0]
        assert dropped_table is None  # dropped, not only detached
        # the projections no longer show those days, and they equal a rebuild of what remains
        assert conn.execute("SELECT count(*) FROM daily_domain_compliance WHERE day < '2026-03-01'").fetchone()[0] == 0
        (messages, first_day) = conn.execute(
            "SELECT sum(messages), min(first_day) FROM source_summary WHERE customer_id = %s", (customer,)
        ).fetchone()
        assert first_day >= dt.date(2026, 3, 1)  # the all-days rollups lost the dropped days' share
        (live_messages,) = conn.execute(
            "SELECT sum(message_count) FROM telemetry_events WHERE customer_id = %s", (customer,)
        ).fetchone()
        assert messages == live_messages
        # the objects of the dropped days are forgotten by the ledger and the inbox; the others are not
        ledger_keys = {k for (k,) in conn.execute("SELECT DISTINCT object_key FROM load_ledger").fetchall()}
        assert ledger_keys == {keys["2026-03-05"], keys["2026-11-01"]}
        assert result.ledger_rows_removed == 3
    projected = _projections(url)
    rebuild(url)
    assert _projections(url) == projected

    # verify and the reconciler: S3 still holds the January and February objects (its lifecycle
    # rule expires them by their own age), and one more that never was loaded: out of scope
    put_and_load_free = synthetic_enriched_table(5, seed=9, customer_id=customer, day=dt.date(2026, 2, 2))
    late = f"{settings.enriched_prefix}customer={customer}/dt=2026-02-02/never-loaded.parquet"
    s3.put_object(Bucket=settings.enriched_bucket, Key=late, Body=parquet_bytes(put_and_load_free))
    report = verify(settings, customer)
    assert report["ok"], report
    assert report["horizon"] == "2026-03-01" and report["objects_enriched"] == 2 and report["missing"] == 0
    with psycopg.connect(url) as conn:
        drift = find_drift(conn, s3, settings.enriched_bucket, f"{settings.enriched_prefix}customer={customer}/")
    assert drift.total == 0, drift.summary()
    monkeypatch.delenv("PIPELINE_RETENTION_DAYS")
    report = verify(settings, customer)  # with everything kept, those objects are missing again
    assert not report["ok"] and report["missing"] == 30 + 20 + 10 + 5

    again = retention.apply(url, days=keep)
    assert again.dropped == [] and again.ledger_rows_removed == 0  # nothing left past it: idempotent


def test_retention_unset_keeps_everything_and_only_makes_partitions_ahead(own_warehouse, clients, monkeypatch):
    monkeypatch.delenv("PIPELINE_RETENTION_DAYS", raising=False)
    settings, s3 = own_warehouse, clients("s3")
    customer = new_customer()
    put_and_load(settings, s3, customer, "old.parquet", 12, seed=1, day="2019-03-04")
    result = retention.apply(settings.database_url)
    assert result.horizon is None and result.dropped == []
    assert _rows_by_day(settings.database_url, customer) == {"2019-03-04": 12}


def test_the_loader_makes_the_partitions_of_any_day_before_its_transaction(own_warehouse, clients):
    """A report dated years back, or ahead, gets its partition from the loader; the month ahead
    exists from the migration on."""
    settings, s3 = own_warehouse, clients("s3")
    customer = new_customer()
    with psycopg.connect(settings.database_url) as conn:
        ahead = {p.name for p in partitions.partitions(conn)}
    today = dt.date.today()
    assert f"telemetry_events_{today:%Y_%m}" in ahead and len(ahead) >= 3
    put_and_load(settings, s3, customer, "ancient.parquet", 7, seed=2, day="2019-03-04")
    put_and_load(settings, s3, customer, "future.parquet", 5, seed=3, day="2031-07-31")
    with psycopg.connect(settings.database_url) as conn:
        placed = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM telemetry_events WHERE customer_id = %s GROUP BY 1",
                (customer,),
            ).fetchall()
        )
    assert placed == {"telemetry_events_2019_03": 7, "telemetry_events_2031_07": 5}


def test_an_object_past_the_horizon_is_expired_not_loaded_by_every_path(own_warehouse, clients, monkeypatch):
    """A late report (or a replayed notification) for a day past the horizon: the loader settles
    it as "expired" without a row, a ledger entry or a partition that retention would only drop
    again; the importer's inbox row is done, not retried; a day inside the horizon loads as ever."""
    from pipeline.importer import inbox
    from pipeline.importer.batch import ImportItem, import_items

    settings, s3 = own_warehouse, clients("s3")
    url, customer = settings.database_url, new_customer()
    monkeypatch.setenv("PIPELINE_RETENTION_DAYS", str((dt.date.today() - dt.date(2026, 3, 1)).days))
    versions = {}
    for day in ("2025-06-30", "2026-02-28", "2026-03-01"):
        key = f"{settings.enriched_prefix}customer={customer}/dt={day}/late.parquet"
        table = synthetic_enriched_table(6, seed=1, customer_id=customer, day=dt.date.fromisoformat(day))
        etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))["ETag"].strip('"')
        versions[day] = ObjectVersion(settings.enriched_bucket, key, etag, etag=etag)
    with psycopg.connect(url, autocommit=True) as conn:
        direct = load_object(conn, s3, versions["2025-06-30"])
        rows = inbox.record(
            conn, [(versions[d], None) for d in ("2026-02-28", "2026-03-01")], lambda v: v.key, claim_for="t"
        ).new
    assert (direct.outcome, direct.rows, direct.ledger_id) == ("expired", 0, None)
    items = [ImportItem.from_inbox(r) for r in rows]
    outcomes = {o.item.version.key.split("/")[-2]: o.result.outcome for o in import_items(url, s3, items, worker="t")}
    assert outcomes == {"dt=2026-02-28": "expired", "dt=2026-03-01": "loaded"}
    assert _rows_by_day(url, customer) == {"2026-03-01": 6}
    with psycopg.connect(url) as conn:
        names = {p.name for p in partitions.partitions(conn)}
        assert not {"telemetry_events_2025_06", "telemetry_events_2026_02"} & names  # none made to be dropped
        states = conn.execute(
            "SELECT state, outcome FROM import_inbox WHERE object_key LIKE %s ORDER BY object_key", (f"%{customer}%",)
        ).fetchall()
        ledger = conn.execute(
            "SELECT count(*) FROM load_ledger WHERE object_key LIKE %s", (f"%{customer}%",)
        ).fetchone()[0]
    assert states == [("done", "expired"), ("done", "loaded")] and ledger == 1


@pytest.mark.parametrize("damage", ["no_day", "bad_event_id"])
def test_an_object_the_partitions_cannot_take_is_refused_by_name(own_warehouse, clients, damage):
    settings, s3 = own_warehouse, clients("s3")
    customer = new_customer()
    table = synthetic_enriched_table(6, seed=4, customer_id=customer, day=dt.date(2026, 11, 2))
    if damage == "no_day":
        index = table.schema.get_field_index("day")
        table = table.set_column(index, "day", pa.array([None] * 6, table.schema.field("day").type))
    else:
        index = table.schema.get_field_index("event_id")
        table = table.set_column(index, "event_id", pa.array(["<script>"] + table.column("event_id").to_pylist()[1:]))
    key = f"{settings.enriched_prefix}customer={customer}/dt=2026-11-02/{damage}.parquet"
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))["ETag"].strip('"')
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        with pytest.raises(ObjectRejected, match="without a day" if damage == "no_day" else "not 32 hexadecimal"):
            load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag))
        assert conn.execute("SELECT count(*) FROM telemetry_events WHERE customer_id = %s", (customer,)).fetchone() == (
            0,
        )
        assert conn.execute("SELECT count(*) FROM load_ledger WHERE object_key = %s", (key,)).fetchone() == (0,)


def test_partitions_made_at_once_by_many_sessions_are_made_once(own_warehouse):
    url, made, errors = own_warehouse.database_url, [], []
    barrier = threading.Barrier(4)

    def make() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                barrier.wait()
                made.append(partitions.ensure(conn, dt.date(2030, 1, 5), dt.date(2030, 3, 9)))
        except Exception as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(made) == 3
    with psycopg.connect(url) as conn:
        names = [p.name for p in partitions.partitions(conn)]
    assert {"telemetry_events_2030_01", "telemetry_events_2030_02", "telemetry_events_2030_03"} <= set(names)
