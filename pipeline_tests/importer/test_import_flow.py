"""The SQS sensor + importer runs, end to end on the real stack, with faults injected on purpose.

After each scenario `verify` must report nothing missing and nothing duplicated.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from dagster import AssetKey, DagsterInstance

from pipeline.defs.importer.sensors import import_queue_sensor
from pipeline.importer.batch import ImportItem, import_items
from pipeline.importer.partitions import objects_for
from pipeline.importer.queue import parse_delivery
from pipeline.importer.verify import verify
from pipeline_tests.support import (
    drain_through_dagster,
    duplicate_message,
    enriched_key,
    execute_requests,
    materialized,
    messages_for,
    new_customer,
    own_messages,
    put_enriched,
    put_poison_and_good,
    receive_all,
    sensor_tick,
)


def assert_exactly_once(stack, customer_id: str) -> dict:
    report = verify(stack, customer_id)
    assert report["missing"] == 0, report["missing_objects"]
    assert report["duplicates"] == 0, report["duplicated_objects"]
    assert report["ok"]
    return report


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def test_objects_become_partitions_imported_in_batched_runs(stack, clients, empty_queues, instance):
    cid = new_customer()
    keys = [enriched_key(stack, cid, f"part-{i:03d}.parquet") for i in range(12)]
    for i, key in enumerate(keys):
        put_enriched(clients("s3"), stack, key, rows=25, seed=i, customer_id=cid)
    runs = drain_through_dagster(instance)
    assert all(r.success for r in runs)
    # 12 objects, one run (the shared queue may hold other tests' leftovers: look at ours only).
    ours = [
        r
        for r in runs
        if any(
            (m.partition or "").startswith(f"customer={cid}/")
            for m in r.asset_materializations_for_node("telemetry_events")
        )
    ]
    assert len(ours) == 1
    report = assert_exactly_once(stack, cid)
    assert (report["objects_loaded"], report["rows_loaded"]) == (12, 300)
    assert len(materialized(instance, cid)) == 12
    metadata = ours[0].asset_materializations_for_node("telemetry_events")[0].metadata
    assert metadata["rows"].value == 25 and metadata["outcome"].value == "loaded"
    with psycopg.connect(stack.database_url) as conn:  # settled in the inbox by the same transaction
        (state, ledger_id) = conn.execute(
            "SELECT state, ledger_id FROM import_inbox WHERE inbox_id = %s", (metadata["inbox_id"].value,)
        ).fetchone()
    assert state == "done" and ledger_id == metadata["ledger_id"].value
    assert messages_for(clients("sqs"), stack.queue_url, cid) == []


def test_duplicate_deliveries_load_once(stack, clients, empty_queues, instance):
    cid = new_customer()
    sqs = clients("sqs")
    put_enriched(clients("s3"), stack, enriched_key(stack, cid, "dup.parquet"), rows=30, customer_id=cid)
    [message] = own_messages(sqs, stack.queue_url, cid, visibility=60)
    sqs.change_message_visibility(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    duplicate_message(sqs, stack.queue_url, message)
    duplicate_message(sqs, stack.queue_url, message)
    drain_through_dagster(instance)
    # And once more after the load: the ledger settles it without a run.
    duplicate_message(sqs, stack.queue_url, message)
    result = sensor_tick(instance, import_queue_sensor)
    assert not [r for r in getattr(result, "run_requests", None) or [] if f"customer={cid}/" in str(r.run_config)]
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 30
    assert messages_for(sqs, stack.queue_url, cid) == []


def test_two_importers_on_the_same_object_after_a_claim_lapses(stack, clients, empty_queues):
    from pipeline.importer import inbox
    from pipeline.importer.batch import connect
    from pipeline.importer.inbox import InboxPolicy
    from pipeline.importer.intake import take_in

    cid = new_customer()
    sqs, s3 = clients("sqs"), clients("s3")
    put_enriched(s3, stack, enriched_key(stack, cid, "race.parquet"), rows=2000, customer_id=cid)
    with connect(stack.database_url) as conn:
        [first] = take_in(conn, sqs, stack, own_messages(sqs, stack.queue_url, cid, 30), "A", lease_s=1).new
        time.sleep(1.5)  # A's claim lapses (a stalled importer): B takes the same object
        taken = inbox.claim(conn, "B", 1000, 60, InboxPolicy())
    [second] = [row for row in taken if row.inbox_id == first.inbox_id]
    results: list = []
    threads = [
        threading.Thread(
            target=lambda row=row, owner=owner: results.extend(
                import_items(stack.database_url, s3, [ImportItem.from_inbox(row)], owner=owner)
            )
        )
        for row, owner in ((first, "A"), (second, "B"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.result.outcome for o in results) == ["duplicate", "loaded"]
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 2000


def test_overwrite_supersedes_and_delete_tombstones(stack, clients, empty_queues, instance):
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(stack, cid, "day.parquet")
    other = enriched_key(stack, cid, "other.parquet")
    put_enriched(s3, stack, key, rows=40, seed=1, customer_id=cid)
    put_enriched(s3, stack, other, rows=5, seed=9, customer_id=cid)
    drain_through_dagster(instance)
    put_enriched(s3, stack, key, rows=15, seed=2, customer_id=cid)  # re-published: new ETag
    drain_through_dagster(instance)
    report = assert_exactly_once(stack, cid)
    assert report["rows_loaded"] == 20
    s3.delete_object(Bucket=stack.enriched_bucket, Key=key)
    drain_through_dagster(instance)
    report = assert_exactly_once(stack, cid)
    assert (report["objects_enriched"], report["rows_loaded"]) == (1, 5)
    with psycopg.connect(stack.database_url) as conn:
        events = conn.execute(
            "SELECT event FROM load_ledger WHERE object_key = %s ORDER BY ledger_id", (key,)
        ).fetchall()
    assert [e for (e,) in events] == ["loaded", "loaded", "superseded", "tombstoned"]


def test_poison_object_dead_letters_without_blocking_then_redrives_after_fix(
    stack, clients, empty_queues, instance, monkeypatch
):
    from pipeline.importer import inbox

    cid = new_customer()
    s3 = clients("s3")
    poison = put_poison_and_good(s3, stack, cid, good=3, rows=10)
    monkeypatch.setenv("PIPELINE_IMPORT_RETRY_BASE_S", "0")  # no backoff between attempts here
    runs = drain_through_dagster(instance, max_ticks=1)
    assert runs and not runs[0].success  # the run reports the failure...
    assert len(materialized(instance, cid)) == 3  # ...and the good objects are imported all the same
    for _ in range(6):  # each tick plans the next attempt; after max_attempts the inbox dead-letters it
        drain_through_dagster(instance, max_ticks=1)
    report = verify(stack, cid)
    assert report["dead_letter"] == 1 and report["failures"] == 1
    assert report["unreadable_objects"] == [poison] and report["ok"]
    with psycopg.connect(stack.database_url) as conn:
        (attempts,) = conn.execute("SELECT count(*) FROM import_failures WHERE object_key = %s", (poison,)).fetchone()
        (state, started) = conn.execute(
            "SELECT state, attempts FROM import_inbox WHERE object_key = %s", (poison,)
        ).fetchone()
    assert attempts == 5 and (state, started) == ("dead", 5)
    result = sensor_tick(instance, import_queue_sensor)  # a dead letter is planned no more
    assert not [r for r in getattr(result, "run_requests", None) or [] if poison in str(r.run_config)]
    execute_requests(instance, result)

    # The fix: enrichment re-publishes the object; the operator redrives the dead letters.
    put_enriched(s3, stack, poison, rows=7, seed=5, customer_id=cid)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        assert inbox.redrive(conn, stack.enriched_bucket, f"{stack.enriched_prefix}customer={cid}/") == 1
    drain_through_dagster(instance)
    report = assert_exactly_once(stack, cid)
    assert report["rows_loaded"] == 37 and report["failures"] == 0 and report["dead_letter"] == 0


def test_lost_notification_is_found_by_the_reconciler(stack, clients, empty_queues, instance, monkeypatch):
    from pipeline.defs.importer.reconcile import import_reconciler

    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    put_enriched(s3, stack, enriched_key(stack, cid, "lost.parquet"), rows=11, customer_id=cid)
    for message in receive_all(sqs, stack.queue_url):  # the notification is lost
        sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
    assert verify(stack, cid)["missing"] == 11
    monkeypatch.setenv("PIPELINE_RECONCILE_SLICES", "100000")  # every slice of the test stack in one sweep
    [run] = execute_requests(
        instance, sensor_tick(instance, import_reconciler)
    )  # a run puts the drift in the inbox ...
    assert run.success
    drain_through_dagster(instance)  # ... where the import sensor plans it like any notification
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 11


AWKWARD = [
    "a,b,c.parquet",
    "with space.parquet",
    "ünïcødé-日本.parquet",
    "x" * 990 + ".parquet",
    "dots...and...dots.parquet",
    "tab\there.parquet",
]


def test_awkward_keys(stack, clients, empty_queues, instance):
    cid = new_customer()
    s3 = clients("s3")
    keys = [enriched_key(stack, cid, name) for name in AWKWARD]
    for i, key in enumerate(keys):
        put_enriched(s3, stack, key, rows=3, seed=i, customer_id=cid)
    drain_through_dagster(instance)
    report = assert_exactly_once(stack, cid)
    assert report["objects_loaded"] == len(keys)
    partitions = materialized(instance)
    assert all("," not in p and "..." not in p and len(p) <= 93 for p in partitions)
    with psycopg.connect(stack.database_url) as conn:
        mapped = objects_for(conn, sorted(partitions))
    assert sorted(k for _, k in mapped.values() if f"customer={cid}/" in k) == sorted(keys)


def test_backfill_of_loaded_partitions_is_idempotent(stack, clients, empty_queues, instance):
    from pipeline.definitions import defs

    cid = new_customer()
    s3 = clients("s3")
    for i in range(4):
        put_enriched(s3, stack, enriched_key(stack, cid, f"b-{i}.parquet"), rows=9, seed=i, customer_id=cid)
    drain_through_dagster(instance)
    keys = instance.get_dynamic_partitions("enriched_objects")
    job = defs.resolve_implicit_global_asset_job_def()
    # What the UI's backfill of these partitions launches: one run over the range, no run config.
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("telemetry_events")],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert result.success
    outcomes = [
        e.event_specific_data.materialization.metadata["outcome"].value
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert outcomes == ["duplicate"] * 4
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 36


def test_every_column_round_trips_exactly(stack, clients, empty_queues):
    """The binary COPY sends timestamps and dates as PostgreSQL's own integers: check the values."""
    import io

    import pyarrow.parquet as pq

    from pipeline.importer.load import EVENT_COLUMNS
    from pipeline.importer.worker import run_worker

    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(stack, cid, "values.parquet")
    put_enriched(s3, stack, key, rows=50, seed=77, customer_id=cid)
    run_worker(stack, drain=True)
    want = pq.read_table(io.BytesIO(s3.get_object(Bucket=stack.enriched_bucket, Key=key)["Body"].read()))
    want_rows = sorted(want.select(EVENT_COLUMNS).to_pylist(), key=lambda r: r["event_id"])
    with psycopg.connect(stack.database_url) as conn:
        # the warehouse keeps the event id as a uuid: the same 128 bits as enrichment's 32 hex characters
        columns = ["replace(event_id::text, '-', '')" if c == "event_id" else c for c in EVENT_COLUMNS]
        cur = conn.execute(
            f"SELECT {', '.join(columns)} FROM telemetry_events WHERE customer_id = %s ORDER BY event_id", (cid,)
        )
        got_rows = [dict(zip(EVENT_COLUMNS, row)) for row in cur.fetchall()]
    assert got_rows == want_rows


