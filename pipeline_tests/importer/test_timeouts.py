"""A peer that goes silent (a partition that neither resets nor closes) while it holds a key's
lock cannot wedge the other importers, or itself: the server's timeouts end its transaction
and free the lock, and the importer's watchdog cuts its connection so the object is retried.
S3 answering 403 is an error that names the permission, never "the object is gone"."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from botocore.stub import Stubber

from pipeline.aws import client
from pipeline.chaos.proxy import ResettingProxy
from pipeline.importer.batch import ImportItem, ImportTimeouts, import_items
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


def test_a_frozen_peer_holding_a_keys_lock_does_not_wedge_the_key(stack, clients, empty_queues, monkeypatch):
    import pipeline.importer.load as load

    for name in ("PIPELINE_DB_LOCK_TIMEOUT_S", "PIPELINE_DB_STATEMENT_TIMEOUT_S", "PIPELINE_DB_IDLE_IN_TRANSACTION_S"):
        monkeypatch.setenv(name, "3")
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
        [outcome] = import_items(url, s3, [ImportItem(version)], worker=name)
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
    # B waited for the lock until the server ended A's idle transaction (3 s), then loaded.
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
