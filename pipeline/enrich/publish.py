"""Publishing a run's enriched batches: stage, then publish, then remove what is gone.

Every output object is first written under ``staging/<run>/`` (outside the notified prefix, so
importers never see it). Only when all of them are staged does publishing start: each is copied
to its batch's final key unless that key already holds the same bytes (a byte-stable re-run then
publishes nothing and notifies nobody), and a batch's final keys its new output no longer has
are deleted. Each object is one complete Parquet file, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.telemetry import arrow_schema

log = logging.getLogger(__name__)
MAX_ROWS_PER_OBJECT = 1_000_000


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


@dataclass
class StagedPublish:
    """What publishing a run's staging prefix did, per day."""

    written: dict[str, list[str]] = field(default_factory=dict)
    unchanged: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)


def _listing(s3, bucket: str, prefix: str, delimiter: str | None = None):
    kwargs = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    yield from s3.get_paginator("list_objects_v2").paginate(**kwargs)


def delete_keys(s3, bucket: str, keys: list[str], pool: ThreadPoolExecutor | None = None) -> None:
    """Delete ``keys``, a thousand per DeleteObjects call; a key S3 refuses is an error that names it."""
    batches = [keys[start : start + 1000] for start in range(0, len(keys), 1000)]

    def one(batch: list[str]) -> None:
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if response.get("Errors"):
            first = response["Errors"][0]
            raise RuntimeError(
                f"S3 refused to delete {len(response['Errors'])} object(s) of s3://{bucket}, e.g. "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )

    list((pool.map if pool else map)(one, batches))


_STAGED_BATCH = re.compile(r"dt=(?P<day>\d{4}-\d{2}-\d{2})/batch=(?P<batch>[^/]+)/(?P<name>[^/]+)$")


def publish_batches(s3, bucket: str, final_prefix: str, staging_prefix: str, batches: list) -> StagedPublish:
    """Publish the batches a run staged under ``staging_prefix``, each at
    ``<final_prefix>dt=<day>/batch=<id>/``: an object is copied unless its bytes are there
    already (re-enriching a batch with the same inputs and versions notifies nobody), and a
    batch's final objects its new output no longer has are removed. Only the batches enriched
    again are listed (a new one's keys hold nothing yet); no other batch is listed or touched.
    The staging prefix is emptied last."""
    staged: dict[str, dict[str, str]] = {}
    staged_keys = []
    for page in _listing(s3, bucket, staging_prefix):
        for obj in page.get("Contents", []):
            staged_keys.append(obj["Key"])
            match = _STAGED_BATCH.search(obj["Key"])
            if match:
                staged.setdefault(match["batch"], {})[match["name"]] = obj["ETag"].strip('"')

    def existing_of(batch) -> dict[str, str]:
        if batch.new:  # recorded by this run's plan, under the planning lock: nothing can be at its keys
            return {}
        found = {}
        for page in _listing(s3, bucket, batch.prefix(final_prefix)):
            for obj in page.get("Contents", []):
                found[obj["Key"].rsplit("/", 1)[-1]] = obj["ETag"].strip('"')
        return found

    with ThreadPoolExecutor(8) as pool:
        existing = dict(zip((b.batch_id for b in batches), pool.map(existing_of, batches), strict=True))
    result = StagedPublish()
    copies, deletions = [], []
    for batch in batches:
        final = batch.prefix(final_prefix)
        new, old = staged.get(batch.batch_id, {}), existing[batch.batch_id]
        for name, etag in sorted(new.items()):
            if old.get(name) == etag:
                result.unchanged.setdefault(batch.day, []).append(final + name)
            else:
                copies.append((f"{staging_prefix}dt={batch.day}/batch={batch.batch_id}/{name}", final + name))
                result.written.setdefault(batch.day, []).append(final + name)
        for name in sorted(set(old) - set(new)):
            deletions.append(final + name)
            result.removed.setdefault(batch.day, []).append(final + name)

    def copy(pair: tuple[str, str]) -> None:
        s3.copy_object(Bucket=bucket, Key=pair[1], CopySource={"Bucket": bucket, "Key": pair[0]})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(copy, copies))
        delete_keys(s3, bucket, deletions, pool)
        delete_keys(s3, bucket, staged_keys, pool)
    log.info(
        "published staging=%s batches=%d written=%d unchanged=%d removed=%d",
        staging_prefix,
        len(batches),
        len(copies),
        sum(map(len, result.unchanged.values())),
        len(deletions),
    )
    return result
