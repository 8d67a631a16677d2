"""Loads made by `pipeline importer` workers show in Dagster (issue #24, defect 4): each one is a
materialization of its object's partition of telemetry_events, with its metadata, reported by
worker_loads_sensor from the outbox the load's own transaction wrote."""

from __future__ import annotations

import json

import psycopg
import pytest
from dagster import AssetKey, DagsterInstance

from pipeline.defs.importer.worker_loads import worker_loads_sensor
from pipeline.importer.worker import run_worker
from pipeline_tests.support import enriched_key, execute_requests, materialized, new_customer, put_enriched, sensor_tick


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def _waiting(stack, customer_id: str) -> list[int]:
    with psycopg.connect(stack.database_url) as conn:
        return [
            ledger_id
            for (ledger_id,) in conn.execute(
                "SELECT o.ledger_id FROM dagster_outbox o JOIN load_ledger l USING (ledger_id) "
                "WHERE l.object_key LIKE %s",
                (f"%customer={customer_id}/%",),
            ).fetchall()
        ]


def _report_all(instance, cursor=None, ticks: int = 40):
    """Tick until the outbox is empty (other tests' worker loads wait there too); returns the
    events reported and the last cursor."""
    events = []
    for _ in range(ticks):
        result = sensor_tick(instance, worker_loads_sensor, cursor)
        execute_requests(instance, result)
        events.extend(result.asset_events or [])
        cursor = result.cursor
        if not json.loads(cursor or "{}").get("reported"):
            return events, cursor
    raise AssertionError("the outbox did not empty")


def test_every_worker_load_is_a_materialization_of_its_partition(stack, clients, empty_queues, instance):
    cid = new_customer()
    keys = [enriched_key(stack, cid, f"part-{i:03d}.parquet") for i in range(5)]
    for i, key in enumerate(keys):
        put_enriched(clients("s3"), stack, key, rows=25, seed=i, customer_id=cid)
    stats = run_worker(stack, drain=True, idle_polls=2)
    assert stats.objects_loaded >= 5
    assert len(_waiting(stack, cid)) == 5  # written with the loads, before any Dagster saw them

    events, cursor = _report_all(instance)
    ours = [e for e in events if e.partition.startswith(f"customer={cid}/")]
    assert len(ours) == 5 and len(materialized(instance, cid)) == 5  # in the partition status
    for event in ours:
        assert event.metadata["rows"].value == 25 and event.metadata["dagster/row_count"].value == 25
        assert event.metadata["worker"].value == "importer"
        assert event.metadata["dagster/uri"].value.startswith(f"s3://{stack.enriched_bucket}/")
    partitions = instance.get_dynamic_partitions("enriched_objects")
    assert all(e.partition in partitions for e in ours)  # a worker's object had no partition before
    assert _waiting(stack, cid) == []  # deleted the tick after they were reported
    # reported once: nothing of ours again
    again, _ = _report_all(instance, cursor)
    assert not [e for e in again if e.partition.startswith(f"customer={cid}/")]
    records = instance.fetch_materializations(AssetKey("telemetry_events"), limit=1000).records
    assert len([r for r in records if (r.partition_key or "").startswith(f"customer={cid}/")]) == 5


def test_a_tick_whose_result_was_lost_reports_its_loads_again(stack, clients, empty_queues, instance):
    """The daemon stores a tick's events and cursor together; a tick that never completed leaves
    the old cursor, and its loads are reported again (at least once), not lost."""
    cid = new_customer()
    put_enriched(clients("s3"), stack, enriched_key(stack, cid, "only.parquet"), rows=7, customer_id=cid)
    run_worker(stack, drain=True, idle_polls=2)
    lost = sensor_tick(instance, worker_loads_sensor, None)  # its result never reaches the instance
    assert json.loads(lost.cursor)["reported"]
    events, _ = _report_all(instance, None)  # the old cursor: nothing was deleted
    assert [e.metadata["rows"].value for e in events if e.partition.startswith(f"customer={cid}/")] == [7]
    assert len(materialized(instance, cid)) == 1
