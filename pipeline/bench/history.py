"""`pipeline bench history` (W9, issue #26): the warehouse at a year of history against an empty one.

Every other benchmark starts from an empty warehouse; a DMARC product keeps 13 months. In scratch
warehouses (their own databases), with ``customers`` customers of ``days`` days each:

- each day: ``recurring`` sources seen every day (a customer's own senders: their all-days rows
  exist and grow a day at a time) and ``tail`` sources seen that day only (forwarders, spam: each
  a new all-days row), 3 messages each. The history is written by SQL (``INSERT ... SELECT`` of
  the columns the projections read, into its monthly partitions, not through the loader: labelled
  as such) and projected by ``rebuild``;
- ``refresh_vs_empty``: median seconds of the projections' refresh after one new day of the first
  customer on the history, over the same on an empty warehouse (``repeats`` new days each; target
  <= 1.2);
- ``import_rate_vs_empty``: W1's efficiency workload (``import_objects`` objects of
  ``import_rows`` rows of a recent day, put to S3 once) imported by the real loader on top of the
  history, over the same objects into an empty warehouse (target >= 0.8);
- ``retention_drop_s`` / ``retention_rows_removed``: retention dropping the history's oldest
  month (a partition detached and dropped; ``retention_total_s`` adds its projections' refresh);
- ``history_events``, ``history_load_s``, ``history_rebuild_s``, ``table_bytes_per_event``
  (telemetry_events' partitions, heap and indexes, over its rows: the history's, which fills the
  columns the projections read) and ``loaded_bytes_per_event`` (the same for W1's rows, every
  column filled by the real loader).

``--migration N`` instead times the upgrade of a warehouse from before partitioning: N events
written (by SQL) into a scratch warehouse at migration 0018, then ``migrate`` (0019 copies them
into their partitions, 0020 adds retention): ``migration_s`` and ``migration_s_per_million``.

``--drill N`` times the disaster-recovery drill: N events written to S3 as enriched objects
(W1's shape, spread over a month), then an empty warehouse (the old one "lost") rebuilt from
them by ``pipeline reconcile``'s code, its projections rebuilt, and ``verify`` over the same
objects: ``rebuild_events_per_s`` (events over the reconcile's seconds), ``verify_ok``.

Pages at 20M events against 1M (``web_p95_vs_1m``) are ``pipeline bench web --events 20000000
--days 400 --versus 1000000`` (pipeline.bench.web.versus).
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid

import psycopg

from pipeline.aws import client
from pipeline.bench import Targets, verdicts
from pipeline.bench.importer import drain_queue_silently, put_objects, scratch_warehouse
from pipeline.importer.batch import ImportItem, import_items
from pipeline.settings import Settings
from pipeline.warehouse import partitions, retention
from pipeline.warehouse.projections import rebuild, refresh

TARGETS: Targets = {"refresh_vs_empty": ("<=", 1.2), "import_rate_vs_empty": (">=", 0.8)}
FIRST_DAY = "2025-01-01"
DAYS_PER_STATEMENT = 20  # the history is written a few weeks at a time

_DAYS = """
INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, as_org,
                              country, trust_score, policy_dkim, policy_spf, dmarc_pass, message_count)
SELECT md5(%(customer)s || '/' || d || '/' || s)::uuid, %(ledger)s, %(customer)s, %(first)s::date + d, 'example.com',
       CASE WHEN s <= %(recurring)s THEN '10.' || (s / 65536) || '.' || (s / 256 %% 256) || '.' || (s %% 256)
            ELSE '2001:db8:' || to_hex(d) || '::' || to_hex(s) END,
       64500 + s %% 97, 'Network ' || (s %% 97), 'NL', 0.25 + (s %% 7) / 10.0,
       CASE WHEN s %% 5 = 0 THEN 'fail' ELSE 'pass' END, 'pass', s %% 5 <> 0, 3