def test_old_settled_partitions_are_pruned_and_come_back_when_needed(stack, clients, empty_queues, instance):
    from pipeline.defs.importer.sensors import prune_object_partitions

    cid = new_customer()
    s3 = clients("s3")
    keys = [enriched_key(stack, cid, f"prune-{i}.parquet") for i in range(3)]
    for i, key in enumerate(keys):
        put_enriched(s3, stack, key, rows=4, seed=i, customer_id=cid)
    drain_through_dagster(instance)
    ours = [p for p in instance.get_dynamic_partitions("enriched_objects") if p.startswith(f"customer={cid}/")]
    assert len(ours) == 3
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # age them past the retention
        conn.execute(
            "UPDATE object_partitions SET added_at = now() - interval '30 days' WHERE object_key LIKE %s",
            (f"%customer={cid}/%",),
        )
    execute_requests(instance, sensor_tick(instance, prune_object_partitions))
    assert not [p for p in instance.get_dynamic_partitions("enriched_objects") if p.startswith(f"customer={cid}/")]
    assert assert_exactly_once(stack, cid)["objects_loaded"] == 3  # the ledger keeps everything
    # An overwrite of a pruned object brings its partition back and imports the new version.
    put_enriched(s3, stack, keys[0], rows=6, seed=9, customer_id=cid)
    runs = drain_through_dagster(instance)
    assert runs and all(r.success for r in runs)
    assert [p for p in instance.get_dynamic_partitions("enriched_objects") if p.startswith(f"customer={cid}/")]
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 14


