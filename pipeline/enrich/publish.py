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
import re
from concurrent.futures import ThreadPoolExecutor
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


@dataclass
class StagedPublish:
    """What publishing a run's staging prefix did, per day."""

    written: dict[str, list[str]] = field(default_factory=dict)
    unchanged: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)


_PARTITION = re.compile(r"customer=(?P<customer>[^/]+)/dt=(?P<day>\d{4}-\d{2}-\d{2})/(?P<name>[^/]+)$")


def _listing(s3, bucket: str, prefix: str, delimiter: str | None = None):
    kwargs = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    yield from s3.get_paginator("list_objects_v2").paginate(**kwargs)


def publish_staged(
    s3, bucket: str, final_prefix: str, staging_prefix: str, days: list[str], customers: list[str] | None = None
) -> StagedPublish:
    """Publish a run whose tasks staged every output object under ``staging_prefix``.

    One listing of the staging prefix says what the run produced; one listing per customer of
    the final prefix says what is there now. Then, per (customer, day) of the run's days: each
    staged object is copied to its final key unless the bytes are already there (a byte-stable
    re-run notifies nobody), and final objects the new output no longer has are removed. Each
    copy is one complete object, so a reader never sees half of one. The staging prefix is
    emptied last. ``customers``: the run's scope (the others' objects are neither listed nor
    touched); None: every customer of the final prefix.
    """
    wanted = set(days)
    staged: dict[tuple[str, str], dict[str, str]] = {}
    staged_keys = []
    for page in _listing(s3, bucket, staging_prefix):
        for obj in page.get("Contents", []):
            staged_keys.append(obj["Key"])
            match = _PARTITION.search(obj["Key"])
            if match and match["day"] in wanted:
                staged.setdefault((match["customer"], match["day"]), {})[match["name"]] = obj["ETag"].strip('"')
    scope = set(customers) if customers is not None else None
    if scope is not None:
        staged = {group: names for group, names in staged.items() if group[0] in scope}
    customers = {customer for customer, _ in staged} | (scope or set())
    if scope is None:
        for page in _listing(s3, bucket, final_prefix + "customer=", "/"):
            customers |= {
                p["Prefix"][len(final_prefix) + len("customer=") : -1] for p in page.get("CommonPrefixes", [])
            }

    def existing_of(customer: str) -> dict[tuple[str, str], dict[str, str]]:
        found: dict[tuple[str, str], dict[str, str]] = {}
        for page in _listing(s3, bucket, f"{final_prefix}customer={customer}/"):
            for obj in page.get("Contents", []):
                match = _PARTITION.search(obj["Key"])
                if match and match["day"] in wanted and match["customer"] == customer:
                    found.setdefault((customer, match["day"]), {})[match["name"]] = obj["ETag"].strip('"')
        return found

    existing: dict[tuple[str, str], dict[str, str]] = {}
    with ThreadPoolExecutor(8) as pool:
        for found in pool.map(existing_of, sorted(customers)):
            existing.update(found)
    result = StagedPublish()
    copies, deletions = [], []
    for customer, day in sorted(set(staged) | set(existing)):
        final = f"{final_prefix}customer={customer}/dt={day}/"
        new, old = staged.get((customer, day), {}), existing.get((customer, day), {})
        for name, etag in sorted(new.items()):
            if old.get(name) == etag:
                result.unchanged.setdefault(day, []).append(final + name)
            else:
                copies.append((f"{staging_prefix}customer={customer}/dt={day}/{name}", final + name))
                result.written.setdefault(day, []).append(final + name)
        for name in sorted(set(old) - set(new)):
            deletions.append(final + name)
            result.removed.setdefault(day, []).append(final + name)

    def copy(pair: tuple[str, str]) -> None:
        s3.copy_object(Bucket=bucket, Key=pair[1], CopySource={"Bucket": bucket, "Key": pair[0]})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(copy, copies))
        delete_keys(s3, bucket, deletions, pool)
        delete_keys(s3, bucket, staged_keys, pool)
    log.info(
        "published staging=%s written=%d unchanged=%d removed=%d",
        staging_prefix,
        len(copies),
        sum(map(len, result.unchanged.values())),
        len(deletions),
    )
    return result


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
    batch's final objects its new output no longer has are removed. No other batch is listed or
    touched. The staging prefix is emptied last."""
    staged: dict[str, dict[str, str]] = {}
    staged_keys = []
    for page in _listing(s3, bucket, staging_prefix):
        for obj in page.get("Contents", []):
            staged_keys.append(obj["Key"])
            match = _STAGED_BATCH.search(obj["Key"])
            if match:
                staged.setdefault(match["batch"], {})[match["name"]] = obj["ETag"].strip('"')

    def existing_of(batch) -> dict[str, str]:
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
