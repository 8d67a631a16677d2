"""The Spark enrichment job: raw telemetry of some days -> enriched Parquet, published to S3.

One Spark session per run, whatever the number of days. The driver lists the run's raw objects
(one listing per customer), deals the (customer, day) groups to tasks, and collects only their
counts: **executors do the work**. Each task reads its raw objects from S3 itself (boto3 inside
the task; nothing is staged on the driver, which a cluster could not read), enriches them
column-wise, and writes its groups' Parquet objects under ``staging/<run>/``
(``pipeline.enrich.groups``). Once every task is done, the driver publishes from one listing of
the run's staging prefix: each object is copied to its final key unless the bytes are already
there, and final keys of the run's days that the new output no longer has are removed. The
driver's memory does not grow with the input.

On a cluster (``PIPELINE_SPARK_MASTER``), executors need this package and its dependencies
(the project's image, or ``PIPELINE_SPARK_SHIP_CODE=1`` to ship the package itself), and S3
credentials of their own (an instance role); README "Enrichment on a cluster".
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import config
from pipeline.enrich.groups import (
    Group,
    GroupResult,
    balance,
    batch_groups,
    enrich_groups,
    list_raw,
    task_settings,
)
from pipeline.enrich.java import java_problem, require_java
from pipeline.enrich.publish import publish_batches
from pipeline.settings import Settings

log = logging.getLogger(__name__)
TASKS_PER_CORE = 3  # groups are dealt to a few tasks per core: balanced, without a task per group


def spark_conf(master: str | None = None) -> dict[str, str]:
    # Python workers must run this interpreter (this venv's pandas/pyarrow), not the system one;
    # Spark reads the variable when it starts its workers, whoever creates the session.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode talks to itself on loopback only
    return {
        "spark.master": master or config.get("PIPELINE_SPARK_MASTER"),
        "spark.app.name": "dmarc-enrichment",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.driver.host": config.get("PIPELINE_SPARK_DRIVER_HOST"),
        "spark.driver.bindAddress": config.get("PIPELINE_SPARK_BIND_ADDRESS"),
        "spark.driver.memory": config.get("PIPELINE_SPARK_DRIVER_MEMORY"),
        "spark.executor.memory": config.get("PIPELINE_SPARK_EXECUTOR_MEMORY"),
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


@dataclass
class DayResult:
    day: str
    raw_objects: int = 0  # raw objects this run read (of new and due batches)
    raw_records: int = 0  # what the collector says it wrote (object metadata)
    rows_read: int = 0
    enriched_rows: int = 0
    rescued_rows: int = 0
    quarantined_objects: int = 0
    quarantined_records: int = 0
    foreign_rows: int = 0
    null_event_ids: int = 0
    ip_coverage: float = 1.0
    listed_objects: int = 0  # raw objects of the run's scope on this day
    skipped_objects: int = 0  # of them, enriched already under the current versions: not read
    gone_objects: int = 0  # planned, but deleted from the raw bucket before this run read them
    model_version: str = ""  # what this run enriched with
    reference_data: str = ""
    new_batches: int = 0
    reenriched_batches: int = 0
    batches: list[str] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)

    @property
    def rows_match(self) -> bool:
        return self.enriched_rows + self.rescued_rows + self.quarantined_records == self.raw_records


def enrichment_versions() -> tuple[str, str]:
    """What a batch enriched now is enriched with: (model, reference data)."""
    from pipeline.enrich.model import MODEL_VERSION
    from pipeline.enrich.reference import reference_version

    return MODEL_VERSION, reference_version()


def _ship_code(spark) -> None:
    """Send this package to the executors (for clusters whose Python has only its dependencies)."""
    package = Path(__file__).resolve().parents[1]
    archive = Path(tempfile.mkdtemp(prefix="pipeline-code-")) / "pipeline.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in package.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(package.parent))
    spark.sparkContext.addPyFile(str(archive))


def enrich_days(
    spark,
    settings: Settings,
    s3,
    days: list[str],
    run_id: str,
    customers: list[str] | None = None,
    reprocess: bool = False,
    local_bytes: int | None = None,
) -> list[DayResult]:
    """Enrich what is new (or due) on ``days`` on the Spark session's executors, then publish;
    one result per day. ``customers``: only theirs (the raw sensor's runs name the customers
    with new reports); ``reprocess``: every batch of the days again.

    ``spark``: a SparkSession, or a callable that makes one, called only when the run's raw
    objects reach ``local_bytes`` (default ``PIPELINE_ENRICH_LOCAL_BYTES``): a few new reports
    are enriched in this process, by the same task code, in less time than a session takes to
    start. On a machine without Java (and a local master) every run is enriched so, with a
    warning that names the package to install for Spark."""
    limit = config.get("PIPELINE_ENRICH_LOCAL_BYTES") if local_bytes is None else local_bytes

    def execute(groups: list[Group], model_version: str) -> tuple[list[GroupResult], int]:
        size = sum(g.size for g in groups)
        if size < limit:
            log.info(
                "enrichment run=%s: %d raw bytes, under PIPELINE_ENRICH_LOCAL_BYTES=%d: enriched in this process",
                run_id,
                size,
                limit,
            )
            return enrich_groups(task_settings(settings), run_id, groups, s3, model_version), 0
        if callable(spark) and _is_local(config.get("PIPELINE_SPARK_MASTER")) and (problem := java_problem()):
            log.warning(
                "enrichment run=%s: %d raw bytes enriched in this process, not by Spark, which cannot start here: %s",
                run_id,
                size,
                problem,
            )
            return enrich_groups(task_settings(settings), run_id, groups, s3, model_version), 0
        session = spark() if callable(spark) else spark
        if config.get("PIPELINE_SPARK_SHIP_CODE"):
            _ship_code(session)
        context = session.sparkContext
        tasks = balance(groups, context.defaultParallelism * TASKS_PER_CORE)
        shipped = task_settings(settings)
        context.setJobDescription(f"enrich {len(groups)} (customer, day) group(s) of {len(days)} day(s)")
        results = (
            context.parallelize(tasks, len(tasks))
            .flatMap(lambda task: enrich_groups(shipped, run_id, task, model_version=model_version))
            .collect()
        )
        return results, len(tasks)

    return run_enrichment(settings, s3, days, run_id, customers, reprocess, execute)


def _is_local(master: str) -> bool:
    """A Spark master this process would start itself (``local``, ``local[N]``): without Java the
    same tasks run here instead. A cluster's master without Java is a broken image: it fails."""
    return master == "local" or master.startswith("local[")


