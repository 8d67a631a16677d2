"""Raw detection without listing history (issue #22): the raw bucket notifies S3 -> SNS -> the raw
queue; intake is durable first, then delete; a bounded sweep of recent days finds what a lost
notification never said; a tick's listings do not grow with the objects held."""

from __future__ import annotations

import datetime as dt
import gzip
import uuid

import psycopg
import pytest
from dagster import DagsterInstance, build_sensor_context

from pipeline.defs.raw.sensors import raw_telemetry_sensor
from pipeline.defs.resources import resource_defs
from pipeline.enrich import detection
from pipeline_tests.support import receive_all

TODAY = dt.datetime.now(dt.UTC).date()


def tick(instance, cursor=None):
    with build_sensor_context(instance=instance, resources=resource_defs(), cursor=cursor) as context:
        return raw_telemetry_sensor(context)


def put_raw(s3, stack, customer: str, day: dt.date, name: str, root: str | None = None) -> str:
    key = f"{root or stack.raw_prefix}customer={customer}/dt={day.isoformat()}/{name}.jsonl.gz"
    s3.put_object(Bucket=stack.raw_bucket, Key=key, Body=gzip.compress(b"{}\n"), Metadata={"records": "1"})
    return key


def reported_keys(result) -> set[str]:
    return {k for e in result.asset_events for k in e.metadata["keys"].value}


def test_a_written_object_is_reported_from_its_notification_once(stack, clients):
    instance = DagsterInstance.ephemeral()
    baseline = tick(instance)
    customer = f"n{uuid.uuid4().hex[:8]}"
    key = put_raw(clients("s3"), stack, customer, TODAY, "one")
    first = tick(instance, baseline.cursor)
    assert key in reported_keys(first)
    assert first.run_requests and any(r.tags.get("dagster/asset_partition_range_start") for r in first.run_requests)
    again = tick(instance, first.cursor)
    assert key not in reported_keys(again)
    with psycopg.connect(stack.database_url) as conn:
        sources = conn.execute("SELECT source FROM raw_inbox WHERE object_key = %s", (key,)).fetchall()
    assert sources == [("notification",)]


def test_a_lost_notification_is_found_by_the_sweep_of_recent_days(stack, clients, monkeypatch):
    monkeypatch.setenv("PIPELINE_RAW_SWEEP_CUSTOMERS", "100000")  # every customer of the test stack this tick
    monkeypatch.setenv("PIPELINE_RAW_SWEEP_INTERVAL_S", "0")  # a sweep on every tick (default: every 300 s)
    instance = DagsterInstance.ephemeral()
    baseline = tick(instance)
    customer = f"l{uuid.uuid4().hex[:8]}"
    key = put_raw(clients("s3"), stack, customer, TODAY - dt.timedelta(days=1), "lost")
    sqs = clients("sqs")
    for message in receive_all(sqs, stack.raw_queue_url, wait=1):  # the notification is lost
        sqs.delete_message(QueueUrl=stack.raw_queue_url, ReceiptHandle=message["ReceiptHandle"])
    result = tick(instance, baseline.cursor)
    assert key in reported_keys(result)
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT source FROM raw_inbox WHERE object_key = %s", (key,)).fetchone() == ("sweep",)


def test_the_sweep_runs_at_its_interval_and_the_ticks_between_only_take_in(stack, clients, monkeypatch):
    """Ticks between sweeps list nothing: their cost is the notifications', whatever S3 holds."""
    monkeypatch.setenv("PIPELINE_RAW_SWEEP_INTERVAL_S", "3600")
    s3 = Counting(clients("s3"))
    state: dict = {"reported": 0, "sweep": None, "swept_at": None}
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        state["reported"] = conn.execute("SELECT coalesce(max(raw_id), 0) FROM raw_inbox").fetchone()[0]
        detection.tick(conn, clients("sqs"), stack.raw_queue_url, s3, stack.raw_bucket, stack.raw_prefix, state)
        assert s3.calls and state["swept_at"] is not None  # the first tick sweeps
        swept = s3.calls
        customer = f"s{uuid.uuid4().hex[:8]}"
        key = put_raw(clients("s3"), stack, customer, TODAY, "between")
        done = detection.tick(conn, clients("sqs"), stack.raw_queue_url, s3, stack.raw_bucket, stack.raw_prefix, state)
    assert s3.calls == swept  # no listing on a tick between sweeps
    assert key in [row.key for row in done["fresh"]]  # its notification was taken in


