"""``pipeline verify``: S3 against the warehouse. The invariant of DESIGN.md section 5:

every row of every enriched object version that exists appears in the warehouse exactly once;
nothing else does. Objects that are not readable Parquet have no rows to count: they are listed
as ``unreadable`` (the importer dead-letters them) and do not make the check fail.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from pipeline.aws import client
from pipeline.importer import inbox
from pipeline.importer.inventory import list_enriched, live_loads, parquet_num_rows, parquet_rows_of
from pipeline.importer.queue import queue_depth
from pipeline.settings import Settings
from pipeline.warehouse import retention


def verify(settings: Settings, customer_id: str | None = None) -> dict:
    s3, sqs = client(settings, "s3"), client(settings, "sqs")
    prefix = settings.enriched_prefix + (f"customer={customer_id}/" if customer_id else "")
    oldest = retention.horizon()  # objects of days before it are out of scope: dropped here, expired in S3
    objects = [
        o for o in list_enriched(s3, settings.enriched_bucket, prefix) if not retention.out_of_scope(o.key, oldest)
    ]
    with psycopg.connect(settings.database_url) as conn:
        batch_prefixes = (
            [
                f"{settings.enriched_prefix}dt={day.isoformat()}/batch={batch}/"
                for batch, day in conn.execute(
                    "SELECT m.batch_id, b.day FROM enrichment_manifest m JOIN enrichment_batches b USING (batch_id) "
                    "WHERE m.customer_id = %s ORDER BY m.batch_id",
                    (customer_id,),
                ).fetchall()
            ]
            if customer_id
            else []
        )
    with ThreadPoolExecutor(8) as pool:
        # A batch object holds several tenants: for one customer, its rows are what counts.
        batch_objects = [
            o
            for found in pool.map(lambda p: list_enriched(s3, settings.enriched_bucket, p), batch_prefixes)
            for o in found
            if not retention.out_of_scope(o.key, oldest)
        ]
        objects += batch_objects
        counted = list(pool.map(lambda o: parquet_num_rows(s3, o), objects[: len(objects) - len(batch_objects)]))
        counted += list(pool.map(lambda o: parquet_rows_of(s3, o, customer_id), batch_objects))
        expected = dict(zip((o.key for o in objects), counted, strict=True))
    with psycopg.connect(settings.database_url) as conn:
        live = live_loads(conn, settings.enriched_bucket, prefix)
        for batch_prefix in batch_prefixes:
            live.update(live_loads(conn, settings.enriched_bucket, batch_prefix))
        live = {k: load for k, load in live.items() if not retention.out_of_scope(k, oldest)}
        customer_filter = sql.SQL("WHERE e.customer_id = %(c)s" if customer_id else "")
        in_scope = (
            sql.SQL("AND" if customer_id else "WHERE") + sql.SQL(" e.day >= %(oldest)s") if oldest else sql.SQL("")
        )
        per_load = dict(
            conn.execute(
                sql.SQL("SELECT e.ledger_id, count(*) FROM telemetry_events e {} {} GROUP BY e.ledger_id").format(
                    customer_filter, in_scope
                ),
                {"c": customer_id, "oldest": oldest},
            ).fetchall()
        )
        reports, messages = conn.execute(
            sql.SQL(
                """SELECT count(DISTINCT (e.report_org, e.report_id)), coalesce(sum(e.message_count), 0)
                FROM telemetry_events e {}"""
            ).format(customer_filter),
            {"c": customer_id},
        ).fetchone()
        failures = conn.execute(
            """SELECT count(DISTINCT (f.bucket, f.object_key, f.object_version)) FROM import_failures f
               WHERE f.bucket = %s AND starts_with(f.object_key, %s) AND NOT EXISTS (
                   SELECT 1 FROM load_ledger l WHERE l.bucket = f.bucket AND l.object_key = f.object_key
                   AND l.recorded_at > f.failed_at)""",
            (settings.enriched_bucket, prefix),
        ).fetchone()[0]
        box = inbox.counts(conn, settings.enriched_bucket, prefix)
    missing, duplicated, wrong_version, loaded_objects, rows_loaded = [], [], [], 0, 0
    current_ids = set()
    unreadable = [o.key for o in objects if expected[o.key] is None]
    for obj in objects:
        if expected[obj.key] is None:
            continue  # not Parquet: it cannot be imported, and is counted as unreadable
        load = live.get(obj.key)
        if load is None or load.version != obj.version:
            missing.append(
                {
                    "key": obj.key,
                    "version": obj.version,
                    "rows": expected[obj.key],
                    "loaded_version": load.version if load else None,
                }
            )
            if load is not None:
                wrong_version.append({"key": obj.key, "s3": obj.version, "warehouse": load.version})
            continue
        current_ids.add(load.ledger_id)
        loaded_objects += 1
        have = per_load.get(load.ledger_id, 0)
        rows_loaded += have
        if have < expected[obj.key]:
            missing.append({"key": obj.key, "version": obj.version, "rows": expected[obj.key] - have})
        elif have > expected[obj.key]:
            duplicated.append({"key": obj.key, "rows": have - expected[obj.key]})
    # Rows whose object version no longer exists (or never did) must not be there either.
    stray = sum(n for ledger_id, n in per_load.items() if ledger_id not in current_ids)
    if stray:
        duplicated.append({"key": "(rows of object versions that do not exist in S3)", "rows": stray})
    dead_visible, dead_in_flight = queue_depth(sqs, settings.dead_letter_queue_url)
    rows_expected = sum(n for n in expected.values() if n is not None)
    return {
        "customer": customer_id,
        "horizon": oldest.isoformat() if oldest else None,
        "objects_enriched": len(objects),
        "objects_loaded": loaded_objects,
        "rows_expected": rows_expected,
        "rows_loaded": rows_loaded,
        "missing": sum(m["rows"] for m in missing),
        "duplicates": sum(d["rows"] for d in duplicated),
        "missing_objects": missing[:100],
        "duplicated_objects": duplicated[:100],
        "unreadable": len(unreadable),
        "unreadable_objects": unreadable[:100],
        "reports_loaded": reports,
        "messages_loaded": int(messages),
        "dead_letter": dead_visible + dead_in_flight + box.dead,
        "inbox_pending": box.pending,
        "wrong_version": len(wrong_version),
        "wrong_version_objects": wrong_version[:100],
        "failures": failures,
        "ok": not missing and not duplicated,
    }