def enrich_days_in_process(
    settings: Settings,
    s3,
    days: list[str],
    run_id: str,
    customers: list[str] | None = None,
    reprocess: bool = False,
) -> list[DayResult]:
    """The same job without Spark, one group after another (the benchmarks' baseline)."""

    def execute(groups: list[Group], model_version: str) -> tuple[list[GroupResult], int]:
        return enrich_groups(task_settings(settings), run_id, groups, s3, model_version), 1

    return run_enrichment(settings, s3, days, run_id, customers, reprocess, execute)


def run_enrichment(
    settings: Settings,
    s3,
    days: list[str],
    run_id: str,
    customers: list[str] | None,
    reprocess: bool,
    execute,
) -> list[DayResult]:
    """List the scope, plan from the ledger (pipeline.enrich.ledger), enrich the batches with
    ``execute(groups, model_version)``, write their manifests, publish them, mark them published.
    The versions are read once: the label the tasks write is the one the ledger records."""
    import psycopg

    from pipeline.enrich import ledger

    days = sorted(set(days))
    versions = enrichment_versions()
    started = time.perf_counter()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        listed_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # before the listing: see ledger.plan
        listed = list_raw(s3, settings, days, customers)
        plan = ledger.plan(conn, settings.raw_bucket, listed, versions, reprocess, run_id, (days, customers, listed_at))
        planned = time.perf_counter()
        groups = batch_groups(plan.batches)
        results: list[GroupResult] = []
        tasks = 0
        if groups:
            results, tasks = execute(groups, versions[0])
        ran = time.perf_counter()
        rows: dict[str, dict[str, int]] = {b.batch_id: {} for b in plan.batches}
        for result in results:
            if result.enriched_rows:
                rows[result.batch][result.customer] = rows[result.batch].get(result.customer, 0) + result.enriched_rows
        ledger.record_manifest(conn, rows)  # before any object is at its final key
        published = publish_batches(
            s3, settings.enriched_bucket, settings.enriched_prefix, f"staging/{run_id}/", plan.batches
        )
        facts = {
            b.batch_id: {"objects": [], "raw_objects": 0, "raw_records": 0, "enriched_rows": 0} for b in plan.batches
        }
        for result in results:
            fact = facts[result.batch]
            fact["raw_objects"] += result.raw_objects
            fact["raw_records"] += result.raw_records
            fact["enriched_rows"] += result.enriched_rows
        for batch in plan.batches:
            facts[batch.batch_id]["objects"] = sorted(
                k
                for k in published.written.get(batch.day, []) + published.unchanged.get(batch.day, [])
                if k.startswith(batch.prefix(settings.enriched_prefix))
            )
        ledger.mark_published(conn, facts, versions)
    out = summarize(days, plan, listed, results, published, versions)
    log.info(
        "enrichment run=%s days=%d listed=%d skipped=%d batches=%d groups=%d spark_tasks=%d plan_s=%.2f tasks_s=%.2f "
        "publish_s=%.2f",
        run_id,
        len(days),
        len(listed),
        sum(day.skipped_objects for day in out),
        len(plan.batches),
        len(groups),
        tasks,
        planned - started,
        ran - planned,
        time.perf_counter() - ran,
    )
    return out