class FailingDelete:
    """An SQS client whose deletes fail: the tick dies between the commit and the delete."""

    def __init__(self, sqs):
        self.sqs, self.handles = sqs, []

    def receive_message(self, **kwargs):
        return self.sqs.receive_message(**kwargs)

    def delete_message_batch(self, **kwargs):
        self.handles += [e["ReceiptHandle"] for e in kwargs["Entries"]]
        raise ConnectionError("the tick died before the delete")


def test_a_crash_between_the_commit_and_the_delete_records_nothing_twice(stack, clients):
    sqs, s3 = clients("sqs"), clients("s3")
    for message in receive_all(sqs, stack.raw_queue_url, wait=0):  # an empty queue to start with
        sqs.delete_message(QueueUrl=stack.raw_queue_url, ReceiptHandle=message["ReceiptHandle"])
    customer = f"c{uuid.uuid4().hex[:8]}"
    key = put_raw(s3, stack, customer, TODAY, "crash")
    with psycopg.connect(stack.database_url) as conn:
        before = conn.execute("SELECT coalesce(max(raw_id), 0) FROM raw_inbox").fetchone()[0]
        dying = FailingDelete(sqs)
        with pytest.raises(ConnectionError):
            detection.take_in(conn, dying, stack.raw_queue_url, stack.raw_bucket, stack.raw_prefix)
        assert [r.key for r in detection.new_since(conn, before, 100)] == [key]  # durable before the delete
        assert dying.handles
        for handle in dying.handles:  # the visibility timeout passes: the messages come back
            sqs.change_message_visibility(QueueUrl=stack.raw_queue_url, ReceiptHandle=handle, VisibilityTimeout=0)
        again = detection.take_in(conn, sqs, stack.raw_queue_url, stack.raw_bucket, stack.raw_prefix)
        assert again["messages"] >= 1 and again["recorded"] == 0
        assert [r.key for r in detection.new_since(conn, before, 100)] == [key]


class Counting:
    def __init__(self, s3):
        self.s3, self.calls, self.keys = s3, 0, []

    def list_objects_v2(self, **kwargs):
        self.calls += 1
        page = self.s3.list_objects_v2(**kwargs)
        self.keys += [o["Key"] for o in page.get("Contents", [])]
        return page


def test_a_sweeps_listings_do_not_grow_with_the_objects_held(stack, clients, monkeypatch):
    monkeypatch.setenv("PIPELINE_RAW_SWEEP_CUSTOMERS", "10")
    s3 = clients("s3")
    root = f"rawtest-{uuid.uuid4().hex[:8]}/"
    for n in range(3):
        put_raw(s3, stack, f"cust{n}", TODAY, "today", root)
    with psycopg.connect(stack.database_url) as conn:
        empty = Counting(s3)
        detection.sweep(conn, empty, stack.raw_bucket, root, None)
        for n in range(300):  # a long history on an old day
            put_raw(s3, stack, "cust0", TODAY - dt.timedelta(days=200), f"old-{n}", root)
        full = Counting(s3)
        detection.sweep(conn, full, stack.raw_bucket, root, None)
    assert full.calls == empty.calls
    assert not [k for k in full.keys if "/old-" in k]  # no older day is ever listed


def test_an_object_gone_since_its_notification_is_not_reported_and_stops_nothing(stack, clients):
    instance = DagsterInstance.ephemeral()
    baseline = tick(instance)
    s3 = clients("s3")
    customer = f"g{uuid.uuid4().hex[:8]}"
    gone = put_raw(s3, stack, customer, TODAY, "gone")
    kept = put_raw(s3, stack, customer, TODAY, "kept")
    s3.delete_object(Bucket=stack.raw_bucket, Key=gone)
    result = tick(instance, baseline.cursor)
    assert kept in reported_keys(result) and gone not in reported_keys(result)
