"""The transactional import inbox: no SQS receipt is held while Dagster's run queue waits.

Waiting (a busy run queue, capacity starting from zero) never redelivers or dead-letters
anything; a redelivered message for an object already planned makes no other run; a message
naming several objects is deleted only when all of them are recorded, and a worker stopped in
the middle of them gives the rest back.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
from dagster import DagsterInstance, SensorResult

from pipeline.defs.importer.sensors import import_queue_sensor
from pipeline.importer import inbox
from pipeline.importer.batch import connect
from pipeline.importer.inbox import InboxPolicy
from pipeline.importer.verify import verify
from pipeline.importer.worker import run_worker
from pipeline_tests.support import (
    enriched_key,
    execute_requests,
    messages_for,
    new_customer,
    put_enriched,
    receive_all,
    sensor_tick,
)


def own_requests(result, customer_id: str) -> list:
    return [r for r in getattr(result, "run_requests", None) or [] if f"customer={customer_id}/" in str(r.run_config)]


def test_runs_waiting_past_the_visibility_timeout_lose_nothing_and_plan_nothing_twice(stack, clients, empty_queues):
    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    instance = DagsterInstance.ephemeral()
    for i in range(5):
        put_enriched(s3, stack, enriched_key(stack, cid, f"wait-{i}.parquet"), rows=8, seed=i, customer_id=cid)
    sqs.set_queue_attributes(QueueUrl=stack.queue_url, Attributes={"VisibilityTimeout": "1"})
    try:
        first = sensor_tick(instance, import_queue_sensor)
        [request] = own_requests(first, cid)
        # The run waits in Dagster's queue far longer than the visibility timeout ...
        time.sleep(3)
        # ... while the sensor keeps ticking, and a notification is delivered again meanwhile.
        put_enriched(s3, stack, enriched_key(stack, cid, "wait-0.parquet"), rows=8, seed=0, customer_id=cid)
        for _ in range(3):
            assert own_requests(sensor_tick(instance, import_queue_sensor), cid) == []
            time.sleep(1.1)
        assert messages_for(sqs, stack.queue_url, cid) == []  # nothing came back from SQS
        assert receive_all(sqs, stack.dead_letter_queue_url, wait=0) == []  # nothing was dead-lettered
    finally:
        sqs.set_queue_attributes(QueueUrl=stack.queue_url, Attributes={"VisibilityTimeout": "300"})
    [run] = execute_requests(instance, first)  # the run starts at last
    assert run.success
    report = verify(stack, cid)
    assert report["ok"] and report["rows_loaded"] == 40 and report["dead_letter"] == 0
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT state, deliveries FROM import_inbox WHERE object_key LIKE %s ORDER BY object_key",
            (f"%customer={cid}/%",),
        ).fetchall()
    assert rows == [("done", 2)] + [("done", 1)] * 4  # the second delivery joined the first row


def test_a_run_that_crashed_has_its_objects_planned_again(stack, clients, empty_queues, monkeypatch):
    monkeypatch.setenv("PIPELINE_IMPORT_ORPHAN_GRACE_S", "0")
    cid = new_customer()
    instance = DagsterInstance.ephemeral()
    put_enriched(clients("s3"), stack, enriched_key(stack, cid, "orphan.parquet"), rows=6, customer_id=cid)
    [lost] = own_requests(sensor_tick(instance, import_queue_sensor), cid)  # its run never starts
    retry = own_requests(sensor_tick(instance, import_queue_sensor), cid)  # no such run is active
    assert len(retry) == 1 and retry[0].run_key != lost.run_key
    [run] = execute_requests(instance, SensorResult(run_requests=retry))
    assert run.success
    report = verify(stack, cid)
    assert report["ok"] and report["rows_loaded"] == 6


def multi_record_body(stack, keys: list[str], etags: list[str]) -> str:
    records = [
        {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "eventTime": "2026-11-29T12:00:00.000Z",
            "s3": {"bucket": {"name": stack.enriched_bucket}, "object": {"key": key, "eTag": etag}},
        }
        for key, etag in zip(keys, etags, strict=True)
    ]
    return json.dumps({"Records": records})


def test_a_message_naming_several_objects_survives_a_sigterm_between_them(stack, clients, empty_queues):
    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    keys = [enriched_key(stack, cid, f"multi-{i}.parquet") for i in range(3)]
    etags = [put_enriched(s3, stack, key, rows=10, seed=i, customer_id=cid) for i, key in enumerate(keys)]
    for message in receive_all(sqs, stack.queue_url):  # S3's own one-record messages: replaced by one of three
        sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
    sqs.send_message(QueueUrl=stack.queue_url, MessageBody=multi_record_body(stack, keys, etags))

    import pipeline.importer.batch as batch

    stop = threading.Event()
    original = batch.load_object

    def load_then_stop(*args, **kwargs):  # SIGTERM arrives while the first object loads
        result = original(*args, **kwargs)
        stop.set()
        return result

    batch.load_object = load_then_stop
    try:
        stats = run_worker(stack, drain=True, stop=stop, streams=1)
    finally:
        batch.load_object = original
    assert stats.objects_loaded == 1
    report = verify(stack, cid)
    assert report["rows_loaded"] == 10 and report["missing"] == 20
    with psycopg.connect(stack.database_url) as conn:
        left = conn.execute(
            "SELECT state, claimed_by FROM import_inbox WHERE object_key = ANY(%s) AND state = 'pending'", (keys,)
        ).fetchall()
    assert left == [("pending", None)] * 2  # given back, due at once: not lost with the message
    assert messages_for(sqs, stack.queue_url, cid) == []
    run_worker(stack, drain=True)  # the next worker takes them
    report = verify(stack, cid)
    assert report["ok"] and report["rows_loaded"] == 30


def test_a_worker_that_died_holding_objects_lets_them_go_when_its_lease_lapses(stack, clients, empty_queues):
    from pipeline.importer.intake import take_in
    from pipeline_tests.support import own_messages

    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    put_enriched(s3, stack, enriched_key(stack, cid, "held.parquet"), rows=9, customer_id=cid)
    with connect(stack.database_url) as conn:
        [row] = take_in(conn, sqs, stack, own_messages(sqs, stack.queue_url, cid, 30), "dead-worker", lease_s=1).new
        others = inbox.claim(conn, "other", 1000, 60, InboxPolicy())
        assert row.inbox_id not in {r.inbox_id for r in others}  # held while its lease runs
        inbox.release(conn, [r.inbox_id for r in others], "other")
    time.sleep(1.5)
    run_worker(stack, drain=True)
    assert verify(stack, cid)["ok"]


def test_unexpected_messages_are_dead_lettered_and_the_rest_is_taken_in(stack, clients, empty_queues):
    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    put_enriched(s3, stack, enriched_key(stack, cid, "beside.parquet"), rows=4, customer_id=cid)
    sqs.send_message(QueueUrl=stack.queue_url, MessageBody="this is not an S3 event")
    run_worker(stack, drain=True)
    assert verify(stack, cid)["ok"]
    dead = receive_all(sqs, stack.dead_letter_queue_url, wait=0)
    assert [m["Body"] for m in dead] == ["this is not an S3 event"]
