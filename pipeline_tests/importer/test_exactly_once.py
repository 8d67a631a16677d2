"""Exactly-once across overwrites, reversions and late loads: the warehouse always equals S3.

A version written again after another one becomes live again (X -> Y -> X); a load fetched
before a newer write never supersedes the newer load when it commits late; S3 sequencers order
the events of one key; the reconciler repairs every drift `verify` reports. Each scenario runs
on a plain and on a versioned enriched bucket (``bucket`` fixture).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from dagster import DagsterInstance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.importer import inbox
from pipeline.importer.batch import ImportItem, connect, import_items
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import fetch, load_object
from pipeline.importer.partitions import partition_key
from pipeline.importer.verify import verify
from pipeline.importer.worker import run_worker
from pipeline_tests.support import drain_through_dagster, enriched_key, new_customer, put_enriched


def current(s3, settings, key: str) -> ObjectVersion:
    head = s3.head_object(Bucket=settings.enriched_bucket, Key=key)
    etag = head["ETag"].strip('"')
    version_id = head.get("VersionId")
    version = version_id if version_id and version_id != "null" else etag
    return ObjectVersion(settings.enriched_bucket, key, version, etag, head["ContentLength"])


def assert_warehouse_equals_s3(settings, customer_id: str) -> dict:
    report = verify(settings, customer_id)
    assert report["missing"] == 0, report["missing_objects"]
    assert report["duplicates"] == 0, report["duplicated_objects"]
    assert report["ok"], report
    return report


def test_a_version_written_again_after_another_is_live_again(bucket, clients):
    """The reported case: X (500 rows), Y (700 rows), X again byte-identical, `importer --drain`."""
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "day.parquet")
    put_enriched(s3, bucket, key, rows=500, seed=1, customer_id=cid)
    run_worker(bucket, drain=True)
    put_enriched(s3, bucket, key, rows=700, seed=2, customer_id=cid)
    run_worker(bucket, drain=True)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 700
    put_enriched(s3, bucket, key, rows=500, seed=1, customer_id=cid)  # X again, the same bytes
    run_worker(bucket, drain=True)
    report = assert_warehouse_equals_s3(bucket, cid)
    assert (report["objects_loaded"], report["rows_loaded"]) == (1, 500)
    with psycopg.connect(bucket.database_url) as conn:
        events = [
            e for (e,) in conn.execute("SELECT event FROM load_ledger WHERE object_key = %s ORDER BY ledger_id", (key,))
        ]
    assert events == ["loaded", "loaded", "superseded", "loaded", "superseded"]


def test_an_event_without_a_version_id_does_not_pass_for_another_version_with_the_same_bytes(bucket, clients):
    """X, Y, X again, with notifications that carry only the ETag (a notifier that leaves the
    version id out). On a versioned bucket X again is a new version with X's ETag: neither
    intake nor the importer may take it for the live first X (chaos found this: the warehouse
    kept the first X's version, S3 held the second). On a plain bucket the ETag is the identity,
    and X again after a Y that was never loaded is the live load already."""
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "etag-only.parquet")
    x = put_enriched(s3, bucket, key, rows=40, seed=1, customer_id=cid)
    etag_only = ObjectVersion(bucket.enriched_bucket, key, x, x)
    [first] = import_items(bucket.database_url, s3, [ImportItem(etag_only)])
    assert first.result.outcome == "loaded"
    put_enriched(s3, bucket, key, rows=60, seed=2, customer_id=cid)  # Y: its notification is lost
    assert put_enriched(s3, bucket, key, rows=40, seed=1, customer_id=cid) == x  # X again, same bytes
    versioned = current(s3, bucket, key).version_id is not None

    # the importer, handed the ETag-only version directly
    [again] = import_items(bucket.database_url, s3, [ImportItem(etag_only)])
    assert again.result.outcome == ("loaded" if versioned else "duplicate")
    assert_warehouse_equals_s3(bucket, cid)

    # intake, handed the same notification once more: the key's live load is X again now
    with connect(bucket.database_url) as conn, conn.transaction():
        recorded = inbox.record(conn, [(etag_only, "m-again")], lambda v: partition_key(v.bucket, v.key))
    rows = recorded.new
    outcomes = import_items(bucket.database_url, s3, [ImportItem.from_inbox(r) for r in rows])
    assert all(o.result.outcome == "duplicate" for o in outcomes)  # a row or not, nothing is loaded twice
    report = assert_warehouse_equals_s3(bucket, cid)
    assert (report["objects_loaded"], report["rows_loaded"]) == (1, 40)


def test_reversion_through_the_dagster_path(bucket, clients):
    cid = new_customer()
    s3 = clients("s3")
    instance = DagsterInstance.ephemeral()
    key = enriched_key(bucket, cid, "rev.parquet")
    for rows, seed in ((30, 1), (45, 2), (30, 1)):
        put_enriched(s3, bucket, key, rows=rows, seed=seed, customer_id=cid)
        runs = drain_through_dagster(instance)
        assert all(r.success for r in runs)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 30


def test_delete_then_create_again_loads_the_new_object(bucket, clients):
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "again.parquet")
    put_enriched(s3, bucket, key, rows=12, seed=1, customer_id=cid)
    run_worker(bucket, drain=True)
    s3.delete_object(Bucket=bucket.enriched_bucket, Key=key)
    run_worker(bucket, drain=True)
    put_enriched(s3, bucket, key, rows=12, seed=1, customer_id=cid)  # the same bytes as before the delete
    run_worker(bucket, drain=True)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 12


def test_a_load_fetched_before_a_newer_write_is_stale_when_it_commits_late(bucket, clients):
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "late.parquet")
    put_enriched(s3, bucket, key, rows=20, seed=1, customer_id=cid)
    x = current(s3, bucket, key)
    with ThreadPoolExecutor(1) as pool:
        fetched_x = pool.submit(fetch, s3, x)
        fetched_x.result()  # X is in hand ...
        put_enriched(s3, bucket, key, rows=35, seed=2, customer_id=cid)  # ... when Y is written
        [y_outcome] = import_items(bucket.database_url, s3, [ImportItem(current(s3, bucket, key))])
        assert y_outcome.result.outcome == "loaded"
        with connect(bucket.database_url) as conn:  # X commits late
            late = load_object(conn, s3, x, prefetched=fetched_x)
    assert late.outcome == "stale"
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 35


def test_two_importers_racing_on_a_reversion(bucket, clients):
    """X, Y, X written before anyone imports; every event delivered twice, to two importers."""
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "race.parquet")
    versions = []
    for rows, seed in ((40, 1), (60, 2), (40, 1)):
        put_enriched(s3, bucket, key, rows=rows, seed=seed, customer_id=cid)
        versions.append(current(s3, bucket, key))
    items = [ImportItem(v) for v in versions]
    with ThreadPoolExecutor(2) as pool:
        outcomes = [
            o
            for batch in pool.map(lambda order: import_items(bucket.database_url, s3, order), [items, items[::-1]])
            for o in batch
        ]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 40


def test_the_reconciler_repairs_a_wrong_live_version(bucket, clients):
    from pipeline.importer.reconcile import reconcile

    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "drift.parquet")
    put_enriched(s3, bucket, key, rows=10, seed=1, customer_id=cid)
    run_worker(bucket, drain=True)
    put_enriched(s3, bucket, key, rows=16, seed=2, customer_id=cid)
    run_worker(bucket, drain=True)
    put_enriched(s3, bucket, key, rows=10, seed=1, customer_id=cid)
    purge_notifications(clients("sqs"), bucket)  # X's second notification is lost
    assert not verify(bucket, cid)["ok"]
    reconcile(bucket)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 10


def purge_notifications(sqs, settings) -> None:
    while True:
        got = sqs.receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        if not got.get("Messages"):
            return
        for message in got["Messages"]:
            sqs.delete_message(QueueUrl=settings.queue_url, ReceiptHandle=message["ReceiptHandle"])


class CountingS3:
    """The real S3 client, counting the HEADs made through it (made under a key's lock)."""

    def __init__(self, s3):
        self._s3, self.heads = s3, 0

    def head_object(self, **kwargs):
        self.heads += 1
        return self._s3.head_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def test_sequencers_order_the_events_of_a_key(bucket, clients):
    """S3 sends a sequencer with every event (moto does not: these events are built by hand).
    X, Y, X written; their events arrive newest first: the older two are stale, unread."""
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "seq.parquet")
    written = []
    for n, (rows, seed) in enumerate(((10, 1), (14, 2), (10, 1))):
        put_enriched(s3, bucket, key, rows=rows, seed=seed, customer_id=cid)
        now = current(s3, bucket, key)
        written.append(ObjectVersion(bucket.enriched_bucket, key, now.version, now.etag, sequencer=f"0062E99A{n}"))
    counting = CountingS3(s3)
    outcomes = import_items(bucket.database_url, counting, [ImportItem(v) for v in reversed(written)], streams=1)
    assert [o.result.outcome for o in outcomes] == ["loaded", "stale", "stale"]
    assert counting.heads == 1  # the two older events were settled by their sequencer alone
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 10
    # A delete newer than everything (a longer sequencer compares after right-padding) ends the key.
    s3.delete_object(Bucket=bucket.enriched_bucket, Key=key)
    removed = ObjectVersion(
        bucket.enriched_bucket, key, "removed@1", event_name="ObjectRemoved:Delete", sequencer="0062E99A21"
    )
    [outcome] = import_items(bucket.database_url, s3, [ImportItem(removed)])
    assert outcome.result.outcome == "tombstoned"
    with psycopg.connect(bucket.database_url) as conn:
        (applied,) = conn.execute("SELECT sequencer FROM object_sequencers WHERE object_key = %s", (key,)).fetchone()
    assert applied == "0062E99A21"
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 0


def test_sequencer_comparison_pads_on_the_right():
    from pipeline.importer.events import compare_sequencers

    assert compare_sequencers("0055AED6DCD90281E5", "0055AED6DCD90281E6") == -1
    assert compare_sequencers("0055AED6DCD9028", "0055AED6DCD90281") == -1  # "...0280" < "...0281"
    assert compare_sequencers("0055aed6", "0055AED6") == 0
    assert compare_sequencers("1", "0FFFFFFF") == 1


@pytest.mark.parametrize("bucket", ["versioned"], indirect=True)
def test_versioned_bucket_deletes_and_restored_versions(bucket, clients):
    """On a versioned bucket a delete makes a delete marker (S3 notifies DeleteMarkerCreated), and
    deleting the current version makes the previous one current again (ObjectRemoved:Delete)."""
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "versions.parquet")
    put_enriched(s3, bucket, key, rows=11, seed=1, customer_id=cid)
    put_enriched(s3, bucket, key, rows=17, seed=2, customer_id=cid)
    run_worker(bucket, drain=True)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 17
    newest = current(s3, bucket, key)
    s3.delete_object(Bucket=bucket.enriched_bucket, Key=key, VersionId=newest.version)  # X is current again
    run_worker(bucket, drain=True)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 11
    s3.delete_object(Bucket=bucket.enriched_bucket, Key=key)  # a delete marker
    run_worker(bucket, drain=True)
    report = assert_warehouse_equals_s3(bucket, cid)
    assert (report["objects_enriched"], report["rows_loaded"]) == (0, 0)


OPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # which key
        st.sampled_from(["X", "Y", "X", "delete"]),  # write variant X or Y of the key, or delete it
        st.sampled_from(["deliver", "deliver", "lose", "twice"]),  # what happens to its notification
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS, order=st.randoms(use_true_random=False), damage=st.sampled_from(["none", "partial", "stray"]))
def test_after_reconcile_verify_is_ok_whatever_came_before(bucket, clients, ops, order, damage):
    """Property: any sequence of writes, rewrites and deletes, with notifications lost, doubled
    and reordered, and a damaged load besides; then `pipeline reconcile`; then `verify` is ok."""
    from pipeline.importer.reconcile import reconcile

    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    keys = [enriched_key(bucket, cid, f"p{n}.parquet") for n in range(3)]
    fates, exists = [], set()
    for slot, what, fate in ops:
        if what == "delete":
            if slot not in exists:
                continue  # nothing to delete: S3 sends no event
            s3.delete_object(Bucket=bucket.enriched_bucket, Key=keys[slot])
            exists.discard(slot)
        else:
            exists.add(slot)
            put_enriched(
                s3, bucket, keys[slot], rows=6 if what == "X" else 9, seed=1 if what == "X" else 2, customer_id=cid
            )
        fates.append(fate)
    bodies = [m["Body"] for m in own_messages_in_order(sqs, bucket, cid)]
    assert len(bodies) == len(fates)
    deliver = [b for b, f in zip(bodies, fates, strict=True) for _ in range({"deliver": 1, "lose": 0, "twice": 2}[f])]
    order.shuffle(deliver)
    for body in deliver:
        sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=body)
    run_worker(bucket, drain=True)
    with psycopg.connect(bucket.database_url, autocommit=True) as conn:
        live = conn.execute(
            "SELECT ledger_id FROM live_object_versions WHERE object_key = ANY(%s) ORDER BY ledger_id", (keys,)
        ).fetchall()
        if live and damage == "partial":  # some rows of a live load went missing
            conn.execute(
                "DELETE FROM telemetry_events WHERE event_id IN (SELECT event_id FROM telemetry_events "
                "WHERE ledger_id = %s LIMIT 2)",
                (live[0][0],),
            )
        ended = conn.execute(
            "SELECT refers_to FROM load_ledger WHERE refers_to IS NOT NULL AND object_key = ANY(%s) LIMIT 1", (keys,)
        ).fetchone()
        if ended and damage == "stray":  # rows of an ended load came back
            conn.execute("SELECT ensure_event_partitions('2026-11-01', '2026-11-01')")
            conn.execute(
                "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day) "
                "VALUES (md5(%s)::uuid, %s, %s, '2026-11-01')",
                (f"stray-{cid}", ended[0], cid),
            )
    reconcile(bucket)
    assert_warehouse_equals_s3(bucket, cid)


