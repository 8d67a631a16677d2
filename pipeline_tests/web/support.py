"""Customers with imported reports, for the projection and web tests."""

from __future__ import annotations

import psycopg

from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import load_object, tombstone
from pipeline.warehouse.projections import refresh


def put_and_load(settings, s3, customer: str, name: str, rows: int, seed: int, day: str = "2026-11-01") -> str:
    """Write one enriched object and import it with the real loader (as an importer would)."""
    import datetime as dt

    key = f"{settings.enriched_prefix}customer={customer}/dt={day}/{name}"
    table = synthetic_enriched_table(
        rows, seed=seed, customer_id=customer, day=dt.date.fromisoformat(day), report_id=f"{customer}-{name}-{seed}"
    )
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))["ETag"].strip('"')
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag))
    return key


def delete_and_load(settings, s3, key: str, sequence: int) -> None:
    s3.delete_object(Bucket=settings.enriched_bucket, Key=key)
    version = ObjectVersion(settings.enriched_bucket, key, f"removed@{sequence}", event_name="ObjectRemoved:Delete")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        tombstone(conn, version)


def customer_with_reports(settings, s3, customer: str, objects: int = 3, rows: int = 40) -> list[str]:
    keys = [
        put_and_load(settings, s3, customer, f"r{i}.parquet", rows, seed=i, day=f"2026-11-0{1 + i % 3}")
        for i in range(objects)
    ]
    refresh(settings.database_url)
    return keys