def test_the_tick_adds_its_partitions_itself_and_falls_back_to_the_daemon(stack, clients, empty_queues, monkeypatch):
    from dagster import AddDynamicPartitionsRequest

    cid = new_customer()
    for i in range(3):
        put_enriched(clients("s3"), stack, enriched_key(stack, cid, f"tick-{i}.parquet"), rows=5, customer_id=cid)
    instance = DagsterInstance.ephemeral()
    result = sensor_tick(instance, import_queue_sensor)
    ours = [k for k in instance.get_dynamic_partitions("enriched_objects") if k.startswith(f"customer={cid}/")]
    assert len(ours) == 3  # in storage before any request reaches a daemon
    assert not [r for r in result.dynamic_partitions_requests if isinstance(r, AddDynamicPartitionsRequest)]
    execute_requests(instance, result)
    assert_exactly_once(stack, cid)

    # Storage refusing the bulk add (say, a concurrent sensor added a key): the daemon's path.
    for i in range(3, 5):
        put_enriched(clients("s3"), stack, enriched_key(stack, cid, f"tick-{i}.parquet"), rows=5, customer_id=cid)
    broken = DagsterInstance.ephemeral()

    def refuse(*_args, **_kwargs):
        raise RuntimeError("duplicate key value violates unique constraint")

    monkeypatch.setattr(broken, "add_dynamic_partitions", refuse)
    result = sensor_tick(broken, import_queue_sensor)
    [request] = [r for r in result.dynamic_partitions_requests if isinstance(r, AddDynamicPartitionsRequest)]
    assert sum(k.startswith(f"customer={cid}/") for k in request.partition_keys) == 2
    monkeypatch.undo()
    execute_requests(broken, result)
    assert assert_exactly_once(stack, cid)["objects_loaded"] == 5


