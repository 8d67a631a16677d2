"""An importer killed (SIGKILL) between COPY and COMMIT, or between intake's COMMIT and the SQS
delete: its inbox claims lapse, another importer takes the object, nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from pipeline.importer.verify import verify
from pipeline.importer.worker import run_worker
from pipeline_tests.support import enriched_key, messages_for, new_customer, put_enriched


@pytest.mark.parametrize("fault", ["copy", "ack"])
def test_killed_importer_loses_nothing_and_doubles_nothing(stack, clients, empty_queues, fault, monkeypatch):
    cid = new_customer()
    key = enriched_key(stack, cid, f"crash-{fault}.parquet")
    put_enriched(clients("s3"), stack, key, rows=500, customer_id=cid)
    fast = {"PIPELINE_IMPORT_LEASE_S": "2", "PIPELINE_INTAKE_VISIBILITY_S": "2"}
    child = subprocess.run(
        [sys.executable, "-m", "pipeline.chaos.faulty_worker", f"kill-{fault}"],
        env={**os.environ, **fast},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    with psycopg.connect(stack.database_url) as conn:
        (loads,) = conn.execute("SELECT count(*) FROM load_ledger WHERE object_key = %s", (key,)).fetchone()
    after_crash = verify(stack, cid)
    # The load's transaction died with the process, or it never started (killed before intake's
    # delete, right after the intake commit): nothing is loaded either way.
    assert loads == 0 and after_crash["rows_loaded"] == 0 and after_crash["missing"] == 500
    with psycopg.connect(stack.database_url) as conn:
        (held,) = conn.execute(
            "SELECT count(*) FROM import_inbox WHERE object_key = %s AND state = 'pending' AND claimed_by LIKE %s",
            (key, "worker:chaos-kill-%"),
        ).fetchone()
    assert held == 1  # the dead worker's claim, which lapses
    monkeypatch.setenv("PIPELINE_INTAKE_VISIBILITY_S", "2")
    time.sleep(2.5)  # the claim's lease (and, for kill-ack, the message's visibility) runs out
    stats = run_worker(stack, drain=True, lease_s=30)
    assert stats.objects_loaded >= 1  # ours (and whatever else was due in the shared inbox)
    if fault == "ack":  # the message came back; the object it names is loaded: settled at intake
        assert stats.messages >= 1 and stats.duplicates >= 1
    with psycopg.connect(stack.database_url) as conn:
        (loads,) = conn.execute("SELECT count(*) FROM load_ledger WHERE object_key = %s", (key,)).fetchone()
    assert loads == 1
    report = verify(stack, cid)
    assert report["ok"] and report["rows_loaded"] == 500
    assert messages_for(clients("sqs"), stack.queue_url, cid) == []
