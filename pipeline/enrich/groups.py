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
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from pipeline import config
from pipeline.collector.catalog import RAW_KEY
from pipeline.collector.normalize import CUSTOMER_ID
from pipeline.compression import GZIP_MAGIC, gunzip_chunks
from pipeline.enrich.ledger import BATCH_ID, Batch, RawVersion
from pipeline.enrich.model import MODEL_VERSION
from pipeline.enrich.publish import parquet_objects
from pipeline.enrich.transform import RESCUE, enrich_frame
from pipeline.settings import Settings
from pipeline.telemetry import RAW_FIELDS

log = logging.getLogger(__name__)
QUARANTINE_PREFIX = "quarantine/"
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
FETCH_THREADS = 8  # a task's concurrent S3 reads: many small raw objects are round trips
NOT_RAW = "not valid JSON for the raw schema"


@dataclass(frozen=True)
class Group:
    """The raw objects of one customer and day in one batch: what a task reads and checks
    together (the key's tenant and day). The groups of one batch are enriched in one pass and
    staged as the batch's objects; a group with no batch is staged alone (per customer)."""

    customer: str
    day: str
    keys: tuple[str, ...]
    size: int = 0  # bytes, to balance tasks
    batch: str = ""

    @property
    def unit(self) -> str:
        """What is staged together: the batch, or the (customer, day) of a group with none."""
        return self.batch or f"customer={self.customer}/dt={self.day}"

    def staging_prefix(self, run_id: str) -> str:
        if self.batch:
            return f"staging/{run_id}/dt={self.day}/batch={self.batch}/"
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
    quarantined_objects: int = 0  # raw objects refused whole (not gzip, over the bound)
    quarantined_records: int = 0  # what the collector said those objects held (object metadata)
    foreign_rows: int = 0  # rows naming another tenant, or another day, than their object key
    null_event_ids: int = 0
    with_asn: int = 0
    gone_objects: int = 0  # raw objects deleted since they were planned
    categories: dict[str, int] = field(default_factory=dict)
    staged: list[str] = field(default_factory=list)  # object names of the group's unit, e.g. part-00000.parquet
    batch: str = ""


def task_settings(settings: Settings) -> Settings:
    """What a task needs to reach S3: no database URLs travel to the executors."""
    return replace(settings, database_url=None, dagster_database_url=None, extra={})


