"""Test support: drive the importer through Dagster in-process, and inject faults on purpose.

Nothing here is imported by the product. moto delivers exactly once and in order, so
duplicates, delays and crashes are made here.
"""

from __future__ import annotations

import json
import uuid
import warnings

from dagster import AssetKey, DagsterInstance

from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.local.inprocess import apply, drain_import_queue, tick

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


def put_poison_and_good(s3, settings, customer_id: str, good: int, rows: int) -> str:
    """One object that is not Parquet (``poison.parquet``, returned) and ``good`` good ones."""
    poison = enriched_key(settings, customer_id, "poison.parquet")
    s3.put_object(Bucket=settings.enriched_bucket, Key=poison, Body=b"PAR1 this is not parquet")
    for n in range(good):
        put_enriched(s3, settings, enriched_key(settings, customer_id, f"good-{n}.parquet"), rows, n, customer_id)
    return poison


def sensor_tick(instance: DagsterInstance, sensor_def, cursor=None):
    return tick(instance, sensor_def, cursor)


def execute_requests(instance: DagsterInstance, result) -> list:
    return apply(instance, result)


def drain_through_dagster(instance: DagsterInstance, max_ticks: int = 20) -> list:
    return drain_import_queue(instance, max_ticks)


def materialized(instance: DagsterInstance, customer_id: str | None = None) -> set[str]:
    """Materialized object partitions (of one customer: tests share one queue and warehouse)."""
    keys = set(instance.get_materialized_partitions(AssetKey("telemetry_events")))
    return {k for k in keys if customer_id is None or k.startswith(f"customer={customer_id}/")}


def duplicate_message(sqs, queue_url: str, message: dict) -> None:
    """Deliver the same notification again (what SQS's at-least-once delivery may do)."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])


def sns_body(message: dict) -> dict:
    return json.loads(json.loads(message["Body"])["Message"])
