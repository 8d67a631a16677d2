"""Enrichment of one (customer, day) group of raw objects: what one Spark task does, and what the
single-process baseline does for every group in turn. No Spark here, and nothing of the driver:
a task reads its raw objects from S3 itself, enriches them column-wise, writes the group's
Parquet objects under the run's staging prefix and its rescued records to the quarantine, and
returns a few counts. The data never travels back to the driver.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson

from pipeline.collector.catalog import RAW_KEY
from pipeline.collector.normalize import CUSTOMER_ID
from pipeline.enrich.model import MODEL_VERSION
from pipeline.enrich.publish import parquet_objects
from pipeline.enrich.transform import RESCUE, enrich_frame
from pipeline.settings import Settings
from pipeline.telemetry import RAW_FIELDS

log = logging.getLogger(__name__)
QUARANTINE_PREFIX = "quarantine/"
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
FETCH_THREADS = 8  # a task's concurrent S3 reads: many small raw objects are round trips


@dataclass(frozen=True)
class Group:
    """The raw objects of one customer and day: one task's unit of work, one output partition."""

    customer: str
    day: str
    keys: tuple[str, ...]
    size: int = 0  # bytes, to balance tasks

    def staging_prefix(self, run_id: str) -> str:
        return f"staging/{run_id}/customer={self.customer}/dt={self.day}/"


@dataclass
class GroupResult:
    customer: str
    day: str
    raw_objects: int = 0
    raw_records: int = 0  # what the collector says it wrote (object metadata)
    rows_read: int = 0
    enriched_rows: int = 0
    rescued_rows: int = 0
    null_event_ids: int = 0
    with_asn: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    staged: list[str] = field(default_factory=list)  # object names, e.g. part-00000.parquet


def task_settings(settings: Settings) -> Settings:
    """What a task needs to reach S3: no database URLs travel to the executors."""
    return replace(settings, database_url=None, dagster_database_url=None, extra={})


def plan_groups(s3, settings: Settings, days: list[str]) -> list[Group]:
    """The run's groups: one listing per customer of the raw prefix, kept to the run's days.

    Folders that are not customer ids the collector writes are skipped with a warning (a key
    never becomes a path or a prefix of ours unvalidated).
    """
    wanted = set(days)
    customers = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.raw_bucket, Prefix=settings.raw_prefix + "customer=", Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            customer = prefix["Prefix"][len(settings.raw_prefix) + len("customer=") : -1]
            if CUSTOMER_ID.fullmatch(customer):
                customers.append(customer)
            else:
                log.warning(
                    "skipped raw prefix customer=%r: not a customer id the collector writes; move or delete it",
                    customer,
                )

    def groups_of(customer: str) -> list[Group]:
        found: dict[str, list[tuple[str, int]]] = {}
        base = f"{settings.raw_prefix}customer={customer}/"
        # Day prefixes are listed, not the customer's whole history, when the run is a few days.
        prefixes = [f"{base}dt={day}/" for day in sorted(wanted)] if len(wanted) <= 31 else [base]
        for prefix in prefixes:
            for page in paginator.paginate(Bucket=settings.raw_bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    match = RAW_KEY.search(obj["Key"])
                    if match and match["customer"] == customer and match["day"] in wanted:
                        found.setdefault(match["day"], []).append((obj["Key"], obj["Size"]))
        return [
            Group(customer, day, tuple(k for k, _ in sorted(objs)), sum(s for _, s in objs))
            for day, objs in sorted(found.items())
        ]

    with ThreadPoolExecutor(8) as pool:
        return [g for groups in pool.map(groups_of, customers) for g in groups]


def balance(groups: list[Group], slices: int) -> list[list[Group]]:
    """Groups dealt to ``slices`` tasks, largest first to the lightest task (LPT)."""
    tasks: list[list[Group]] = [[] for _ in range(max(1, min(slices, len(groups))))]
    loads = [0] * len(tasks)
    for group in sorted(groups, key=lambda g: (-g.size, g.customer, g.day)):
        lightest = loads.index(min(loads))
        tasks[lightest].append(group)
        loads[lightest] += group.size + 1
    return [t for t in tasks if t]


def _schema() -> pa.Schema:
    kinds = {"str": pa.string(), "int": pa.int64(), "timestamp": pa.string()}
    return pa.schema([pa.field(name, kinds[kind]) for name, kind in RAW_FIELDS.items()])


def _fits(record, schema: pa.Schema) -> bool:
    """Whether one JSON value is a raw record: an object whose known fields have the raw types."""
    if not isinstance(record, dict):
        return False
    for column in schema:
        value = record.get(column.name)
        if value is None:
            continue
        if pa.types.is_integer(column.type) and (not isinstance(value, int) or isinstance(value, bool)):
            return False
        if pa.types.is_string(column.type) and not isinstance(value, str):
            return False
    return True


def read_raw(body: bytes, key: str) -> tuple[pa.Table, list[str]]:
    """A raw object's records as an Arrow table (parsed in C++), and the lines that are not raw
    records. Only an object with such lines is read again line by line, to keep the rest."""
    schema = _schema()
    data = gzip.decompress(body)
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pajson.read_json(pa.BufferReader(data), parse_options=options), []
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    good, corrupt = [], []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        (good if _fits(record, schema) else corrupt).append(record if _fits(record, schema) else line)
    table = pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in good], schema=schema)
    log.warning("raw object %s: %d line(s) are not raw records (quarantined)", key, len(corrupt))
    return table, corrupt


