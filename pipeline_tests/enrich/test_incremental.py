"""Incremental enrichment (issue #22): a new report costs one report's work, whatever the day holds.

A run enriches only the raw objects no run enriched under the current model and reference data,
as a new batch (enriched/dt=<day>/batch=<id>/), and never publishes a row twice; a re-run
publishes nothing; a crash between staging and publishing is redone with the same inputs, keys
and bytes; a new model, a changed raw object or --reprocess re-enriches the batches whole, at
the same keys, and the warehouse follows exactly once."""

from __future__ import annotations

import datetime as dt
import gzip
import threading
import uuid

import psycopg
import pytest

from pipeline.collector.collect import collect
from pipeline.collector.spool import Spool
from pipeline.enrich import ledger, model
from pipeline.enrich import spark as spark_module
from pipeline.enrich.ledger import RawVersion
from pipeline.enrich.spark import enrich_days_in_process
from pipeline.importer.verify import verify
from pipeline_tests.security.test_tenancy import load_all, report_file, unique_day
from pipeline_tests.support import enriched_of, new_customer


def _etags(s3, stack, day) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=stack.enriched_bucket, Prefix=f"{stack.enriched_prefix}dt={day}/")
    return {o["Key"]: o["ETag"] for o in listed.get("Contents", [])}


def _copied(stack, customer) -> int:
    """Rows COPYed into telemetry_events for a customer's objects, over every load ever made."""
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(
            """SELECT coalesce(sum(l.rows), 0) FROM load_ledger l
               WHERE l.event = 'loaded' AND l.object_key = ANY(%s)""",
            (enriched_of(stack, customer),),
        ).fetchone()[0]


def _rows(stack, customer) -> int:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_events WHERE customer_id = %s", (customer,)).fetchone()[0]


def _run() -> str:
    return f"inc-{uuid.uuid4().hex[:8]}"


def test_each_new_report_is_enriched_and_imported_once(stack, clients, tmp_path, empty_queues):
    """The issue's case at small scale: reports trickle in, each followed by an enrichment run
    and an import. Rows copied equal records received (was (R+1)/2 times), and each run reads
    only the new report."""
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    reports, records = 6, 5
    for n in range(reports):
        collect([report_file(tmp_path, day, f"r{n}-{a}", records=records)], a, stack, Spool(tmp_path / "s"))
        before = _etags(s3, stack, day)
        [result] = enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[a])
        assert result.listed_objects == n + 1 and result.skipped_objects == n
        assert result.raw_objects == 1 and result.rows_read == records and result.rows_match
        assert result.new_batches == 1 and len(result.written) == 1 and not result.removed
        after = _etags(s3, stack, day)
        assert {k: v for k, v in after.items() if k in before} == before  # published rows stay where they are
        load_all(stack, s3, enriched_of(stack, a))
    assert _rows(stack, a) == reports * records
    assert _copied(stack, a) == reports * records  # write amplification 1.0

    [again] = enrich_days_in_process(stack, s3, [day.isoformat()], _run())  # a re-run, or a UI backfill
    assert again.raw_objects == 0 and not again.written and not again.batches
    assert again.skipped_objects == reports
    assert verify(stack, a)["ok"]


