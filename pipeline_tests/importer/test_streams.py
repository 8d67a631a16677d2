"""Several COPY streams in one importer: sharding by key, failures isolated, settled with the commit."""

from __future__ import annotations

import threading

import psycopg

from pipeline.importer.batch import ImportItem, connect, import_items, shard_items
from pipeline.importer.events import ObjectVersion
from pipeline.importer.intake import take_in
from pipeline.importer.verify import verify
from pipeline_tests.support import messages_for, new_customer, own_messages, put_poison_and_good


def _item(key: str, version: str, removed: bool = False) -> ImportItem:
    event = "ObjectRemoved:Delete" if removed else "ObjectCreated:Put"
    return ImportItem(ObjectVersion("b", key, version, event_name=event))


def test_a_keys_versions_stay_in_one_stream_in_their_order():
    items = [_item("a", "1"), _item("b", "1"), _item("a", "2"), _item("c", "1"), _item("a", "x", removed=True)]
    shards = shard_items(items, 2)
    assert len(shards) == 2
    assert sorted(id(i) for shard in shards for i in shard) == sorted(id(i) for i in items)
    [with_a] = [shard for shard in shards if any(i.version.key == "a" for i in shard)]
    assert [i.version.version for i in with_a if i.version.key == "a"] == ["1", "2", "x"]
    assert all(i.version.key != "a" for shard in shards if shard is not with_a for i in shard)


def test_keys_are_spread_evenly_and_never_over_more_streams_than_keys():
    items = [_item(f"k{n}", "1") for n in range(10)]
    assert sorted(len(s) for s in shard_items(items, 3)) == [3, 3, 4]
    assert len(shard_items(items[:1] * 3, 4)) == 1
    assert len(shard_items(items, 1)) == 1


def test_streams_load_in_parallel_and_a_poison_object_fails_alone(stack, clients, empty_queues, monkeypatch):
    import pipeline.importer.batch as batch

    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    poison = put_poison_and_good(s3, stack, cid, good=8, rows=30)
    messages = own_messages(sqs, stack.queue_url, cid, visibility=10)
    assert len(messages) == 9
    with connect(stack.database_url) as conn:
        intake = take_in(conn, sqs, stack, messages, claim_for="test-streams", lease_s=60)
    assert len(intake.new) == 9
    assert messages_for(sqs, stack.queue_url, cid) == []  # recorded, then deleted from SQS
    items = [ImportItem.from_inbox(row) for row in intake.new]
    streams_seen: set[str] = set()
    real_stream = batch._import_stream

    def watched(*args, **kwargs):
        streams_seen.add(threading.current_thread().name)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(batch, "_import_stream", watched)
    outcomes = import_items(stack.database_url, s3, items, owner="test-streams", streams=3)

    assert len(streams_seen) == 3
    assert [o.item for o in outcomes] == items  # outcomes come back in the items' order
    failed = [o for o in outcomes if not o.ok]
    assert [o.item.version.key for o in failed] == [poison] and failed[0].retry == "pending"
    assert all(o.settled for o in outcomes if o.ok)
    report = verify(stack, cid)
    assert (report["objects_loaded"], report["rows_loaded"], report["duplicates"]) == (8, 240, 0)
    assert report["unreadable_objects"] == [poison]
    with psycopg.connect(stack.database_url) as conn:
        states = dict(
            conn.execute(
                "SELECT object_key, state || ':' || attempts FROM import_inbox WHERE inbox_id = ANY(%s)",
                ([i.inbox_id for i in items],),
            ).fetchall()
        )
        (recorded,) = conn.execute("SELECT count(*) FROM import_failures WHERE object_key = %s", (poison,)).fetchone()
    assert states.pop(poison) == "pending:1"  # waits out its backoff for the next attempt
    assert set(states.values()) == {"done:1"}
    assert recorded == 1
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # no other test should retry it
        conn.execute("UPDATE import_inbox SET state = 'dead' WHERE object_key = %s AND state = 'pending'", (poison,))
