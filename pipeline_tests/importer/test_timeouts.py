"""A peer that goes silent (a partition that neither resets nor closes) while it holds a key's
lock cannot wedge the other importers, or itself: the server's timeouts end its transaction
and free the lock, and the importer's watchdog cuts its connection so the object is retried.
S3 answering 403 is an error that names the permission, never "the object is gone"."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from botocore.stub import Stubber

from pipeline.aws import client
from pipeline.chaos.proxy import ResettingProxy
from pipeline.importer.batch import ImportItem, ImportTimeouts, connect, import_items
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import S3AccessDenied, current_object
from pipeline.importer.verify import verify
from pipeline.importer.worker import run_worker
from pipeline_tests.support import enriched_key, new_customer, put_enriched


def through(proxy: ResettingProxy, database_url: str) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_the_connection_carries_the_importer_timeouts(stack, monkeypatch):
    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "7")
    monkeypatch.setenv("PIPELINE_DB_IDLE_IN_TRANSACTION_S", "8")
    from pipeline.importer.batch import connect

    with connect(stack.database_url) as conn:
        got = [
            conn.execute(f"SHOW {name}").fetchone()[0]
            for name in (
                "lock_timeout",
                "statement_timeout",
                "idle_in_transaction_session_timeout",
                "tcp_keepalives_idle",
            )
        ]
    assert got == ["7s", "30min", "8s", "30"]
    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "soon")
    from pipeline.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="PIPELINE_DB_LOCK_TIMEOUT_S"):
        ImportTimeouts.from_env()
    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "1800")  # a lock wait must end before the statement
    with pytest.raises(ConfigurationError, match="must be below PIPELINE_DB_STATEMENT_TIMEOUT_S"):
        ImportTimeouts.from_env()


def test_a_frozen_peer_holding_a_keys_lock_does_not_wedge_the_key(stack, clients, empty_queues, monkeypatch):
    import pipeline.importer.load as load

    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "2")
    monkeypatch.setenv("PIPELINE_DB_STATEMENT_TIMEOUT_S", "3")
    monkeypatch.setenv("PIPELINE_DB_IDLE_IN_TRANSACTION_S", "3")
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(stack, cid, "frozen.parquet")
    put_enriched(s3, stack, key, rows=300, customer_id=cid)
    head = s3.head_object(Bucket=stack.enriched_bucket, Key=key)
    version = ObjectVersion(stack.enriched_bucket, key, head["ETag"].strip('"'), head["ETag"].strip('"'))
    parts = urlsplit(stack.database_url)
    proxy = ResettingProxy((parts.hostname, parts.port), reset_rate=0.0, seed=1)
    original_lock = load._lock_key
    frozen = threading.Event()

    def lock_then_freeze(cur, v):
        original_lock(cur, v)
        if cur.connection.info.port == proxy.port and not frozen.is_set():
            frozen.set()
            proxy.silence_all()  # the peer goes dark holding the key's lock

    monkeypatch.setattr(load, "_lock_key", lock_then_freeze)
    results: dict[str, tuple] = {}

    def importer(name: str, url: str) -> None:
        started = time.monotonic()
        while True:  # a lock wait that times out is postponed: the next attempt comes soon
            [outcome] = import_items(url, s3, [ImportItem(version)], worker=name)
            if outcome.ok or name == "A" or "LockNotAvailable" not in outcome.error:
                break
        results[name] = (outcome, time.monotonic() - started)

    try:
        a = threading.Thread(target=importer, args=("A", through(proxy, stack.database_url)))
        a.start()
        assert frozen.wait(30)
        b = threading.Thread(target=importer, args=("B", stack.database_url))
        b.start()
        b.join(60)
        a.join(60)
    finally:
        proxy.close()
    assert not a.is_alive() and not b.is_alive()
    (a_outcome, a_seconds), (b_outcome, b_seconds) = results["A"], results["B"]
    # B waited (postponed, not failed) until the server ended A's idle transaction (3 s), then loaded.
    assert b_outcome.ok and b_outcome.result.outcome == "loaded" and b_seconds < 15
    # A's client, behind the silent network, was cut by its watchdog: a failure, retried later.
    assert not a_outcome.ok and a_seconds < 30
    assert verify(stack, cid)["ok"]


def test_forbidden_is_not_gone(stack, clients, empty_queues):
    """Without s3:ListBucket S3 answers 403 for a missing key. S3's answer is stubbed here (moto
    does not enforce IAM), the rest is the real warehouse."""
    cid = new_customer()
    key = enriched_key(stack, cid, "forbidden.parquet")
    put_enriched(clients("s3"), stack, key, rows=5, customer_id=cid)
    run_worker(stack, drain=True)
    denied_s3 = client(stack, "s3")
    with Stubber(denied_s3) as stub:
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(S3AccessDenied, match="s3:ListBucket"):
            current_object(denied_s3, stack.enriched_bucket, key)
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        removed = ObjectVersion(stack.enriched_bucket, key, "removed@x", event_name="ObjectRemoved:Delete")
        [outcome] = import_items(stack.database_url, denied_s3, [ImportItem(removed)])
    assert not outcome.ok and "s3:ListBucket" in outcome.error
    assert verify(stack, cid)["rows_loaded"] == 5  # a delete it could not check removed nothing


def test_waiting_for_a_keys_lock_costs_no_attempt(stack, clients, empty_queues, monkeypatch):
    """Contention is not failure: an object whose key stays locked past lock_timeout is postponed
    without counting an attempt, so waiting never dead-letters it (here max_attempts is 1)."""
    from pipeline.importer.intake import take_in
    from pipeline_tests.support import own_messages

    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "1")
    monkeypatch.setenv("PIPELINE_IMPORT_MAX_ATTEMPTS", "1")
    cid = new_customer()
    s3, sqs = clients("s3"), clients("sqs")
    key = enriched_key(stack, cid, "contended.parquet")
    put_enriched(s3, stack, key, rows=7, customer_id=cid)
    with connect(stack.database_url) as conn:
        [row] = take_in(conn, sqs, stack, own_messages(sqs, stack.queue_url, cid, 30), "test-lock", lease_s=60).new
    holder = psycopg.connect(stack.database_url)  # another importer holds the key's lock
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{stack.enriched_bucket}/{key}",))
    try:
        for _ in range(3):
            [outcome] = import_items(stack.database_url, s3, [ImportItem.from_inbox(row)], owner="test-lock")
            assert not outcome.ok and "LockNotAvailable" in outcome.error
    finally:
        holder.rollback()
        holder.close()
    with psycopg.connect(stack.database_url) as conn:
        state, attempts = conn.execute(
            "SELECT state, attempts FROM import_inbox WHERE inbox_id = %s", (row.inbox_id,)
        ).fetchone()
    assert (state, attempts) == ("pending", 0)
    [outcome] = import_items(stack.database_url, s3, [ImportItem.from_inbox(row)])
    assert outcome.result.outcome == "loaded" and verify(stack, cid)["ok"]


def test_a_peer_frozen_mid_copy_is_ended_and_its_key_freed(stack, clients, empty_queues, monkeypatch):
    """The server enforces no statement timeout while it waits for a client's COPY data: a peer
    that goes silent mid-COPY would hold its key's lock for ever. The importer that needs the key
    ends that session once it is older than the statement timeout; the frozen importer's own
    watchdog ends it too."""
    import pipeline.importer.load as load

    monkeypatch.setenv("PIPELINE_DB_LOCK_TIMEOUT_S", "1")
    monkeypatch.setenv("PIPELINE_DB_STATEMENT_TIMEOUT_S", "2")
    monkeypatch.setenv("PIPELINE_DB_IDLE_IN_TRANSACTION_S", "2")
    cid = new_customer()
    s3 = clients("s3")
    key = enriched_key(stack, cid, "frozen-copy.parquet")
    put_enriched(s3, stack, key, rows=3000, customer_id=cid)
    head = s3.head_object(Bucket=stack.enriched_bucket, Key=key)
    version = ObjectVersion(stack.enriched_bucket, key, head["ETag"].strip('"'), head["ETag"].strip('"'))
    parts = urlsplit(stack.database_url)
    proxy = ResettingProxy((parts.hostname, parts.port), reset_rate=0.0, seed=2)
    original_rows = load._rows
    frozen = threading.Event()

    def rows_then_freeze(table, ledger_id, where=""):
        for n, row in enumerate(original_rows(table, ledger_id, where)):
            if n == 100 and threading.current_thread().name.startswith("frozen") and not frozen.is_set():
                frozen.set()
                proxy.silence_all()  # mid-COPY: the server waits for data that never comes
            yield row

    monkeypatch.setattr(load, "_rows", rows_then_freeze)
    results: dict[str, object] = {}
    a = threading.Thread(
        target=lambda: results.update(A=import_items(through(proxy, stack.database_url), s3, [ImportItem(version)])),
        name="frozen-importer",
    )
    try:
        a.start()
        assert frozen.wait(30)
        started = time.monotonic()
        while time.monotonic() - started < 30:  # B retries as its postponements allow
            [b] = import_items(stack.database_url, s3, [ImportItem(version)], worker="B")
            if b.ok:
                break
            assert "LockNotAvailable" in b.error
        waited = time.monotonic() - started
        a.join(60)
    finally:
        proxy.close()
    assert b.ok and b.result.outcome == "loaded" and waited < 20
    assert not a.is_alive() and not results["A"][0].ok
    assert verify(stack, cid)["ok"]
