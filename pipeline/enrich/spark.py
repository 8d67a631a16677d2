"""The Spark enrichment job: raw telemetry of some days -> enriched Parquet, published to S3.

One Spark session per run, whatever the number of days. Locally, Spark cannot read ``s3a://``
(no hadoop-aws jar here), so raw objects are staged to local disk through boto3 and read from
there; on a real cluster the same job reads the raw prefix directly (``raw_uri`` = ``s3a://…``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.collector.catalog import RAW_KEY, raw_object_stats
from pipeline.collector.normalize import CUSTOMER_ID
from pipeline.enrich import reference
from pipeline.enrich.java import require_java
from pipeline.enrich.model import MODEL_VERSION
from pipeline.enrich.publish import parquet_objects, publish
from pipeline.enrich.transform import RESCUE, enrich_batches
from pipeline.settings import Settings
from pipeline.telemetry import ENRICHED_FIELDS, RAW_FIELDS

log = logging.getLogger(__name__)
CORRUPT = "_corrupt_record"
QUARANTINE_PREFIX = "quarantine/"


def spark_conf(master: str | None = None) -> dict[str, str]:
    # Python workers must run this interpreter (this venv's pandas/pyarrow), not the system one;
    # Spark reads the variable when it starts its workers, whoever creates the session.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode talks to itself on loopback only
    return {
        "spark.master": master or os.environ.get("PIPELINE_SPARK_MASTER", "local[*]"),
        "spark.app.name": "dmarc-enrichment",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.driver.host": os.environ.get("PIPELINE_SPARK_DRIVER_HOST", "127.0.0.1"),
        "spark.driver.bindAddress": os.environ.get("PIPELINE_SPARK_BIND_ADDRESS", "127.0.0.1"),
        "spark.driver.memory": os.environ.get("PIPELINE_SPARK_DRIVER_MEMORY", "2g"),
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.extraJavaOptions": "-Dlog4j2.level=WARN",
        # Python workers must run this interpreter (this venv's pandas/pyarrow), not the system one.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }


def spark_session(master: str | None = None):
    require_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in spark_conf(master).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def _spark_type(kind: str):
    from pyspark.sql import types as T

    return {
        "str": T.StringType(),
        "int": T.LongType(),
        "float": T.DoubleType(),
        "bool": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }[kind]


def raw_schema():
    from pyspark.sql import types as T

    # Timestamps stay strings here: the pandas step parses them and rescues what does not parse.
    fields = [T.StructField(n, T.StringType() if k == "timestamp" else _spark_type(k)) for n, k in RAW_FIELDS.items()]
    return T.StructType([*fields, T.StructField(CORRUPT, T.StringType())])


def output_schema():
    from pyspark.sql import types as T

    return T.StructType(
        [T.StructField(n, _spark_type(k)) for n, k in ENRICHED_FIELDS.items()] + [T.StructField(RESCUE, T.StringType())]
    )


@dataclass
class DayResult:
    day: str
    raw_objects: int = 0
    raw_records: int = 0  # what the collector says it wrote (object metadata)
    rows_read: int = 0
    enriched_rows: int = 0
    rescued_rows: int = 0
    null_event_ids: int = 0
    ip_coverage: float = 1.0
    customers: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)

    @property
    def rows_match(self) -> bool:
        return self.enriched_rows + self.rescued_rows == self.raw_records


def _customers(s3, bucket: str, prefix: str) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "customer=", Delimiter="/"):
        out.extend(p["Prefix"][len(prefix) + len("customer=") : -1] for p in page.get("CommonPrefixes", []))
    return out


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def staged_path(folder: Path, customer: str, day: str, key: str) -> Path:
    """Where a raw object is staged. The key never becomes a path: a hash names the file, and the
    customer / day folders come from validated values; the result is checked to stay inside."""
    if not CUSTOMER_ID.fullmatch(customer) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"not a raw object of the collector: customer={customer!r} dt={day!r} ({key!r})")
    name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".jsonl.gz"
    target = folder / f"customer={customer}" / f"dt={day}" / name
    if not target.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"staging path for {key!r} leaves {folder}")
    return target


def stage_raw(s3, settings: Settings, days: list[str], folder: Path) -> dict[str, DayResult]:
    """Download the days' raw objects to ``folder``; count what the collector says they hold."""
    results = {day: DayResult(day) for day in days}
    for customer in _customers(s3, settings.raw_bucket, settings.raw_prefix):
        if not CUSTOMER_ID.fullmatch(customer):
            log.warning(
                "skipped raw prefix customer=%r: not a customer id the collector writes; move or delete it", customer
            )
            continue
        for day in days:
            for key in _keys(s3, settings.raw_bucket, f"{settings.raw_prefix}customer={customer}/dt={day}/"):
                if not RAW_KEY.search(key):
                    continue
                target = staged_path(folder, customer, day, key)
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(settings.raw_bucket, key, str(target))
                results[day].raw_objects += 1
                results[day].raw_records += raw_object_stats(s3, settings.raw_bucket, key).records
    return results