FROM generate_series(%(d0)s::int, %(d1)s::int) d, generate_series(1, %(sources)s::int) s
"""


def _write_days(url: str, customer: str, first: int, count: int, recurring: int, tail: int) -> int:
    """Days ``first`` .. ``first + count - 1`` of ``customer``, as one load each statement."""
    written = 0
    start = dt.date.fromisoformat(FIRST_DAY)
    with psycopg.connect(url, autocommit=True) as conn:
        partitions.ensure(conn, start + dt.timedelta(days=first), start + dt.timedelta(days=first + count))
        for d0 in range(first, first + count, DAYS_PER_STATEMENT):
            d1 = min(first + count, d0 + DAYS_PER_STATEMENT) - 1
            (ledger,) = conn.execute(
                "INSERT INTO load_ledger (event, bucket, object_key, object_version) "
                "VALUES ('loaded', 'bench-history', %s, 'v') RETURNING ledger_id",
                (f"{customer}/{d0}-{d1}",),
            ).fetchone()
            written += conn.execute(
                _DAYS,
                {
                    "customer": customer,
                    "ledger": ledger,
                    "first": FIRST_DAY,
                    "d0": d0,
                    "d1": d1,
                    "recurring": recurring,
                    "sources": recurring + tail,
                },
            ).rowcount
    return written


def _one_new_day(url: str, customer: str, day: int, recurring: int, tail: int) -> float:
    _write_days(url, customer, day, 1, recurring, tail)
    started = time.perf_counter()
    refresh(url)
    return time.perf_counter() - started


_EVENT_BYTES = """SELECT sum(pg_total_relation_size(inhrelid)), (SELECT count(*) FROM telemetry_events)
                  FROM pg_inherits WHERE inhparent = 'telemetry_events'::regclass"""


_HEAP_AND_INDEX_BYTES = """SELECT sum(pg_table_size(inhrelid)), sum(pg_indexes_size(inhrelid))
                           FROM pg_inherits WHERE inhparent = 'telemetry_events'::regclass"""


def _import_rate(settings: Settings, versions: list, say, where: str) -> float:
    """W1's efficiency workload: the same objects imported by the real loader, rows per second."""
    s3 = client(settings, "s3")
    started = time.perf_counter()
    outcomes = import_items(settings.database_url, s3, [ImportItem(v) for v in versions], worker="bench")
    seconds = time.perf_counter() - started
    rows = sum(o.result.rows for o in outcomes if o.ok)
    assert rows and all(o.ok for o in outcomes), f"W9 import {where}: {[o.error for o in outcomes if not o.ok][:3]}"
    say(f"W9: imported {rows:,} rows {where} in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    return rows / seconds


def _drop_oldest_month(url: str) -> dict:
    """Retention as the daily job applies it, with the horizon at the history's second month: the
    first month's partition goes (its projections and bookkeeping with it)."""
    first = dt.date.fromisoformat(FIRST_DAY)
    second_month = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    keep = 400
    result = retention.apply(url, days=keep, today=second_month + dt.timedelta(days=keep))
    [dropped] = result.dropped
    return {
        "retention_drop_s": dropped.seconds,
        "retention_rows_removed": dropped.rows,
        "retention_total_s": result.seconds,  # with the refresh of the month's slices
        "retention_slices_refreshed": result.slices_refreshed,
    }


_UNPARTITIONED_DAYS = """
INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, as_org,
                              country, trust_score, policy_dkim, policy_spf, dmarc_pass, message_count)
SELECT md5(c || '/' || n), %(ledger)s, 'c' || c, %(first)s::date + n %% 400, 'example.com',
       '10.' || (n / 65536 %% 256) || '.' || (n / 256 %% 256) || '.' || (n %% 256),
       64500 + n %% 97, 'Network ' || (n %% 97), 'NL', 0.25 + (n %% 7) / 10.0,
       CASE WHEN n %% 5 = 0 THEN 'fail' ELSE 'pass' END, 'pass', n %% 5 <> 0, 3
FROM generate_series(0, 9) c, generate_series(%(n0)s::int, %(n1)s::int) n
"""


def migration(settings: Settings, events: int, say) -> dict:
    """The upgrade path's cost: ``events`` in a warehouse at 0018, then migrations 0019 and 0020 timed."""
    import tempfile
    from pathlib import Path

    from pipeline.warehouse.schema import migrate, migrations

    with tempfile.TemporaryDirectory() as folder, scratch_warehouse(settings, migrated=False) as scratch:
        for m in migrations():
            if m.version < 19:
                (Path(folder) / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
        migrate(scratch.database_url, Path(folder))
        say(f"W9 migration: writing {events:,} events into a warehouse at migration 0018 (by SQL)")
        per_customer = events // 10
        with psycopg.connect(scratch.database_url, autocommit=True) as conn:
            (ledger,) = conn.execute(
                "INSERT INTO load_ledger (event, bucket, object_key, object_version) "
                "VALUES ('loaded', 'bench-history', 'migration', 'v') RETURNING ledger_id"
            ).fetchone()
            for n0 in range(0, per_customer, 200_000):
                n1 = min(per_customer, n0 + 200_000) - 1
                conn.execute(_UNPARTITIONED_DAYS, {"ledger": ledger, "first": FIRST_DAY, "n0": n0, "n1": n1})
            conn.execute("VACUUM ANALYZE telemetry_events")
        say("W9 migration: migrating to today's schema")
        started = time.perf_counter()
        applied = migrate(scratch.database_url)
        seconds = time.perf_counter() - started
        with psycopg.connect(scratch.database_url) as conn:
            (moved,) = conn.execute("SELECT count(*) FROM telemetry_events").fetchone()
    say(f"W9 migration: {applied} in {seconds:.1f} s for {moved:,} events")
    return {
        "migration_events": moved,
        "migrations_applied": applied,
        "migration_s": round(seconds, 1),
        "migration_s_per_million": round(seconds / (moved / 1e6), 1),
    }


def drill(settings: Settings, events: int, say, rows_per_object: int = 20_000) -> dict:
    """The event-sourcing promise as a disaster-recovery drill: the warehouse rebuilt from S3 alone."""
    import dataclasses

    from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
    from pipeline.importer.reconcile import reconcile
    from pipeline.importer.verify import verify

    tag = uuid.uuid4().hex[:6]
    objects = max(1, events // rows_per_object)
    s3 = client(settings, "s3")
    root = f"{settings.enriched_prefix}drill-{tag}/"
    first = dt.date(2026, 10, 1)
    say(f"W9 drill: writing {objects} enriched objects of {rows_per_object:,} rows to S3 under {root}")

    def placed(i: int) -> tuple[str, dt.date, str]:
        """Object ``i``'s customer (one of 10), day (one of 30) and key."""
        customer, day = f"drill-{i % 10}", first + dt.timedelta(days=(i // 10) % 30)
        return customer, day, f"{root}customer={customer}/dt={day}/obj-{i:05d}.parquet"

    def put(i: int) -> None:
        customer, day, key = placed(i)
        table = synthetic_enriched_table(rows_per_object, seed=i, customer_id=customer, day=day, report_id=key)
        s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(objects)))
    drain_queue_silently(settings)  # the warehouse is rebuilt from the listing, not from notifications
    with scratch_warehouse(settings) as scratch:
        lost = dataclasses.replace(scratch, enriched_prefix=root)
        say("W9 drill: an empty warehouse rebuilt from S3 by the reconciler")
        started = time.perf_counter()
        result = reconcile(lost)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        rebuild(lost.database_url)
        projections_s = time.perf_counter() - started
        started = time.perf_counter()
        checked = verify(lost)
        verify_s = time.perf_counter() - started
        with psycopg.connect(lost.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE telemetry_events")
            heap, indexes = conn.execute(_HEAP_AND_INDEX_BYTES).fetchone()
    for i in range(0, objects, 1000):  # the drill's objects go; the stack's bucket is shared
        keys = [placed(j)[2] for j in range(i, min(objects, i + 1000))]
        s3.delete_objects(Bucket=settings.enriched_bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    drain_queue_silently(settings, purge=False)
    say(f"W9 drill: {checked['rows_loaded']:,} events in {seconds:.1f} s, verify ok={checked['ok']}")
    return {
        "drill_events": checked["rows_loaded"],
        "drill_objects": result.imported,
        "drill_failed": result.failed,
        "rebuild_s": round(seconds, 1),
        "rebuild_events_per_s": round(checked["rows_loaded"] / seconds),
        "drill_projections_rebuild_s": round(projections_s, 1),
        "drill_verify_s": round(verify_s, 1),
        "verify_ok": checked["ok"] and checked["rows_loaded"] == objects * rows_per_object,
        # the rebuilt table, every column as the loader writes it: heap and indexes apart
        "heap_bytes_per_event": round(heap / max(1, checked["rows_loaded"])),
        "index_bytes_per_event": round(indexes / max(1, checked["rows_loaded"])),
    }


def run(
    settings: Settings,
    days: int,
    recurring: int,
    tail: int,
    repeats: int,
    say,
    customers: int = 10,
    import_objects: int = 100,
    import_rows: int = 5000,
) -> dict:
    tag = uuid.uuid4().hex[:6]
    versions = put_objects(settings, f"w9-{tag}", import_objects, import_rows, progress=False)
    drain_queue_silently(settings)  # their notifications are not this benchmark's
    with scratch_warehouse(settings) as empty_warehouse:
        say(f"W9: W1's workload ({import_objects} objects of {import_rows} rows) on an empty warehouse")
        import_empty = _import_rate(empty_warehouse, versions, say, "into an empty warehouse")
        with psycopg.connect(empty_warehouse.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE telemetry_events")
            loaded_size, loaded_rows = conn.execute(_EVENT_BYTES).fetchone()
    with scratch_warehouse(settings) as scratch:
        url = scratch.database_url
        say(f"W9: {repeats} new day(s) of {recurring + tail} sources on an empty warehouse")
        empty = [_one_new_day(url, f"empty{tag}{n}", 0, recurring, tail) for n in range(repeats)]
        customer = f"history{tag}"
        say(
            f"W9: writing {days} days of history for {customers} customer(s) "
            f"({customers * days * (recurring + tail):,} events, by SQL)"
        )
        started = time.perf_counter()
        events = sum(
            _write_days(url, customer if n == 0 else f"{customer}-{n}", 0, days, recurring, tail)
            for n in range(customers)
        )
        load_s = time.perf_counter() - started
        say("W9: projecting the history (pipeline projections rebuild)")
        started = time.perf_counter()
        rebuild(url)
        history_rebuild_s = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would have, over a year
            size, rows = conn.execute(_EVENT_BYTES).fetchone()
        say(f"W9: {repeats} new day(s) on the history")
        on_history = [_one_new_day(url, customer, days + n, recurring, tail) for n in range(repeats)]
        say(f"W9: W1's workload on the history ({events:,} events)")
        import_history = _import_rate(scratch, versions, say, "on the history")
        say("W9: retention drops the history's oldest month")
        dropped = _drop_oldest_month(url)
    figures = {
        "history_events": events,
        "history_customers": customers,
        "history_days": days,
        "history_written_by": "SQL INSERT ... SELECT (not the loader), projected by rebuild",
        "history_load_s": round(load_s, 1),
        "history_rebuild_s": round(history_rebuild_s, 1),
        "new_day_sources": {"recurring": recurring, "tail": tail},
        "refresh_empty_s": [round(s, 3) for s in empty],
        "refresh_history_s": [round(s, 3) for s in on_history],
        "refresh_vs_empty": round(statistics.median(on_history) / statistics.median(empty), 2),
        "import_rows_per_s_empty": round(import_empty),
        "import_rows_per_s_history": round(import_history),
        "import_rate_vs_empty": round(import_history / import_empty, 2),
        **dropped,
        "table_bytes_per_event": round(size / rows),
        "loaded_bytes_per_event": round(loaded_size / loaded_rows),  # every column, as the loader writes them
    }
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures
