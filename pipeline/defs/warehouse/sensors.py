"""import_queue_sensor: SQS -> one dynamic partition per object -> runs that import many objects.

Per tick (bounded: sensors time out at 60 s): long-poll up to ``max_messages`` messages,
dead-letter what is not an S3 event, delete what names only ignored objects or versions already
in the ledger, add a partition per new object and request runs of up to ``objects_per_run``
objects each, carrying the object versions and SQS receipts in run config. Partitions added in
one tick are contiguous, so a run covers them with one partition range (BackfillPolicy
single_run). A run key hashes message ids with their receive counts: a redelivery after a
failed run yields a new run key, so it really retries.
"""

from __future__ import annotations

import hashlib
import os
import time

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pipeline.defs.resources import ImportQueueResource, WarehouseResource
from pipeline.defs.warehouse.assets import telemetry_events
from pipeline.defs.warehouse.partitions import enriched_objects
from pipeline.importer.batch import ImportItem, connect
from pipeline.importer.partitions import partition_key, record_partitions
from pipeline.importer.queue import parse_delivery, receive
from pipeline.importer.worker import triage

MAX_MESSAGES_PER_TICK = int(os.environ.get("PIPELINE_SENSOR_MAX_MESSAGES", "1000"))
OBJECTS_PER_RUN = int(os.environ.get("PIPELINE_OBJECTS_PER_RUN", "500"))
TICK_BUDGET_SECONDS = 30.0  # of the 60 s a sensor tick may take; the rest is for triage
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def run_key(items: list[ImportItem], salt: str = "") -> str:
    parts = sorted(f"{i.message_id or i.version.version}:{i.receive_count}:{i.partition_key}" for i in items)
    return "import-" + hashlib.sha256(("|".join(parts) + salt).encode()).hexdigest()[:32]


def run_request(items: list[ImportItem], keys: list[str], salt: str = "") -> RunRequest:
    return RunRequest(
        run_key=run_key(items, salt),
        asset_selection=[telemetry_events.key],
        tags={RANGE_START: keys[0], RANGE_END: keys[-1], "pipeline/objects": str(len(keys))},
        run_config={"ops": {"telemetry_events": {"config": {"items": [i.to_config() for i in items]}}}},
    )


def plan_runs(
    items: list[ImportItem], first_seen: set[str], objects_per_run: int = OBJECTS_PER_RUN, salt: str = ""
) -> list[RunRequest]:
    """Keys seen for the first time are added in this tick, so they are contiguous: batch them by
    range. A key seen before (an overwrite, a delete, a redelivery) runs alone."""
    by_key: dict[str, list[ImportItem]] = {}
    for item in items:
        by_key.setdefault(item.partition_key, []).append(item)
    new = [k for k in by_key if k in first_seen]
    known = [k for k in by_key if k not in first_seen]
    requests = []
    for start in range(0, len(new), objects_per_run):
        chunk = new[start : start + objects_per_run]
        requests.append(run_request([i for k in chunk for i in by_key[k]], chunk, salt))
    for key in known:
        requests.append(run_request(by_key[key], [key], salt))
    return requests