def list_raw(s3, settings: Settings, days: list[str], customers: list[str] | None = None) -> list[RawVersion]:
    """The raw objects of the run's days: one listing per customer and day (per customer when
    the run spans more than a month).

    ``customers``: only theirs (a run caused by new reports of a few customers reads nothing of
    the others, nor lists them); None: every customer the raw prefix holds. Folders that are not
    customer ids the collector writes are skipped with a warning (a key never becomes a path or
    a prefix of ours unvalidated).
    """
    wanted = set(days)
    paginator = s3.get_paginator("list_objects_v2")
    if customers is not None:
        bad = [c for c in customers if not CUSTOMER_ID.fullmatch(c)]
        if bad:
            raise ValueError(f"not customer ids the collector writes: {bad[:5]}")
        customers = sorted(set(customers))
    else:
        customers = []
        for page in paginator.paginate(
            Bucket=settings.raw_bucket, Prefix=settings.raw_prefix + "customer=", Delimiter="/"
        ):
            for prefix in page.get("CommonPrefixes", []):
                customer = prefix["Prefix"][len(settings.raw_prefix) + len("customer=") : -1]
                if CUSTOMER_ID.fullmatch(customer):
                    customers.append(customer)
                else:
                    log.warning(
                        "skipped raw prefix customer=%r: not a customer id the collector writes; move or delete it",
                        customer,
                    )

    def versions_of(customer: str) -> list[RawVersion]:
        found = []
        base = f"{settings.raw_prefix}customer={customer}/"
        # Day prefixes are listed, not the customer's whole history, when the run is a few days.
        prefixes = [f"{base}dt={day}/" for day in sorted(wanted)] if len(wanted) <= 31 else [base]
        for prefix in prefixes:
            for page in paginator.paginate(Bucket=settings.raw_bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    match = RAW_KEY.search(obj["Key"])
                    if match and match["customer"] == customer and match["day"] in wanted:
                        found.append(
                            RawVersion(
                                obj["Key"],
                                obj["ETag"].strip('"'),
                                obj["Size"],
                                customer,
                                match["day"],
                                obj["LastModified"],
                            )
                        )
        return found

    with ThreadPoolExecutor(8) as pool:
        return sorted((v for found in pool.map(versions_of, customers) for v in found), key=lambda v: v.key)


def batch_groups(batches: list[Batch]) -> list[Group]:
    """The groups of each batch, batch by batch (one per customer of it)."""
    out = []
    for batch in batches:
        per_customer: dict[str, list[RawVersion]] = {}
        for version in batch.inputs:
            per_customer.setdefault(version.customer, []).append(version)
        for customer, found in sorted(per_customer.items()):
            keys = tuple(sorted(v.key for v in found))
            out.append(Group(customer, batch.day, keys, sum(v.size for v in found), batch.batch_id))
    return out


def _units(groups: list[Group]) -> list[list[Group]]:
    units: dict[str, list[Group]] = {}
    for group in groups:
        units.setdefault(group.unit, []).append(group)
    return list(units.values())


def balance(groups: list[Group], slices: int) -> list[list[Group]]:
    """Groups dealt to ``slices`` tasks, a batch's groups together, largest first to the lightest
    task (LPT)."""
    units = _units(groups)
    tasks: list[list[Group]] = [[] for _ in range(max(1, min(slices, len(units))))]
    loads = [0] * len(tasks)
    for unit in sorted(units, key=lambda u: (-sum(g.size for g in u), u[0].unit)):
        lightest = loads.index(min(loads))
        tasks[lightest] += unit
        loads[lightest] += sum(g.size + 1 for g in unit)
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


class RawObjectRefused(ValueError):
    """A raw object that is not gzip NDJSON within the bound: quarantined whole, with the reason."""


def gunzip_bounded(body: bytes, limit: int, key: str) -> bytes:
    """A gzip body (one member or several) decompressed to at most ``limit`` bytes: a raw object
    is written by a collector, and a collector's host is not this pipeline's to trust."""
    if body and body[:2] != GZIP_MAGIC:
        raise RawObjectRefused(f"raw object {key} is not gzip: quarantined whole")
    out, size = [], 0
    try:
        for chunk in gunzip_chunks(body):
            size += len(chunk)
            if size > limit:
                raise RawObjectRefused(
                    f"raw object {key} expands past {limit} bytes (PIPELINE_RAW_MAX_BYTES): quarantined whole"
                )
            out.append(chunk)
    except zlib.error as exc:
        raise RawObjectRefused(f"raw object {key} is not gzip ({exc}): quarantined whole") from None
    except EOFError:
        raise RawObjectRefused(f"raw object {key} is a truncated gzip stream: quarantined whole") from None
    return b"".join(out)


def read_raw(body: bytes, key: str, limit: int | None = None) -> tuple[pa.Table, list[str]]:
    """A raw object's records as an Arrow table (parsed in C++), and the lines that are not raw
    records. Only an object with such lines is read again line by line, to keep the rest.
    ``RawObjectRefused`` when the body is no gzip within ``limit`` bytes."""
    schema = _schema()
    data = gunzip_bounded(body, limit or config.get("PIPELINE_RAW_MAX_BYTES"), key)
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    reading = pajson.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1))  # tasks are the parallelism
    try:
        return pajson.read_json(pa.BufferReader(data), read_options=reading, parse_options=options), []
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


CHUNK_BYTES = 16 * 1024 * 1024  # raw (gzip) bytes a task enriches in one pass: bounds its memory
CHUNK_GROUPS = 400


def chunks(groups: list[Group]) -> list[list[Group]]:
    """A task's groups in passes of at most CHUNK_BYTES of raw objects (or CHUNK_GROUPS groups);
    a batch is never cut (its objects are written from one pass)."""
    out: list[list[Group]] = [[]]
    size = 0
    for unit in _units(groups):
        unit_size = sum(g.size for g in unit)
        if out[-1] and (size + unit_size > CHUNK_BYTES or len(out[-1]) + len(unit) > CHUNK_GROUPS):
            out.append([])
            size = 0
        out[-1] += unit
        size += unit_size
    return [c for c in out if c]


def _check(group: Group) -> None:
    bad_batch = group.batch and not BATCH_ID.fullmatch(group.batch)
    if not CUSTOMER_ID.fullmatch(group.customer) or not DAY.fullmatch(group.day) or bad_batch:
        raise ValueError(f"not a group of the collector: customer={group.customer!r} dt={group.day!r}")


def enrich_groups(
    settings: Settings, run_id: str, groups: list[Group], s3=None, model_version: str | None = None
) -> list[GroupResult]:
    """Read, enrich and stage a task's groups (in a Spark task, or in this process).

    The groups of a pass are read together (concurrent GETs), enriched in one column-wise call,
    and only then split per group for their Parquet objects and quarantine: the per-call costs
    of the transform are paid once per pass, not once per (customer, day).
    """
    from pipeline.aws import client

    for group in groups:
        _check(group)
    s3 = s3 or client(settings, "s3")
    results = []
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for chunk in chunks(groups):
            results += _enrich_chunk(settings, run_id, chunk, s3, pool, model_version or MODEL_VERSION)
    return results


def enrich_group(settings: Settings, run_id: str, group: Group, s3=None) -> GroupResult:
    """One group alone (see ``enrich_groups``)."""
    return enrich_groups(settings, run_id, [group], s3)[0]


def _foreign_rows(frame: pd.DataFrame, groups: list[Group], owners: np.ndarray) -> np.ndarray:
    """Rows whose customer or day is not the one their raw object's key names, rescued with the
    reason (in place); returns their mask. The key is what the collector's credentials were
    scoped to (raw/customer=<id>/), so it is the tenant: a record's own ``customer_id`` is a
    claim by whoever wrote the object, and a row of tenant b in a's object never becomes b's."""
    if not len(frame):
        return np.zeros(0, dtype=bool)
    tenants = np.array([g.customer for g in groups], dtype=object)[owners]
    days = np.array([g.day for g in groups], dtype=object)[owners]
    untouched = frame[RESCUE].isna().to_numpy()
    other_tenant = untouched & (frame["customer_id"].astype(object).to_numpy() != tenants)
    begins = pd.to_datetime(frame["report_begin"], utc=True).dt.floor("D").to_numpy()
    expected = pd.to_datetime(pd.Series(days), utc=True).to_numpy()
    other_day = untouched & ~other_tenant & (begins != expected)
    for row in np.flatnonzero(other_tenant):
        frame.iat[row, frame.columns.get_loc(RESCUE)] = (
            f"customer_id {frame['customer_id'].iat[row]!r} is not the tenant its object key names "
            f"(customer={tenants[row]}): a collector writes only its own customer's reports; quarantined"
        )
    for row in np.flatnonzero(other_day):
        frame.iat[row, frame.columns.get_loc(RESCUE)] = (
            f"report_begin {frame['report_begin'].iat[row]} is not on the day its object key names "
            f"(dt={days[row]}); quarantined"
        )
    return other_tenant | other_day