def own_messages_in_order(sqs, stack_settings, customer_id: str) -> list[dict]:
    """This test's notifications, in the order S3 sent them, taken off the queue."""
    from pipeline.importer.events import parse_s3_event
    from pipeline_tests.support import receive_all

    mine = []
    url = stack_settings.queue_url
    for message in receive_all(sqs, url, wait=1, visibility=30):
        if any(f"customer={customer_id}/" in v.key for v in parse_s3_event(message["Body"]).versions):
            mine.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        else:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    return sorted(mine, key=lambda m: int(m["Attributes"]["SentTimestamp"]))


def test_a_dead_letter_whose_object_was_fixed_is_stale_after_redrive(bucket, clients, monkeypatch):
    """The operator re-publishes a poison object, then redrives: the dead version is no longer what
    S3 holds, so it is stale (not dead again), and the fixed version is the one loaded."""
    from pipeline.importer import inbox

    monkeypatch.setenv("PIPELINE_IMPORT_MAX_ATTEMPTS", "1")
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(bucket, cid, "fixed-later.parquet")
    s3.put_object(Bucket=bucket.enriched_bucket, Key=key, Body=b"PAR1 not parquet at all")
    run_worker(bucket, drain=True)
    put_enriched(s3, bucket, key, rows=13, customer_id=cid)  # the fix
    run_worker(bucket, drain=True)
    with psycopg.connect(bucket.database_url, autocommit=True) as conn:
        assert inbox.redrive(conn, bucket.enriched_bucket, key) == 1
    run_worker(bucket, drain=True)
    assert assert_warehouse_equals_s3(bucket, cid)["rows_loaded"] == 13
    with psycopg.connect(bucket.database_url) as conn:
        rows = conn.execute(
            "SELECT state, outcome FROM import_inbox WHERE object_key = %s ORDER BY inbox_id", (key,)
        ).fetchall()
    assert rows == [("done", "stale"), ("done", "loaded")]
