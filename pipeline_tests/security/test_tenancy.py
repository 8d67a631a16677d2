"""One customer's collector cannot write another customer's data (issue #21, high 2).

A collector is scoped to ``raw/customer=<tag>/``. Whatever its objects' records claim, the tenant
is the one the key names: at enrichment (foreign rows are quarantined with their reason) and
again at import (an enriched object with a foreign row is refused whole). Event ids are unique
per tenant, and raw objects are decompressed within a bound."""

from __future__ import annotations

import datetime as dt
import gzip
import random
import uuid

import psycopg
import pyarrow as pa
import pytest

from pipeline.collector.collect import collect
from pipeline.collector.inputs import read_report
from pipeline.collector.spool import Spool
from pipeline.enrich.spark import enrich_days_in_process
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import ObjectRejected, load_object
from pipeline_tests.security import hostile
from pipeline_tests.support import enriched_of, new_customer


def _days_named_by_tests() -> set[dt.date]:
    """Every day a test names literally ("2020-01-01", ``dt.date(2020, 1, 1)``): unique_day avoids them."""
    import re
    from pathlib import Path

    named = set()
    for path in Path(__file__).resolve().parents[1].rglob("*.py"):
        text = path.read_text()
        for y, m, d in re.findall(r"\b(20\d\d)-(\d\d)-(\d\d)\b", text):
            named.add((int(y), int(m), int(d)))
        for y, m, d in re.findall(r"date\((20\d\d), (\d{1,2}), (\d{1,2})\)", text):
            named.add((int(y), int(m), int(d)))
    days = set()
    for y, m, d in named:
        try:
            days.add(dt.date(y, m, d))
        except ValueError:
            continue
    return days


_TAKEN: set[dt.date] = set()


def unique_day() -> dt.date:
    """A day of 2019-2023 that no other test of this run enriches: not one a test names (the samples
    are of 2018 and 2024; a few tests write fixed days of these years), and not one handed out
    before (a shared day's raw objects would be enriched together and miscounted)."""
    if not _TAKEN:
        _TAKEN.update(_days_named_by_tests())
    pick = random.SystemRandom()
    while True:
        day = dt.date(2019, 1, 1) + dt.timedelta(days=pick.randrange(5 * 365 - 2))
        if day not in _TAKEN:
            _TAKEN.add(day)
            return day


def report_file(tmp_path, day: dt.date, report_id: str, records: int = 3):
    begin = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
    path = tmp_path / f"{report_id}.xml"
    path.write_bytes(hostile.report_xml(records=records, begin=begin, report_id=report_id, org_name="Receiver"))
    return path


def enriched(s3, settings, customer: str) -> list[str]:
    return enriched_of(settings, customer)


def quarantined(s3, settings, customer: str, day) -> str:
    """Everything enrichment quarantined of a customer's day (one file per batch)."""
    listed = s3.list_objects_v2(Bucket=settings.enriched_bucket, Prefix=f"quarantine/customer={customer}/dt={day}/")
    return "".join(
        gzip.decompress(s3.get_object(Bucket=settings.enriched_bucket, Key=o["Key"])["Body"].read()).decode()
        for o in listed.get("Contents", [])
    )


def load_all(settings, s3, keys: list[str]) -> list:
    outcomes = []
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        for key in keys:
            etag = s3.head_object(Bucket=settings.enriched_bucket, Key=key)["ETag"].strip('"')
            try:
                outcomes.append(load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag)))
            except ObjectRejected as exc:
                outcomes.append(exc)
    return outcomes


def rows_of(settings, customer: str) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_events WHERE customer_id = %s", (customer,)).fetchone()[0]


