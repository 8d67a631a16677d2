"""Test support: drive the importer through Dagster in-process, and inject faults on purpose.

Nothing here is imported by the product. moto delivers exactly once and in order, so
duplicates, delays and crashes are made here.
"""

from __future__ import annotations

import json
import uuid
import warnings

from dagster import AssetKey, DagsterInstance, build_sensor_context

from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table

warnings.filterwarnings("ignore", category=Warning, module="dagster")


def new_customer() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def enriched_key(settings, customer_id: str, name: str, day: str = "2026-11-01") -> str:
    return f"{settings.enriched_prefix}customer={customer_id}/dt={day}/{name}"


def put_enriched(s3, settings, key: str, rows: int = 20, seed: int = 0, customer_id: str = "acme") -> str:
    body = parquet_bytes(
        synthetic_enriched_table(rows, seed=seed, customer_id=customer_id, report_id=f"r-{key}-{seed}")
    )
    return s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')


def sensor_tick(instance: DagsterInstance, sensor_def, cursor=None):
    from pipeline.defs.resources import resource_defs

    with build_sensor_context(instance=instance, resources=resource_defs(), cursor=cursor) as context:
        return sensor_def(context)


def execute_requests(instance: DagsterInstance, result) -> list:
    """Apply a SensorResult like the daemon does: partitions first, then each run, in process."""
    from pipeline.definitions import defs

    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if hasattr(request, "partition_keys") and type(request).__name__.startswith("Add"):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    job = defs.resolve_implicit_global_asset_job_def()
    results = []
    for request in getattr(result, "run_requests", None) or []:
        results.append(
            job.execute_in_process(
                instance=instance,
                run_config=request.run_config,
                tags=request.tags,
                asset_selection=request.asset_selection,
                raise_on_error=False,
            )
        )
    return results


def drain_through_dagster(instance: DagsterInstance, max_ticks: int = 20) -> list:
    """Tick import_queue_sensor and run what it asks for until the queue yields nothing."""
    from pipeline.defs.warehouse.sensors import import_queue_sensor

    runs = []
    for _ in range(max_ticks):
        result = sensor_tick(instance, import_queue_sensor)
        if not getattr(result, "run_requests", None) and not getattr(result, "dynamic_partitions_requests", None):
            break
        runs.extend(execute_requests(instance, result))
    return runs


def materialized(instance: DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(AssetKey("telemetry_events")))


def duplicate_message(sqs, queue_url: str, message: dict) -> None:
    """Deliver the same notification again (what SQS's at-least-once delivery may do)."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])


def sns_body(message: dict) -> dict:
    return json.loads(json.loads(message["Body"])["Message"])