def test_a_crash_between_staging_and_publishing_is_redone_with_the_same_keys(
    stack, clients, tmp_path, monkeypatch, empty_queues
):
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    day = unique_day()
    for customer in (a, b):
        collect([report_file(tmp_path, day, f"c-{customer}", records=4)], customer, stack, Spool(tmp_path / customer))

    def crash(*args, **kwargs):
        raise RuntimeError("the driver died after its tasks staged")

    monkeypatch.setattr(spark_module, "publish_batches", crash)
    with pytest.raises(RuntimeError, match="driver died"):
        enrich_days_in_process(stack, s3, [day.isoformat()], "crashed-" + _run())
    assert not _etags(s3, stack, day)  # nothing published
    monkeypatch.undo()
    with psycopg.connect(stack.database_url) as conn:
        [(planned, state)] = conn.execute(
            """SELECT b.batch_id, b.state FROM enrichment_batches b JOIN enrichment_inputs i USING (batch_id)
               WHERE i.customer_id = %s""",
            (a,),
        ).fetchall()
    assert state == "planned"

    # A run of one customer's new report redoes the crashed batch whole (it holds both customers).
    collect([report_file(tmp_path, day, f"c2-{a}", records=2)], a, stack, Spool(tmp_path / a))
    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[a])
    assert result.reenriched_batches == 1 and result.new_batches == 1 and result.rows_match
    assert planned in result.batches
    assert any(f"batch={planned}/" in k for k in result.written)
    outcomes = load_all(stack, s3, sorted(set(enriched_of(stack, a)) | set(enriched_of(stack, b))))
    assert all(o.outcome == "loaded" for o in outcomes)
    assert (_rows(stack, a), _rows(stack, b)) == (6, 4)

    # Published, but the run died before marking it: the next run redoes it, and its bytes are
    # the ones already there, so nothing is written and no importer is notified.
    monkeypatch.setattr(ledger, "mark_published", lambda *args, **kwargs: None)
    collect([report_file(tmp_path, day, f"c3-{b}", records=1)], b, stack, Spool(tmp_path / b))
    enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[b])
    monkeypatch.undo()
    published = _etags(s3, stack, day)
    [redo] = enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[b])
    assert redo.reenriched_batches == 1 and not redo.written and redo.unchanged
    assert _etags(s3, stack, day) == published


def test_a_new_model_or_reprocess_re_enriches_the_days_whole_at_the_same_keys(
    stack, clients, tmp_path, monkeypatch, empty_queues
):
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    for n in range(3):
        collect([report_file(tmp_path, day, f"m{n}-{a}", records=3)], a, stack, Spool(tmp_path / "s"))
        enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[a])
    load_all(stack, s3, enriched_of(stack, a))
    keys = set(_etags(s3, stack, day))
    assert len(keys) == 3

    # --reprocess without a change: every batch enriched again, the same bytes: nothing written.
    [same] = enrich_days_in_process(stack, s3, [day.isoformat()], _run(), reprocess=True)
    assert same.reenriched_batches == 3 and same.raw_objects == 3
    assert not same.written and sorted(same.unchanged) == sorted(keys)

    # A new model: a plain run (a sensor's, a backfill's) re-enriches the batches it meets.
    monkeypatch.setattr(model, "MODEL_VERSION", "sender-v1-next")
    [new_model] = enrich_days_in_process(stack, s3, [day.isoformat()], _run())
    assert new_model.reenriched_batches == 3 and sorted(new_model.written) == sorted(keys)
    assert set(_etags(s3, stack, day)) == keys  # the same keys: the importer supersedes in place
    outcomes = load_all(stack, s3, sorted(keys))
    assert [o.outcome for o in outcomes] == ["loaded"] * 3 and sum(o.superseded for o in outcomes) == 3
    assert _rows(stack, a) == 9
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute(
            "SELECT DISTINCT model_version FROM telemetry_events WHERE customer_id = %s", (a,)
        ).fetchall() == [("sender-v1-next",)]
    [settled] = enrich_days_in_process(stack, s3, [day.isoformat()], _run())
    assert not settled.batches
    assert verify(stack, a)["ok"]


def test_a_rewritten_raw_object_makes_its_batch_due(stack, clients, tmp_path, empty_queues):
    """The collector replaces a stored copy by a cleaner one of the same report (same key, new
    ETag): its batch is enriched again, at its keys, and its rows are superseded, not doubled."""
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    collect([report_file(tmp_path, day, f"w-{a}", records=3)], a, stack, Spool(tmp_path / "s"))
    collect([report_file(tmp_path, day, f"v-{a}", records=2)], a, stack, Spool(tmp_path / "s"))
    enrich_days_in_process(stack, s3, [day.isoformat()], _run())
    load_all(stack, s3, enriched_of(stack, a))
    raw = s3.list_objects_v2(Bucket=stack.raw_bucket, Prefix=f"{stack.raw_prefix}customer={a}/dt={day}/")
    key = sorted(o["Key"] for o in raw["Contents"])[0]
    body = s3.get_object(Bucket=stack.raw_bucket, Key=key)
    rewritten = body["Body"].read() + gzip.compress(b"")  # another gzip member, of no line: a new ETag
    s3.put_object(Bucket=stack.raw_bucket, Key=key, Body=rewritten, Metadata=body["Metadata"])
    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], _run())
    assert result.reenriched_batches == 1 and result.raw_objects == 2 and result.rows_match
    load_all(stack, s3, enriched_of(stack, a))
    assert _rows(stack, a) == 5 and verify(stack, a)["ok"]