def test_a_raw_object_claiming_another_tenant_never_reaches_it(stack, clients, tmp_path, empty_queues):
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    day = unique_day()
    victims_report = report_file(tmp_path, day, f"real-{b}", records=3)
    # a's collector (compromised, or a's own user) writes b's report, claimed as b's, under a's prefix
    forged = read_report(victims_report, b)
    forged_key = forged.key(stack.raw_prefix).replace(f"customer={b}/", f"customer={a}/")
    assert forged_key.startswith(f"{stack.raw_prefix}customer={a}/")
    s3.put_object(Bucket=stack.raw_bucket, Key=forged_key, Body=forged.body(), Metadata={"records": "3"})
    # ... beside a's own genuine report, and b's real one collected by b's collector
    collect([report_file(tmp_path, day, f"own-{a}", records=2)], a, stack, Spool(tmp_path / "spool-a"))
    collect([victims_report], b, stack, Spool(tmp_path / "spool-b"))

    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], f"tenancy-{uuid.uuid4().hex[:8]}")
    assert result.foreign_rows == 3 and result.rows_match
    assert quarantined(s3, stack, a, day).count("is not the tenant its object key names (customer=") == 3

    outcomes = load_all(stack, s3, sorted(set(enriched(s3, stack, a) + enriched(s3, stack, b))))
    assert [o.outcome for o in outcomes] == ["loaded"]  # one batch of the day; b's real load is not blocked
    assert rows_of(stack, a) == 2  # only a's own records
    assert rows_of(stack, b) == 3  # exactly b's real report, once
    with psycopg.connect(stack.database_url) as conn:
        [batch] = {b for (b,) in conn.execute("SELECT batch_id FROM enrichment_manifest WHERE customer_id = %s", (a,))}
        manifest = dict(conn.execute("SELECT customer_id, rows FROM enrichment_manifest WHERE batch_id = %s", (batch,)))
    assert manifest == {a: 2, b: 3}  # the tenants of the batch are the raw keys', with their own rows


def test_an_enriched_object_with_a_foreign_row_is_refused_whole(stack, clients):
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    table = synthetic_enriched_table(10, seed=3, customer_id=a, report_id=f"mixed-{a}")
    ids = table.column("customer_id").to_pylist()
    ids[7] = b
    table = table.set_column(table.schema.get_field_index("customer_id"), "customer_id", pa.array(ids, pa.string()))
    key = f"{stack.enriched_prefix}customer={a}/dt=2026-11-01/mixed.parquet"
    s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=parquet_bytes(table))
    [outcome] = load_all(stack, s3, [key])
    assert isinstance(outcome, ObjectRejected) and f"not of {a!r} that its key names" in str(outcome)
    assert rows_of(stack, a) == 0 and rows_of(stack, b) == 0  # nothing of the version, not even a's rows


def test_an_object_whose_key_names_no_tenant_is_refused(stack, clients):
    s3 = clients("s3")
    table = synthetic_enriched_table(4, seed=4, customer_id="acme", report_id=f"nokey-{uuid.uuid4().hex}")
    key = f"{stack.enriched_prefix}loose/{uuid.uuid4().hex}.parquet"
    s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=parquet_bytes(table))
    [outcome] = load_all(stack, s3, [key])
    assert isinstance(outcome, ObjectRejected) and "names no tenant" in str(outcome)


def _batch_object(stack, s3, day: str, customers: list[str], manifest: dict | None) -> str:
    """A batch object holding 3 rows of each of ``customers``, and (unless None) its manifest."""
    batch = f"20261101T000000Z-{uuid.uuid4().hex[:12]}"
    tables = [
        synthetic_enriched_table(3, seed=n, customer_id=c, report_id=f"batch-{c}-{batch}")
        for n, c in enumerate(customers)
    ]
    key = f"{stack.enriched_prefix}dt={day}/batch={batch}/part-00000.parquet"
    s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=parquet_bytes(pa.concat_tables(tables)))
    if manifest is not None:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO enrichment_batches (batch_id, day) VALUES (%s, %s)", (batch, day))
            for customer, rows in manifest.items():
                conn.execute(
                    "INSERT INTO enrichment_manifest (batch_id, customer_id, rows) VALUES (%s, %s, %s)",
                    (batch, customer, rows),
                )
    return key


