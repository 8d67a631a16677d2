"""The worker capacity's backlog counts only work a worker can claim (issue #24, defect 4): inbox
rows that a live lease gives to a Dagster run (or to the sensor planning runs) are the runs' work,
on their own tasks, and backfill runs' partitions too; both stay visible, neither sizes workers."""

from __future__ import annotations

import uuid

import psycopg

from pipeline.importer import inbox
from pipeline.scaling.controller import CapacityController
from pipeline.scaling.policy import ScalingPolicy
from pipeline_tests.support import private_queue


def _rows(conn, claims: list[tuple[str | None, int]]) -> None:
    """Pending inbox rows, each claimed by ``owner`` (None: unclaimed) for ``lease_s`` seconds
    (negative: a lapsed lease)."""
    for owner, lease_s in claims:
        conn.execute(
            """INSERT INTO import_inbox (bucket, object_key, object_version, event_name, claimed_by, claimed_at,
                                         lease_until)
               VALUES ('b', %s, 'v1', 'ObjectCreated:Put', %s, clock_timestamp(),
                       clock_timestamp() + make_interval(secs => %s))""",
            (f"backlog-{uuid.uuid4().hex}", owner, lease_s),
        )


def test_the_worker_backlog_never_counts_rows_leased_to_runs(stack, clients):
    sqs = clients("sqs")
    queue_url = private_queue(sqs, f"backlog-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        _rows(
            conn,
            [
                (None, 0),  # due: a worker takes it
                ("worker:host:12:345", 300),  # a worker holds it: the capacity is busy with it
                ("import-4f2a9c", 300),  # a run key holds it: the run imports it
                ("planning:77:123", 300),  # the import sensor is handing it to a run
                ("import-dead-run", -10),  # a run's lease lapsed (the run died): due again, a worker may take it
            ],
        )
        counts = inbox.counts(conn)
    assert (counts.pending, counts.for_workers) == (5, 3)
    controller = CapacityController(None, ScalingPolicy(target_per_worker=1), stack.database_url, sqs, queue_url)
    backlog = controller.backlog()
    assert (backlog.inbox, backlog.total) == (3, 3)