def summarize(
    days: list[str], plan, listed, results: list[GroupResult], published, versions: tuple[str, str]
) -> list[DayResult]:
    by_day = {day: DayResult(day, model_version=versions[0], reference_data=versions[1]) for day in days}
    categories: dict[str, Counter] = {day: Counter() for day in days}
    with_asn: Counter = Counter()
    for version in listed:
        by_day[version.day].listed_objects += 1
    for batch in plan.batches:
        day = by_day[batch.day]
        day.batches.append(batch.batch_id)
        if batch.new:
            day.new_batches += 1
        else:
            day.reenriched_batches += 1
    read = {v.key for b in plan.batches for v in b.inputs}
    for version in listed:
        if version.key not in read:
            by_day[version.day].skipped_objects += 1
    customers: dict[str, set[str]] = {day: set() for day in days}
    for result in results:
        day = by_day[result.day]
        day.raw_objects += result.raw_objects
        day.raw_records += result.raw_records
        day.rows_read += result.rows_read
        day.enriched_rows += result.enriched_rows
        day.rescued_rows += result.rescued_rows
        day.quarantined_objects += result.quarantined_objects
        day.quarantined_records += result.quarantined_records
        day.foreign_rows += result.foreign_rows
        day.null_event_ids += result.null_event_ids
        day.gone_objects += result.gone_objects
        with_asn[result.day] += result.with_asn
        categories[result.day].update(result.categories)
        if result.enriched_rows:
            customers[result.day].add(result.customer)
    for day in days:
        result = by_day[day]
        result.customers = sorted(customers[day])
        result.categories = dict(categories[day])
        result.ip_coverage = round(with_asn[day] / result.enriched_rows, 4) if result.enriched_rows else 1.0
        result.written, result.unchanged, result.removed = (
            published.written.get(day, []),
            published.unchanged.get(day, []),
            published.removed.get(day, []),
        )
        log.info(
            "enriched day=%s listed=%d skipped=%d batches=%d raw_objects=%d gone=%d raw_records=%d enriched=%d "
            "rescued=%d written=%d unchanged=%d removed=%d",
            day,
            result.listed_objects,
            result.skipped_objects,
            len(result.batches),
            result.raw_objects,
            result.gone_objects,
            result.raw_records,
            result.enriched_rows,
            result.rescued_rows,
            len(result.written),
            len(result.unchanged),
            len(result.removed),
        )
    return [by_day[d] for d in days]