def test_concurrent_planners_put_each_raw_object_in_one_batch(stack):
    """Two runs planning the same new objects at once (two sensor runs of one day): the lock
    serializes them, and the second finds them planned by the first."""
    day = "2021-03-04"
    now = dt.datetime.now(dt.UTC)
    customer = new_customer()
    listed = [
        RawVersion(f"raw/customer={customer}/dt={day}/o{n}.jsonl.gz", f"e{n}", 100, customer, day, now)
        for n in range(50)
    ]
    plans = []

    def one():
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            plans.append(ledger.plan(conn, "concurrency-test", listed, ("m", "r")))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    new = [b for p in plans for b in p.batches if b.new]
    assert len(new) == 1 and len(new[0].inputs) == 50
    redone = [b for p in plans for b in p.batches if not b.new]  # the others see it planned, not published
    assert all(b.batch_id == new[0].batch_id for b in redone)
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute(
            "SELECT count(DISTINCT batch_id), count(*) FROM enrichment_inputs WHERE bucket = 'concurrency-test' "
            "AND customer_id = %s",
            (customer,),
        ).fetchone() == (1, 50)


def test_a_listing_older_than_an_input_never_takes_it_for_deleted(stack):
    """Run A lists, then waits for the planning lock while run B lists later, finds a new object
    and plans it. A's listing lacks it, but A must not call it deleted: its batch is not due,
    and its input stays (the chaos kind trickle_during_backfill found this)."""
    day, customer = "2021-05-06", new_customer()
    now = dt.datetime.now(dt.UTC)

    def version(n: int) -> RawVersion:
        return RawVersion(f"raw/customer={customer}/dt={day}/o{n}.jsonl.gz", f"e{n}", 100, customer, day, now)

    bucket = "listing-test"
    facts = {"objects": [], "raw_objects": 1, "raw_records": 1, "enriched_rows": 1}
    with psycopg.connect(stack.database_url, autocommit=True) as conn:

        def clock():
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

        def planned_and_published(listed, listed_at):
            plan = ledger.plan(conn, bucket, listed, ("m", "r"), scope=([day], [customer], listed_at))
            ledger.mark_published(conn, {b.batch_id: facts for b in plan.batches}, ("m", "r"))
            return plan

        planned_and_published([version(0)], clock())
        a_listed_at = clock()  # A's listing: o0 only
        b = planned_and_published([version(0), version(1)], clock())
        assert [len(x.inputs) for x in b.batches if x.new] == [1]  # B records o1
        a = ledger.plan(conn, bucket, [version(0)], ("m", "r"), scope=([day], [customer], a_listed_at))
        assert a.batches == []  # nothing new, nothing deleted
        later = ledger.plan(conn, bucket, [version(0)], ("m", "r"), scope=([day], [customer], clock()))
        assert [b.why for b in later.batches] == [f"raw/customer={customer}/dt={day}/o1.jsonl.gz was deleted"]


def test_batches_are_cut_by_size_and_named_readably(monkeypatch):
    now = dt.datetime(2026, 11, 30, 12, 0, 5, tzinfo=dt.UTC)
    versions = [
        RawVersion(f"raw/customer=c/dt=2026-11-30/o{n:02d}.jsonl.gz", "e", 400, "c", "2026-11-30", now)
        for n in range(10)
    ]
    batches = ledger.new_batches(versions, max_bytes=1000)
    assert [len(b.inputs) for b in batches] == [2, 2, 2, 2, 2]
    assert all(ledger.BATCH_ID.fullmatch(b.batch_id) and b.batch_id.startswith("20261130T120005Z-") for b in batches)
    assert ledger.new_batches(versions, max_bytes=1000) == batches  # the same inputs, the same batches
    assert batches[0].prefix("enriched/") == f"enriched/dt=2026-11-30/batch={batches[0].batch_id}/"