def enrich_days(spark, settings: Settings, s3, days: list[str], run_id: str) -> list[DayResult]:
    from pyspark.sql import functions as F

    days = sorted(set(days))
    with tempfile.TemporaryDirectory(prefix="enrich-") as tmp:
        folder = Path(tmp)
        results = stage_raw(s3, settings, days, folder)
        files = sorted(str(p) for p in folder.rglob("*.jsonl.gz"))
        table, rescued_corrupt = _empty_output(), []
        if files:
            frame = (
                spark.read.schema(raw_schema())
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT)
                .json(files)
                .withColumn("_file", F.input_file_name())
                .cache()
            )
            corrupt = frame.filter(F.col(CORRUPT).isNotNull()).select(CORRUPT, "_file").collect()
            rescued_corrupt = [(r["_file"], r[CORRUPT]) for r in corrupt]
            good = frame.filter(F.col(CORRUPT).isNull()).drop(CORRUPT, "_file")
            ip_path = str(reference.ip_database_path())
            services = spark.sparkContext.broadcast(reference.service_map())
            enriched = good.mapInPandas(lambda it: enrich_batches(it, ip_path, services.value), schema=output_schema())
            table = enriched.toArrow()
            frame.unpersist()
    return _publish_days(settings, s3, days, results, table, rescued_corrupt, run_id)


def _empty_output() -> pa.Table:
    from pipeline.telemetry import arrow_schema

    return arrow_schema({**ENRICHED_FIELDS}).append(pa.field(RESCUE, pa.string())).empty_table()


def _publish_days(settings, s3, days, results, table: pa.Table, corrupt, run_id: str) -> list[DayResult]:
    frame = table.to_pandas(types_mapper=None) if table.num_rows else table.to_pandas()
    rescued = frame[frame[RESCUE].notna()]
    good = frame[frame[RESCUE].isna()]
    quarantine: dict[tuple[str, str], list[dict]] = {}
    for _, row in rescued.iterrows():
        day = str(row["day"]) if row["day"] is not None and str(row["day"]) != "NaT" else _day_of(row)
        quarantine.setdefault((row["customer_id"] or "unknown", day), []).append(
            {"reason": row[RESCUE], "record": {k: _plain(row[k]) for k in RAW_FIELDS}}
        )
    for path, line in corrupt:
        match = RAW_KEY.search(path.replace("file://", "").replace("file:", ""))
        customer, day = (match["customer"], match["day"]) if match else ("unknown", "unknown")
        quarantine.setdefault((customer, day), []).append(
            {"reason": "not valid JSON for the raw schema", "line": line[:10_000]}
        )
    for day in days:
        result = results[day]
        day_rows = good[good["day"].astype(str) == day] if len(good) else good
        result.rows_read = int((frame["day"].astype(str) == day).sum()) if len(frame) else 0
        result.enriched_rows = len(day_rows)
        result.null_event_ids = int(day_rows["event_id"].isna().sum()) if len(day_rows) else 0
        result.ip_coverage = round(float(day_rows["asn"].notna().mean()), 4) if len(day_rows) else 1.0
        result.categories = dict(Counter(day_rows["sender_category"])) if len(day_rows) else {}
        customers = set(day_rows["customer_id"]) if len(day_rows) else set()
        existing = {
            c
            for c in _customers(s3, settings.enriched_bucket, settings.enriched_prefix)
            if _keys(s3, settings.enriched_bucket, f"{settings.enriched_prefix}customer={c}/dt={day}/")
        }
        result.customers = sorted(customers)
        for customer in sorted(customers | existing):
            rows = day_rows[day_rows["customer_id"] == customer] if len(day_rows) else day_rows
            outputs = parquet_objects(pa.Table.from_pandas(rows, preserve_index=False)) if len(rows) else []
            published = publish(
                s3,
                settings.enriched_bucket,
                f"{settings.enriched_prefix}customer={customer}/dt={day}/",
                outputs,
                f"staging/{run_id}/customer={customer}/dt={day}/",
            )
            result.written += published.written
            result.unchanged += published.unchanged
            result.removed += published.removed
        for (customer, qday), entries in quarantine.items():
            if qday != day:
                continue
            result.rescued_rows += len(entries)
            body = gzip.compress("".join(json.dumps(e, default=str) + "\n" for e in entries).encode(), mtime=0)
            s3.put_object(
                Bucket=settings.enriched_bucket,
                Key=f"{QUARANTINE_PREFIX}customer={customer}/dt={day}/rescued-{MODEL_VERSION}.jsonl.gz",
                Body=body,
            )
        log.info(
            "enriched day=%s raw_objects=%d raw_records=%d enriched=%d rescued=%d written=%d unchanged=%d removed=%d",
            day,
            result.raw_objects,
            result.raw_records,
            result.enriched_rows,
            result.rescued_rows,
            len(result.written),
            len(result.unchanged),
            len(result.removed),
        )
    return [results[d] for d in days]


def _day_of(row) -> str:
    begin = str(row.get("report_begin") or "")
    return begin[:10] if len(begin) >= 10 else "unknown"


def _plain(value):
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value if isinstance(value, (str, int, float, bool)) else str(value)