def test_a_batch_object_loads_only_into_the_tenants_of_its_manifest(stack, clients):
    """Batch objects hold several tenants; the manifest enrichment records before publishing
    names them. A row of a tenant it does not name, or an object no batch was planned for
    (someone else wrote it), is refused whole."""
    s3 = clients("s3")
    a, b, c = new_customer(), new_customer(), new_customer()
    good = _batch_object(stack, s3, "2026-11-01", [a, b], {a: 3, b: 3})
    foreign = _batch_object(stack, s3, "2026-11-01", [a, c], {a: 3})
    orphan = _batch_object(stack, s3, "2026-11-01", [a], None)
    loaded, refused, unplanned = load_all(stack, s3, [good, foreign, orphan])
    assert loaded.outcome == "loaded" and rows_of(stack, a) == 3 and rows_of(stack, b) == 3
    assert isinstance(refused, ObjectRejected) and "the manifest of enrichment batch" in str(refused)
    assert c in str(refused) and rows_of(stack, c) == 0
    assert isinstance(unplanned, ObjectRejected) and "no enrichment batch" in str(unplanned)
    assert rows_of(stack, a) == 3  # nothing of the refused versions, not even a's rows


def test_event_ids_never_collide_across_tenants(stack, clients):
    """The same event ids in two tenants' objects: both load (the key is per tenant)."""
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    shared_ids = [uuid.uuid4().hex for _ in range(5)]
    keys = []
    for customer in (a, b):
        table = synthetic_enriched_table(5, seed=5, customer_id=customer, report_id=f"same-{customer}")
        table = table.set_column(
            table.schema.get_field_index("event_id"), "event_id", pa.array(shared_ids, pa.string())
        )
        key = f"{stack.enriched_prefix}customer={customer}/dt=2026-11-01/same-ids.parquet"
        s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=parquet_bytes(table))
        keys.append(key)
    outcomes = load_all(stack, s3, keys)
    assert [o.outcome for o in outcomes] == ["loaded", "loaded"]
    assert rows_of(stack, a) == rows_of(stack, b) == 5


def test_raw_objects_are_decompressed_within_a_bound(stack, clients, tmp_path, monkeypatch, empty_queues):
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    collect([report_file(tmp_path, day, f"own-{a}", records=2)], a, stack, Spool(tmp_path / "spool"))
    prefix = f"{stack.raw_prefix}customer={a}/dt={day}/"
    bomb = gzip.compress(b"\n" * (4 * 1024 * 1024), compresslevel=9)  # 4 MB of nothing from 4 KB
    s3.put_object(Bucket=stack.raw_bucket, Key=prefix + "bomb_0.jsonl.gz", Body=bomb, Metadata={"records": "1"})
    s3.put_object(Bucket=stack.raw_bucket, Key=prefix + "plain_0.jsonl.gz", Body=b'{"not": "gzip"}\n')
    monkeypatch.setenv("PIPELINE_RAW_MAX_BYTES", str(1024 * 1024))

    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], f"bound-{uuid.uuid4().hex[:8]}")
    assert result.quarantined_objects == 2 and result.enriched_rows == 2 and result.rows_match
    found = quarantined(s3, stack, a, day)
    assert "expands past 1048576 bytes" in found and "is not gzip" in found


@pytest.mark.parametrize("claimed", ["", None])
def test_rows_without_a_tenant_are_quarantined_not_adopted(stack, clients, tmp_path, claimed, empty_queues):
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    report = read_report(report_file(tmp_path, day, f"anon-{a}", records=2), a)
    lines = b"".join(
        gzip.decompress(report.body()).replace(
            f'"customer_id": "{a}"'.encode(), f'"customer_id": {"null" if claimed is None else chr(34) * 2}'.encode()
        )
        for _ in [0]
    )
    s3.put_object(
        Bucket=stack.raw_bucket, Key=report.key(stack.raw_prefix), Body=gzip.compress(lines), Metadata={"records": "2"}
    )
    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], f"anon-{uuid.uuid4().hex[:8]}")
    assert result.enriched_rows == 0 and result.rescued_rows == 2 and result.rows_match