def test_a_few_new_reports_are_enriched_without_starting_spark(stack, clients, tmp_path, empty_queues):
    """Under PIPELINE_ENRICH_LOCAL_BYTES the run's own process enriches (the same task code); a
    run at or over it asks for its Spark session."""
    s3 = clients("s3")
    a = new_customer()
    day = unique_day()
    collect([report_file(tmp_path, day, f"small-{a}", records=3)], a, stack, Spool(tmp_path / "s"))

    def no_spark():
        raise AssertionError("a Spark session was started for a few reports")

    [result] = spark_module.enrich_days(no_spark, stack, s3, [day.isoformat()], _run(), customers=[a])
    assert result.enriched_rows == 3 and result.rows_match and len(result.written) == 1
    collect([report_file(tmp_path, day, f"big-{a}", records=2)], a, stack, Spool(tmp_path / "s"))
    with pytest.raises(AssertionError, match="Spark session was started"):
        spark_module.enrich_days(no_spark, stack, s3, [day.isoformat()], _run(), customers=[a], local_bytes=1)


def test_two_runs_writing_one_batchs_manifest_at_once_both_succeed(stack):
    """A backfill and a sensor run may enrich the same batch again at the same time."""
    batch = f"20260101T000000Z-{uuid.uuid4().hex[:12]}"
    a, b = new_customer(), new_customer()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO enrichment_batches (batch_id, day) VALUES (%s, '2026-01-01')", (batch,))
        ledger.record_manifest(conn, {batch: {a: 1, b: 9}})
    errors = []

    def write(n: int) -> None:
        try:
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                for _ in range(20):
                    ledger.record_manifest(conn, {batch: {a: n}})
        except Exception as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with psycopg.connect(stack.database_url) as conn:
        assert set(ledger.manifest(conn, batch)) == {a}  # b left the batch


def test_the_assets_run_of_a_few_reports_starts_no_spark_session(stack, tmp_path, monkeypatch, empty_queues):
    """Through Dagster, as the raw sensor's run: the pyspark resource must not start a session
    (10 s on this machine, most of a report's time to the page) for a run enriched in process."""
    import dagster_pyspark.resources
    from dagster import AssetKey, DagsterInstance, RunRequest, SensorResult

    from pipeline import names
    from pipeline.local.inprocess import apply

    def no_session(*args, **kwargs):
        raise AssertionError("a Spark session was started for a few reports")

    monkeypatch.setattr(dagster_pyspark.resources, "spark_session_from_config", no_session)
    a, on = new_customer(), unique_day()
    day = on.isoformat()
    collect([report_file(tmp_path, on, f"lazy-{a}", records=2)], a, stack, Spool(tmp_path / "s"))
    request = RunRequest(
        asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
        tags={names.RANGE_START_TAG: day, names.RANGE_END_TAG: day},
        run_config={"ops": {names.ENRICHED_TELEMETRY: {"config": {"customers": [a]}}}},
    )
    [run] = apply(DagsterInstance.ephemeral(), SensorResult(run_requests=[request]))
    failures = [e.message for e in run.all_events if e.event_type_value in ("STEP_FAILURE", "RUN_FAILURE")]
    assert run.success, failures
    assert enriched_of(stack, a)


def test_verify_counts_one_tenants_rows_of_a_batch_object_without_downloading_it(
    stack, clients, tmp_path, empty_queues
):
    """A batch object holds every tenant of its day: verify --customer reads its footer and its
    customer_id column chunks (ranged GETs), not the object."""
    from pipeline.importer.inventory import list_enriched, parquet_rows_of

    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    day = unique_day()
    collect([report_file(tmp_path, day, f"few-{a}", records=2)], a, stack, Spool(tmp_path / "a"))
    collect([report_file(tmp_path, day, f"many-{b}", records=20_000)], b, stack, Spool(tmp_path / "b"))
    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], _run(), customers=[a, b])
    [key] = result.written
    load_all(stack, s3, [key])
    [obj] = list_enriched(s3, stack.enriched_bucket, key)
    fetched: list[int] = []

    def count(parsed, **_) -> None:
        fetched.append(parsed.get("ContentLength", 0))

    # The session's shared client: the hook must not outlive this test (other tests' GETs fail).
    s3.meta.events.register("after-call.s3.GetObject", count)
    try:
        assert parquet_rows_of(s3, obj, a) == 2 and parquet_rows_of(s3, obj, b) == 20_000
    finally:
        s3.meta.events.unregister("after-call.s3.GetObject", count)
    assert sum(fetched) < obj.size / 2, (sum(fetched), obj.size)
    assert verify(stack, a)["ok"] and verify(stack, b)["ok"]
