"""``pipeline bench enrich``: Spark enrichment rows/s on local[2] and its fixed seconds per run,
beside the same job in one process (no Spark) on the same data. (``pipeline bench flood`` sets
enrichment in the whole flow.)

Two Spark runs over the same session (one day, then all days) give the marginal rate and the
fixed cost per run: ``t = fixed + rows / rate``.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path

from pipeline.aws import client
from pipeline.bench import forget_enrichment
from pipeline.bench.importer import drain_queue_silently
from pipeline.collector.collect import collect
from pipeline.collector.generate import generate_reports
from pipeline.collector.spool import Spool
from pipeline.enrich.spark import enrich_days, enrich_days_in_process, spark_session
from pipeline.settings import Settings


def _delete_prefix(s3, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])


def run(settings: Settings, customers: int = 10, reports: int = 40, master: str = "local[2]") -> dict:
    s3 = client(settings, "s3")
    tag = uuid.uuid4().hex[:6]
    start = dt.date(2013, 1, 1)  # a calendar no recent data uses, so the bench touches nothing else
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate_reports(Path(tmp), customers, reports, seed=11, start=start, records_per_report=(20, 60))
        cids = []
        for customer in sorted({r.customer_id for r in generated}):
            cid = f"bench{tag}-{customer[-3:]}"
            cids.append(cid)
            collect([Path(tmp) / customer], cid, settings, Spool(Path(tmp) / "spool"))
    days = sorted({dt.datetime.fromtimestamp(r.begin, dt.UTC).date().isoformat() for r in generated})
    try:
        started = time.perf_counter()
        spark = spark_session(master)
        session_seconds = time.perf_counter() - started
        started = time.perf_counter()
        small = enrich_days(spark, settings, s3, days[:1], f"bench-{tag}-a", local_bytes=0)
        t_small = time.perf_counter() - started
        started = time.perf_counter()
        full = enrich_days(
            spark, settings, s3, days, f"bench-{tag}-b", reprocess=True, local_bytes=0
        )  # the first day again too
        t_full = time.perf_counter() - started
        rows_small = sum(r.enriched_rows for r in small)
        rows_full = sum(r.enriched_rows for r in full)
        rate = (rows_full - rows_small) / max(1e-9, t_full - t_small)
        fixed = max(0.0, t_small - rows_small / rate)

        # The same job in one process: read the raw objects, enrich, stage and publish, no Spark.
        started = time.perf_counter()
        local = enrich_days_in_process(settings, s3, days, f"bench-{tag}-c", reprocess=True)
        t_local = time.perf_counter() - started
        local_rows = sum(r.enriched_rows for r in local)
    finally:
        for cid in cids:
            _delete_prefix(s3, settings.raw_bucket, f"raw/customer={cid}/")
            _delete_prefix(s3, settings.enriched_bucket, f"quarantine/customer={cid}/")
        forget_enrichment(settings, days)
        drain_queue_silently(settings)
    return {
        "master": master,
        "rows": rows_full,
        "days": len(days),
        "spark_session_start_s": round(session_seconds, 2),
        "spark_run_s": round(t_full, 2),
        "spark_rows_per_s": round(rate),
        "spark_fixed_s_per_run": round(fixed, 2),
        "single_process_s": round(t_local, 2),
        "single_process_rows_per_s": round(local_rows / t_local),
        "spark_vs_single_process": round((rows_full / t_full) / (local_rows / t_local), 2),
    }