def test_a_delete_delivered_after_the_key_was_written_again_is_stale(stack, clients, empty_queues):
    """S3 sends events in any order: delete, re-create, and the delete's event arrives last."""
    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    key = enriched_key(stack, cid, "again.parquet")
    put_enriched(s3, stack, key, rows=10, seed=1, customer_id=cid)
    s3.delete_object(Bucket=stack.enriched_bucket, Key=key)
    put_enriched(s3, stack, key, rows=12, seed=2, customer_id=cid)
    time.sleep(0.5)
    versions = [
        (v, m)
        for m in own_messages(sqs, stack.queue_url, cid, visibility=60)
        for v in parse_delivery(m, stack.enriched_bucket, stack.enriched_prefix).versions
    ]
    removed = [(v, m) for v, m in versions if v.removed]
    written = [(v, m) for v, m in versions if not v.removed]
    assert len(removed) == 1 and len(written) == 2
    # The writes' events first (the first write is stale by now), the delete's event last.
    ordered = written + removed
    items = [ImportItem(v) for v, _ in ordered]
    outcomes = import_items(stack.database_url, s3, items, streams=1)
    assert [o.result.outcome for o in outcomes] == ["stale", "loaded", "stale"]
    report = assert_exactly_once(stack, cid)
    assert (report["objects_loaded"], report["rows_loaded"]) == (1, 12)  # the object S3 holds

    # A delete that is the latest event still removes the rows.
    s3.delete_object(Bucket=stack.enriched_bucket, Key=key)
    time.sleep(0.5)
    [message] = own_messages(sqs, stack.queue_url, cid, visibility=60)
    [version] = parse_delivery(message, stack.enriched_bucket, stack.enriched_prefix).versions
    [outcome] = import_items(stack.database_url, s3, [ImportItem(version)])
    assert outcome.result.outcome == "tombstoned"
    assert assert_exactly_once(stack, cid)["rows_loaded"] == 0
