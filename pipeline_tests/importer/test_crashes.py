"""An importer killed (SIGKILL) between COPY and COMMIT, or between COMMIT and the SQS delete."""

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
from pipeline_tests.conftest import messages_for
from pipeline_tests.support import enriched_key, new_customer, put_enriched


@pytest.mark.parametrize("fault", ["copy", "ack"])
def test_killed_importer_loses_nothing_and_doubles_nothing(stack, clients, empty_queues, fault):
    cid = new_customer()
    key = enriched_key(stack, cid, f"crash-{fault}.parquet")
    put_enriched(clients("s3"), stack, key, rows=500, customer_id=cid)
    child = subprocess.run(
        [sys.executable, "-m", "pipeline.chaos.faulty_worker", f"kill-{fault}"],
        env={**os.environ, "PIPELINE_CHAOS_VISIBILITY": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    with psycopg.connect(stack.database_url) as conn:
        (loads,) = conn.execute("SELECT count(*) FROM load_ledger WHERE object_key = %s", (key,)).fetchone()
    after_crash = verify(stack, cid)
    if fault == "copy":  # the transaction died with the process: nothing of it is visible
        assert loads == 0 and after_crash["rows_loaded"] == 0 and after_crash["missing"] == 500
    else:  # committed, but the message was never deleted
        assert loads == 1 and after_crash["rows_loaded"] == 500
    time.sleep(2.5)  # the crashed importer's visibility timeout runs out; SQS redelivers
    stats = run_worker(stack, drain=True, visibility=30)
    # The redelivery is a new load after the rolled-back COPY, a duplicate after the lost delete.
    assert (stats.objects_loaded if fault == "copy" else stats.duplicates) >= 1
    with psycopg.connect(stack.database_url) as conn:
        (loads,) = conn.execute("SELECT count(*) FROM load_ledger WHERE object_key = %s", (key,)).fetchone()
    assert loads == 1
    report = verify(stack, cid)
    assert report["ok"] and report["rows_loaded"] == 500
    assert messages_for(clients("sqs"), stack.queue_url, cid) == []