def test_a_copy_of_a_guessable_report_neither_replaces_the_real_one_nor_blocks_its_load(stack, clients, tmp_path):
    """The identity rule (RELIABILITY.md, "Hostile input"): a report is (org, report id, day).
    A copy with the same identity never replaces a stored copy that is as clean or cleaner, and
    a copy of the same org and id dated another day is another report, whose rows take other
    event ids: the real report still loads, once."""
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    real = report_file(tmp_path, day, "guessable-1", records=3)
    collect([real], a, stack, Spool(tmp_path / "spool"))
    forged_same_day = tmp_path / "forged" / "same.xml"
    forged_same_day.parent.mkdir()
    begin = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
    forged_same_day.write_bytes(
        hostile.report_xml(records=1, begin=begin, report_id="guessable-1", org_name="Receiver", count=99_999)
    )
    again = collect([forged_same_day], a, stack, Spool(tmp_path / "spool"))
    assert again.objects_written == [] and again.objects_replaced == [] and len(again.already_in_s3) == 1
    other_day = day + dt.timedelta(days=1)
    forged_other_day = report_file(tmp_path / "forged", other_day, "guessable-1", records=3)
    collect([forged_other_day], a, stack, Spool(tmp_path / "spool"))

    enrich_days_in_process(stack, s3, [day.isoformat(), other_day.isoformat()], f"guess-{uuid.uuid4().hex[:8]}")
    outcomes = load_all(stack, s3, enriched(s3, stack, a))
    assert [o.outcome for o in outcomes] == ["loaded", "loaded"]  # the other day's copy blocks nothing
    with psycopg.connect(stack.database_url) as conn:
        by_day = dict(
            conn.execute(
                "SELECT day, sum(message_count) FROM telemetry_events WHERE customer_id = %s GROUP BY 1", (a,)
            ).fetchall()
        )
    assert by_day[day] == 9  # the real report's three records of 3 messages, not the forged 99,999


def test_the_health_page_shows_a_tenant_its_batches_and_hides_other_tenants_failures(stack, clients):
    """A batch object concerns every tenant of its manifest: each sees its load with its own rows,
    and a failure of the batch with a generic text (the real one may name another tenant)."""
    from pipeline.web.queries import Warehouse, health

    s3 = clients("s3")
    a, b, c = new_customer(), new_customer(), new_customer()
    good = _batch_object(stack, s3, "2026-11-02", [a, b], {a: 3, b: 3})
    foreign = _batch_object(stack, s3, "2026-11-02", [a, c], {a: 3})
    load_all(stack, s3, [good, foreign])
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # what the importer records of a failure
        conn.execute(
            "INSERT INTO import_failures (bucket, object_key, object_version, error_class, error) "
            "VALUES (%s, %s, 'v', 'ObjectRejected', %s)",
            (stack.enriched_bucket, foreign, f"holds rows of customer_id ['{c}']"),
        )
        conn.execute(
            "UPDATE enrichment_batches SET objects = ARRAY[%s] WHERE batch_id = %s",
            (foreign, foreign.split("batch=")[1].split("/")[0]),
        )
        conn.execute(
            "UPDATE enrichment_batches SET objects = ARRAY[%s] WHERE batch_id = %s",
            (good, good.split("batch=")[1].split("/")[0]),
        )
    warehouse = Warehouse(stack.database_url, pool_size=1)
    try:
        with warehouse.tenant(a) as conn:
            seen = health(conn, a, stack.enriched_prefix)
        with warehouse.tenant(c) as conn:
            other = health(conn, c, stack.enriched_prefix)
    finally:
        warehouse.close()
    loads = {row["object_key"]: row for row in seen["recent_loads"]}
    good_key = good[len(stack.enriched_prefix) :]
    assert loads[good_key]["rows"] == 3  # a's rows of the batch, not the batch's six
    [failure] = [f for f in seen["failures"] if f["object_key"] == foreign[len(stack.enriched_prefix) :]]
    assert c not in failure["error"] and "retries it" in failure["error"]
    assert not other["recent_loads"] and not other["failures"]  # c is in no manifest


def test_unique_days_are_unique_and_avoid_the_days_tests_name():
    """The raw-object tests enrich whole days: two sharing one would count each other's objects
    (a CI run failed so on 2020-01-01, the day test_collect's large report is written)."""
    days = [unique_day() for _ in range(300)]
    assert len(set(days)) == len(days)
    assert dt.date(2020, 1, 1) in _days_named_by_tests() and not set(days) & _days_named_by_tests()