@sensor(
    name="import_queue_sensor",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    asset_selection=[telemetry_events],
    description="Long-polls the SQS import queue; one dynamic partition per enriched object; batched import runs.",
)
def import_queue_sensor(
    context: SensorEvaluationContext, import_queue: ImportQueueResource, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    settings = import_queue.stack.settings()
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    messages = receive(import_queue.sqs, import_queue.url(), MAX_MESSAGES_PER_TICK, wait_seconds=1, deadline=deadline)
    if not messages:
        return SkipReason("import queue empty")
    deliveries = [parse_delivery(m, settings.enriched_bucket, settings.enriched_prefix) for m in messages]
    for delivery in deliveries:
        for reason in delivery.ignored:
            context.log.info(f"ignored message {delivery.message_id}: {reason}")
        for reason in delivery.rejected:
            context.log.warning(f"rejected message {delivery.message_id}: {reason} (recorded in rejected_messages)")
        if delivery.error:
            context.log.warning(f"dead-lettered message {delivery.message_id}: {delivery.error}")
    items, ignored, duplicates, dead = triage(warehouse.database_url(), import_queue.sqs, settings, deliveries)
    result, new_keys = partitioned_runs(warehouse.database_url(), items, settings.enriched_prefix)
    result = add_partitions_now(context, result)
    context.log.info(
        f"import tick messages={len(messages)} objects={len(items)} new_partitions={len(new_keys)} "
        f"duplicates={duplicates} ignored={ignored} dead_lettered={dead} runs={len(result.run_requests)}"
    )
    return result


def partitioned_runs(
    database_url: str, items: list[ImportItem], prefix: str, salt: str = ""
) -> tuple[SensorResult, list[str]]:
    """Give each item its object's partition key, remember the mapping, plan the runs."""
    items = [
        ImportItem(
            i.version,
            partition_key(i.version.bucket, i.version.key, prefix),
            i.receipt_handle,
            i.message_id,
            i.receive_count,
        )
        for i in items
    ]
    with connect(database_url) as conn:
        first_seen = record_partitions(conn, {(i.partition_key, i.version.bucket, i.version.key) for i in items})
    requests = plan_runs(items, first_seen, salt=salt)
    # All keys go into the add request: first-seen ones in order (contiguous, for the ranges);
    # known ones are no-ops for Dagster unless a crash lost them between this table and Dagster.
    keys = list(
        dict.fromkeys(
            [k for k in (i.partition_key for i in items) if k in first_seen] + [i.partition_key for i in items]
        )
    )
    adds = [enriched_objects.build_add_request(keys)] if keys else []
    new_keys = [k for k in keys if k in first_seen]
    return SensorResult(run_requests=requests, dynamic_partitions_requests=adds), new_keys


def add_partitions_now(context: SensorEvaluationContext, result: SensorResult) -> SensorResult:
    """Add the tick's partitions in one storage call instead of handing them to the daemon.

    The daemon applies an AddDynamicPartitionsRequest with one existence query per key (500
    queries for a tick of 500 objects, ~2 s before its runs are even created); the storage's
    ``add_dynamic_partitions`` takes them all in one query and one insert. Should that fail (a
    concurrent sensor adding the same key), the request goes to the daemon as usual. The keys
    are in the tick log either way (``new_partitions=``).
    """
    adds = [r for r in result.dynamic_partitions_requests or [] if isinstance(r, AddDynamicPartitionsRequest)]
    if not adds or context.instance is None:
        return result
    try:
        for request in adds:
            context.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    except Exception as exc:  # the daemon's path still adds them, key by key
        context.log.warning(f"adding partitions in the sensor failed ({exc}); the daemon adds them")
        return result
    rest = [r for r in result.dynamic_partitions_requests if not isinstance(r, AddDynamicPartitionsRequest)]
    return SensorResult(run_requests=result.run_requests, dynamic_partitions_requests=rest)


@sensor(
    name="import_reconciler",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.RUNNING,
    asset_selection=[telemetry_events],
    description="Lists the enriched prefix against the ledger and imports what lost notifications left behind.",
)
def import_reconciler(
    context: SensorEvaluationContext, import_queue: ImportQueueResource, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    from pipeline.importer.reconcile import find_drift

    settings = import_queue.stack.settings()
    s3 = import_queue.stack.client("s3")
    with connect(warehouse.database_url()) as conn:
        drift = find_drift(conn, s3, settings.enriched_bucket, settings.enriched_prefix)
    if not drift.items:
        return SkipReason("the ledger reflects every enriched object")
    result, _ = partitioned_runs(
        warehouse.database_url(), drift.items, settings.enriched_prefix, salt=f"reconcile:{time.time():.0f}"
    )
    result = add_partitions_now(context, result)
    context.log.warning(f"reconcile: {len(drift.unloaded)} unloaded, {len(drift.removed)} removed object(s)")
    return result


PARTITION_RETENTION_DAYS = float(os.environ.get("PIPELINE_PARTITION_RETENTION_DAYS", "7"))


@sensor(
    name="prune_object_partitions",
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keeps enriched_objects bounded: removes old partitions of settled objects (the ledger keeps history).",
)
def prune_object_partitions(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    from pipeline.importer.partitions import mark_pruned, prunable

    with connect(warehouse.database_url()) as conn:
        keys = prunable(conn, PARTITION_RETENTION_DAYS * 86400)
        if not keys:
            return SkipReason("nothing old enough to prune")
        mark_pruned(conn, keys)
    context.log.info(f"pruning {len(keys)} object partition(s) older than {PARTITION_RETENTION_DAYS} day(s)")
    return SensorResult(dynamic_partitions_requests=[enriched_objects.build_delete_request(keys)])