def _enrich_chunk(
    settings: Settings, run_id: str, groups: list[Group], s3, pool, model_version: str
) -> list[GroupResult]:
    from botocore.exceptions import ClientError

    results = [GroupResult(g.customer, g.day, raw_objects=len(g.keys), batch=g.batch) for g in groups]
    quarantine: list[list[dict]] = [[] for _ in groups]

    def get(job: tuple[int, str]):
        index, key = job
        try:
            response = s3.get_object(Bucket=settings.raw_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return index, key, None, {}  # deleted since its batch was planned: nothing to enrich
            raise
        return index, key, response["Body"].read(), response.get("Metadata", {})

    tables, owner = [], []
    jobs = [(index, key) for index, group in enumerate(groups) for key in group.keys]
    for index, key, body, metadata in pool.map(get, jobs):
        if body is None:
            log.warning("raw object %s is gone since its batch was planned: it has no rows now", unquote(key))
            results[index].raw_objects -= 1
            results[index].gone_objects += 1
            continue
        records = int(metadata.get("records", 0)) if str(metadata.get("records", "0")).isdigit() else 0
        results[index].raw_records += records
        try:
            table, corrupt = read_raw(body, unquote(key))
        except RawObjectRefused as exc:
            log.warning("%s", exc)
            results[index].quarantined_objects += 1
            results[index].quarantined_records += records
            quarantine[index].append({"reason": str(exc), "object": unquote(key)})
            continue
        tables.append(table)
        owner.append(np.full(table.num_rows, index, dtype=np.int32))
        results[index].rows_read += table.num_rows
        quarantine[index] += [
            {"reason": "not valid JSON for the raw schema", "line": line[:10_000]} for line in corrupt
        ]
    raw = pa.concat_tables(tables) if tables else _schema().empty_table()
    owners = np.concatenate(owner) if owner else np.zeros(0, dtype=np.int32)
    frame = enrich_frame(raw.to_pandas(), model_version=model_version)
    foreign = _foreign_rows(frame, groups, owners)
    rescued = frame[RESCUE].notna().to_numpy()
    for row, reason, values in zip(
        np.flatnonzero(rescued),
        frame.loc[rescued, RESCUE],
        frame.loc[rescued, list(RAW_FIELDS)].itertuples(index=False),
        strict=True,
    ):
        quarantine[owners[row]].append(
            {"reason": reason, "record": {k: _plain(v) for k, v in zip(RAW_FIELDS, values, strict=True)}}
        )
    for index in owners[foreign]:
        results[index].foreign_rows += 1
    good_rows = ~rescued
    good = pa.Table.from_pandas(frame.loc[good_rows].drop(columns=[RESCUE]), preserve_index=False)
    good_owner = owners[good_rows]
    order = np.argsort(good_owner, kind="stable")
    good, good_owner = good.take(pa.array(order)), good_owner[order]
    bounds = np.searchsorted(good_owner, np.arange(len(groups) + 1))
    asn, event_ids = good.column("asn"), good.column("event_id")
    categories = good.column("sender_category")
    puts = []
    units: dict[str, list[int]] = {}
    for index, (group, result) in enumerate(zip(groups, results, strict=True)):
        units.setdefault(group.unit, []).append(index)
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        result.enriched_rows = hi - lo
        result.rescued_rows = len(quarantine[index]) - result.quarantined_objects
        if hi > lo:
            result.null_event_ids = event_ids.slice(lo, hi - lo).null_count
            result.with_asn = (hi - lo) - asn.slice(lo, hi - lo).null_count
            counted = pc.value_counts(categories.slice(lo, hi - lo)).to_pylist()
            result.categories = {c["values"]: c["counts"] for c in counted}
        if quarantine[index]:
            body = gzip.compress(
                "".join(json.dumps(e, default=str) + "\n" for e in quarantine[index]).encode(), mtime=0
            )
            name = f"batch={group.batch}" if group.batch else "rescued"
            key = f"{QUARANTINE_PREFIX}customer={group.customer}/dt={group.day}/{name}-{model_version}.jsonl.gz"
            puts.append((key, body))
    for members in units.values():  # a batch's rows of every customer in its objects, sorted by event_id
        pieces = [good.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in members]
        rows = pa.concat_tables(pieces) if pieces else good.slice(0, 0)
        if not rows.num_rows:
            continue
        prefix = groups[members[0]].staging_prefix(run_id)
        for name, body in parquet_objects(rows):
            puts.append((prefix + name, body))
            for i in members:
                results[i].staged.append(name)
    list(pool.map(lambda kb: s3.put_object(Bucket=settings.enriched_bucket, Key=kb[0], Body=kb[1]), puts))
    return results