def _plain(value):
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def enrich_group(settings: Settings, run_id: str, group: Group, s3=None) -> GroupResult:
    """Read, enrich and stage one group (in a Spark task, or in this process)."""
    from pipeline.aws import client

    if not CUSTOMER_ID.fullmatch(group.customer) or not DAY.fullmatch(group.day):
        raise ValueError(f"not a group of the collector: customer={group.customer!r} dt={group.day!r}")
    s3 = s3 or client(settings, "s3")
    result = GroupResult(group.customer, group.day, raw_objects=len(group.keys))

    def get(key: str):
        response = s3.get_object(Bucket=settings.raw_bucket, Key=key)
        return key, response["Body"].read(), response.get("Metadata", {})

    tables, quarantine = [], []
    with ThreadPoolExecutor(min(FETCH_THREADS, max(1, len(group.keys)))) as pool:
        for key, body, metadata in pool.map(get, group.keys):
            result.raw_records += int(metadata.get("records", 0))
            table, corrupt = read_raw(body, unquote(key))
            tables.append(table)
            quarantine += [{"reason": "not valid JSON for the raw schema", "line": line[:10_000]} for line in corrupt]
    raw = pa.concat_tables(tables) if tables else _schema().empty_table()
    result.rows_read = raw.num_rows
    frame = enrich_frame(raw.to_pandas())
    rescued = frame[frame[RESCUE].notna()]
    good = frame[frame[RESCUE].isna()]
    quarantine += [
        {"reason": reason, "record": {k: _plain(v) for k, v in zip(RAW_FIELDS, values, strict=True)}}
        for reason, values in zip(rescued[RESCUE], rescued[list(RAW_FIELDS)].itertuples(index=False), strict=True)
    ]
    result.enriched_rows = len(good)
    result.rescued_rows = len(quarantine)
    result.null_event_ids = int(good["event_id"].isna().sum())
    result.with_asn = int(good["asn"].notna().sum())
    result.categories = dict(Counter(good["sender_category"]))
    if len(good):
        prefix = group.staging_prefix(run_id)
        for name, body in parquet_objects(pa.Table.from_pandas(good.drop(columns=[RESCUE]), preserve_index=False)):
            s3.put_object(Bucket=settings.enriched_bucket, Key=prefix + name, Body=body)
            result.staged.append(name)
    if quarantine:
        body = gzip.compress("".join(json.dumps(e, default=str) + "\n" for e in quarantine).encode(), mtime=0)
        s3.put_object(
            Bucket=settings.enriched_bucket,
            Key=f"{QUARANTINE_PREFIX}customer={group.customer}/dt={group.day}/rescued-{MODEL_VERSION}.jsonl.gz",
            Body=body,
        )
    return result
