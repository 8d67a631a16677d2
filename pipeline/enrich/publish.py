"""Publishing a partition's enriched output: stage, then publish, then remove what is gone.

Every output object is first written under ``staging/<run>/`` (outside the notified prefix, so
importers never see it). Only when all of them are staged does publishing start: each is copied
to its final key unless the final key already holds the same bytes (a byte-stable re-run then
publishes nothing and notifies nobody), and final keys the new output no longer has are
deleted. Each object is one complete Parquet file, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.telemetry import arrow_schema

log = logging.getLogger(__name__)
MAX_ROWS_PER_OBJECT = 1_000_000


@dataclass
class PublishResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def parquet_objects(table: pa.Table, max_rows: int = MAX_ROWS_PER_OBJECT) -> list[tuple[str, bytes]]:
    """Deterministic Parquet bodies for one (customer, day): sorted by event_id; rows of one
    report stay in one object, so re-publishing never moves an event between objects."""
    schema = arrow_schema()
    table = table.select(schema.names).cast(schema).sort_by("event_id")
    parts = max(1, -(-table.num_rows // max_rows))
    if parts == 1:
        groups = [table]
    else:
        identity = [
            int(hashlib.sha256(f"{o}\n{r}".encode()).hexdigest()[:8], 16) % parts
            for o, r in zip(table.column("report_org").to_pylist(), table.column("report_id").to_pylist(), strict=True)
        ]
        groups = [table.filter(pa.array([i == n for i in identity])) for n in range(parts)]
    bodies = []
    for n, group in enumerate(groups):
        sink = io.BytesIO()
        pq.write_table(group, sink, compression="zstd", row_group_size=128_000, write_statistics=True)
        bodies.append((f"part-{n:05d}.parquet", sink.getvalue()))
    return bodies


def publish(s3, bucket: str, final_prefix: str, outputs: list[tuple[str, bytes]], staging_prefix: str) -> PublishResult:
    result = PublishResult()
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=final_prefix):
        for obj in page.get("Contents", []):
            existing[obj["Key"]] = obj["ETag"].strip('"')
    staged = []
    for name, body in outputs:  # 1. stage everything
        final = final_prefix + name
        if existing.get(final) == hashlib.md5(body, usedforsecurity=False).hexdigest():
            result.unchanged.append(final)
            continue
        s3.put_object(Bucket=bucket, Key=staging_prefix + name, Body=body)
        staged.append((staging_prefix + name, final))
    for staging_key, final in staged:  # 2. publish
        s3.copy_object(Bucket=bucket, Key=final, CopySource={"Bucket": bucket, "Key": staging_key})
        result.written.append(final)
    keep = {final_prefix + name for name, _ in outputs}
    for key in sorted(set(existing) - keep):  # 3. remove what the new output no longer has
        s3.delete_object(Bucket=bucket, Key=key)
        result.removed.append(key)
    for staging_key, _ in staged:
        s3.delete_object(Bucket=bucket, Key=staging_key)
    log.info(
        "published prefix=%s written=%d unchanged=%d removed=%d",
        final_prefix,
        len(result.written),
        len(result.unchanged),
        len(result.removed),
    )
    return result
