"""worker_loads_sensor: the loads no Dagster run made, reported to Dagster as materializations.

``pipeline importer`` workers (the capacity the launcher scales: local processes, the ECS worker
service, the auto-scaling group behind it) load objects outside Dagster runs. Each such load
writes a ``dagster_outbox`` row in its own transaction; this sensor reads the waiting rows,
adds their objects' partitions (a worker takes notifications from SQS itself, so the import
sensor may never have seen the object) and reports one ``AssetMaterialization`` of
``telemetry_events`` per load, with the metadata a run's materialization carries. The rows a
tick reported are deleted at the start of the next tick, once the daemon has stored the events
(a daemon that dies in between reports them again: at least once). A tick costs the rows
waiting, never the history.
"""

from __future__ import annotations

import json

from dagster import (
    AssetMaterialization,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pipeline import names
from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.partitions import enriched_objects
from pipeline.defs.resources import ImportQueueResource, WarehouseResource
from pipeline.importer.batch import connect
from pipeline.importer.partitions import partition_key, record_partitions

PER_TICK = 500  # loads reported a tick (a sensor tick has 60 s; one storage call adds the partitions)


def waiting_loads(conn, limit: int = PER_TICK) -> list[tuple]:
    """(ledger_id, bucket, object_key, object_version, rows, bytes, worker, recorded_at) of the
    loads waiting in the outbox, oldest first."""
    return conn.execute(
        """SELECT l.ledger_id, l.bucket, l.object_key, l.object_version, l.rows, l.bytes, l.worker, l.recorded_at
             FROM dagster_outbox o JOIN load_ledger l USING (ledger_id)
            ORDER BY o.ledger_id LIMIT %s""",
        (limit,),
    ).fetchall()


def load_materialization(key: str, bucket: str, object_key: str, version: str, rows, size, worker, at):
    uri = f"s3://{bucket}/{object_key}"
    return AssetMaterialization(
        asset_key=telemetry_events.key,
        partition=key,
        description=f"loaded by {worker} outside a Dagster run",
        metadata={
            "outcome": "loaded",
            "rows": int(rows or 0),
            "bytes": int(size or 0),
            "object": MetadataValue.path(uri),
            "object_version": version,
            "worker": worker or "",
            "loaded_at": MetadataValue.timestamp(at) if at is not None else "",
            "dagster/row_count": int(rows or 0),
            "dagster/uri": uri,
        },
    )


@sensor(
    name=names.WORKER_LOADS_SENSOR,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING,
    description="Reports the loads made outside Dagster runs (pipeline importer workers) as materializations "
    "of their objects' partitions of telemetry_events, so that the catalog shows every load.",
)
def worker_loads_sensor(
    context: SensorEvaluationContext, import_queue: ImportQueueResource, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    prefix = import_queue.settings().enriched_prefix
    reported = json.loads(context.cursor or "{}").get("reported", [])
    with connect(warehouse.database_url()) as conn:
        if reported:  # the daemon stored last tick's events before this tick began
            conn.execute("DELETE FROM dagster_outbox WHERE ledger_id = ANY(%s)", (reported,))
            conn.commit()
        loads = waiting_loads(conn)
        keyed = [(partition_key(row[1], row[2], prefix), row) for row in loads]
        if keyed:
            record_partitions(conn, {(k, row[1], row[2]) for k, row in keyed})
            conn.commit()
    if not keyed:
        return SensorResult(skip_reason=SkipReason("no load outside a run waits to be reported"), cursor="{}")
    keys = list(dict.fromkeys(k for k, _ in keyed))
    if context.instance is not None:  # one storage call; the partitions exist before their events
        context.instance.add_dynamic_partitions(enriched_objects.name, keys)
    events = [load_materialization(k, *row[1:]) for k, row in keyed]
    context.log.info(f"worker loads reported={len(events)} partitions={len(keys)}")
    return SensorResult(asset_events=events, cursor=json.dumps({"reported": [row[0] for _, row in keyed]}))
