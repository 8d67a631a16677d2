"""``pipeline bench flood``: the whole flow under a flood, stage by stage, so that a faster stage
that moved the bottleneck elsewhere shows.

* **W5** (4,000 reports, 10 customers, 100 days): collect -> one Spark run -> the import sensor
  and its runs -> projections, each stage timed; ``max_stage_vs_import`` = slowest stage / import;
  ``w5_collect_vs_import`` = the collector's records/s over the import's rows/s.
* **W6** (one customer, 20 gzip reports of 50,000 records, 1M records): Spark enrichment rows/s
  against the importer's rows/s on the same rows (``enrich_vs_import``), against the same
  transform in one process (``spark_vs_one_process``); the driver's peak RSS in W5 and W6
  (``driver_rss_ratio``: the driver must not hold the data); ``w6_collect_vs_import``; and
  ``reader_vs_parsedmarc``: the collector's streaming reader's records/s over parsedmarc's, two
  of W6's reports, one process; ``collector_rss_growth``: the collector's peak RSS on a report of
  1,000,000 records over one of 10,000.
* **W7** (enriched objects of 100,000 and 1,000,000 rows, same row-group size, written straight
  to the enriched prefix): the importer's peak RSS increase loading each, one stream, each in a
  fresh process (``importer_rss_growth``: memory flat in the object's size).

Everything runs on the local stack with its own customers (a calendar no real data uses), a
scratch warehouse and a scratch Dagster instance; the bench's objects are deleted afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import psutil
from tqdm import tqdm

from pipeline import config
from pipeline.aws import client
from pipeline.bench import forget_enrichment, verdicts
from pipeline.settings import Settings

log = logging.getLogger("pipeline.bench")

TARGETS = {
    "max_stage_vs_import": ("<=", 2.0),
    "w5_collect_vs_import": (">=", 0.8),
    "w6_collect_vs_import": (">=", 0.5),
    "reader_vs_parsedmarc": (">=", 10.0),
    "collector_rss_growth": ("<=", 1.5),
    "enrich_vs_import": (">=", 0.5),
    "spark_vs_one_process": (">=", 1.0),
    "driver_rss_ratio": ("<=", 1.5),
    "importer_rss_growth": ("<=", 1.5),
}


class PeakRss:
    """The peak resident memory of a process while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int | None = None):
        self.process = psutil.Process(pid or os.getpid())
        self.peak = self.start = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


@contextmanager
def stage(timings: dict, name: str, say):
    say(f"{name} ...")
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 2)
    say(f"{name}: {timings[name]} s")


def _delete_prefixes(settings: Settings, prefixes: list[tuple[str, str]]) -> None:
    s3 = client(settings, "s3")
    keys = []
    for bucket, prefix in prefixes:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [(bucket, o["Key"]) for o in page.get("Contents", [])]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda bk: s3.delete_object(Bucket=bk[0], Key=bk[1]), keys))


def _collect_all(settings: Settings, folder: Path, customers: dict[str, str]) -> dict:
    from pipeline.collector.collect import collect
    from pipeline.collector.spool import Spool

    totals = {"reports": 0, "records": 0}
    for generated, customer in customers.items():
        summary = collect([folder / generated], customer, settings, Spool(folder / f"spool-{customer}"))
        if summary.rejected or summary.pending_in_spool:
            raise RuntimeError(f"collect of {customer} left {summary.rejected} {summary.pending_in_spool}")
        totals["reports"] += summary.reports
        totals["records"] += summary.records
    return totals


def _import_through_dagster(settings: Settings, bench: Settings, expected_objects: int) -> dict:
    """The import sensor and its runs, in this process, on a scratch warehouse and instance,
    until every enriched object of the flood is loaded."""
    import psycopg

    from pipeline.bench.importer import _database, scratch_dagster_instance
    from pipeline.local.inprocess import drain_import_queue

    runs = 0
    # The runs do not refresh the projections as they end: the bench times that as its own stage
    # (``project``), so that the import's rows/s is the import's.
    no_refresh = mock.patch.dict(os.environ, {"PIPELINE_IMPORT_REFRESH": "0"})
    with no_refresh, _database(bench), scratch_dagster_instance(settings, capture_logs=False) as instance:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            done = drain_import_queue(instance, concurrent_runs=True)
            runs += len(done)
            with psycopg.connect(bench.database_url) as conn:
                loaded, rows = conn.execute(
                    "SELECT count(*), coalesce(sum(rows), 0) FROM live_object_versions"
                ).fetchone()
            if loaded >= expected_objects:
                return {"runs": runs, "objects": loaded, "rows": int(rows)}
            time.sleep(0.5)
    raise RuntimeError(f"the import did not load {expected_objects} objects in an hour")


def _enrich_process(
    settings: Settings, days: list[str], master: str, run_id: str, reprocess: bool = False
) -> tuple[list[dict], float]:
    """The enrichment of ``days`` as its own driver process (as a Dagster run is), the way
    `pipeline enrich` runs it; returns its per-day results and the driver's peak RSS (MiB).
    ``reprocess``: the days again (a baseline over what a run before enriched)."""
    env = {**os.environ, **settings.process_env()}
    args = [sys.executable, "-m", "pipeline", "enrich", "--days", ",".join(days), "--master", master]
    args += ["--reprocess"] if reprocess else []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([*args, "--run-id", run_id, "--json"], env=env, stdout=out, stderr=err)
        with PeakRss(child.pid) as rss:
            code = child.wait()
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"pipeline enrich failed ({code}): {err.read().decode(errors='replace')[-3000:]}")
        return json.loads(out.read())["days"], rss.peak_mb


@contextmanager
def _raw_queue_drained(settings: Settings):
    """While the block runs, take in the raw queue as the raw sensor does in production (receive,
    then delete): the bench runs no raw sensor, and moto's SendMessage slows with every message
    a queue holds, so an undrained raw queue would bill each upload for the queue's depth."""
    if not settings.raw_queue_url:
        yield
        return
    sqs = client(settings, "sqs")
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            got = sqs.receive_message(QueueUrl=settings.raw_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if got:
                sqs.delete_message_batch(
                    QueueUrl=settings.raw_queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
                )

    worker = threading.Thread(target=drain, name="raw-queue", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=30)


def _copy_batch_ledger(settings: Settings, bench: Settings, days: list[str]) -> None:
    """The import stage loads into a scratch warehouse, but the enrichment wrote its batches'
    ledger (and the manifests that name each batch object's tenants, without which the importer
    refuses the object) into the main one: copy the rows of ``days`` across first."""
    import psycopg
    from psycopg import sql

    of_days = sql.SQL("day = ANY(%s::date[])")
    wheres = {
        "enrichment_batches": of_days,
        "enrichment_manifest": sql.SQL("batch_id IN (SELECT batch_id FROM enrichment_batches WHERE {})").format(
            of_days
        ),
    }
    with psycopg.connect(settings.database_url) as source, psycopg.connect(bench.database_url) as target:
        for table, where in wheres.items():
            rows = source.execute(sql.SQL("SELECT * FROM {} WHERE {}").format(sql.Identifier(table), where), (days,))
            columns = [c.name for c in rows.description]
            data = rows.fetchall()
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            with target.cursor() as cur, cur.copy(statement) as copy:
                for row in data:
                    copy.write_row(row)


def _purge_queue(settings: Settings) -> None:
    """Empty the import queue without importing (receive and delete: PurgeQueue allows one call
    a minute, and the bench empties the queue more often than that)."""
    sqs = client(settings, "sqs")
    quiet = 0
    while quiet < 2:
        got = sqs.receive_message(
            QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        ).get("Messages", [])
        if not got:
            quiet += 1
            continue
        quiet = 0
        sqs.delete_message_batch(
            QueueUrl=settings.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )


def w5(settings: Settings, customers: int, reports: int, master: str, progress: bool, say) -> dict:
    from pipeline.bench.importer import scratch_warehouse
    from pipeline.collector.generate import generate_reports
    from pipeline.warehouse.projections import refresh

    tag = uuid.uuid4().hex[:6]
    start = dt.date(2014, 1, 1)
    timings: dict[str, float] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    say(f"W5: generating {customers * reports} reports")
    generated = generate_reports(folder, customers, reports, seed=5, start=start)
    names = {g: f"flood{tag}-{g[-3:]}" for g in sorted({r.customer_id for r in generated})}
    days = sorted({dt.datetime.fromtimestamp(r.begin, dt.UTC).date().isoformat() for r in generated})
    _purge_queue(settings)
    try:
        with stage(timings, "collect", say), _raw_queue_drained(settings):
            collected = _collect_all(settings, folder, names)
        with stage(timings, "enrich", say):
            results, driver_mb = _enrich_process(settings, days, master, f"flood-{tag}")
        objects = sum(len(r["written"]) + len(r["unchanged"]) for r in results)
        with scratch_warehouse(settings) as bench:
            _copy_batch_ledger(settings, bench, days)
            with stage(timings, "import", say):
                imported = _import_through_dagster(settings, bench, objects)
            with stage(timings, "project", say):
                refresh(bench.database_url)
    finally:
        _purge_queue(settings)
        _delete_prefixes(
            settings,
            [(settings.raw_bucket, f"{settings.raw_prefix}customer={c}/") for c in names.values()]
            + [(settings.enriched_bucket, f"{settings.enriched_prefix}customer={c}/") for c in names.values()]
            + [(settings.enriched_bucket, f"quarantine/customer={c}/") for c in names.values()],
        )
        forget_enrichment(settings, days)
        _purge_queue(settings)
    slowest = max(timings, key=timings.get)
    return {
        "w5_reports": collected["reports"],
        "w5_records": collected["records"],
        "w5_days": len(days),
        "w5_objects": objects,
        "w5_import_runs": imported["runs"],
        "stage_seconds": timings,
        "end_to_end_seconds": round(sum(timings.values()), 2),
        "slowest_stage": slowest,
        "max_stage_vs_import": round(timings[slowest] / timings["import"], 2),
        # the collector's records/s over the import's rows/s, same rows, same run
        "w5_collect_vs_import": round(
            (collected["records"] / timings["collect"]) / (imported["rows"] / timings["import"]), 2
        ),
        "w5_driver_peak_rss_mb": driver_mb,
    }


def w6(settings: Settings, reports: int, records: int, master: str, progress: bool, say) -> dict:
    from pipeline.bench.importer import scratch_warehouse
    from pipeline.collector.generate import generate_reports
    from pipeline.warehouse.projections import refresh

    tag = uuid.uuid4().hex[:6]
    customer = f"big{tag}"
    folder = Path(tempfile.mkdtemp(prefix="bench-w6-"))
    start = dt.date(2015, 1, 1)
    say(f"W6: generating {reports} reports of {records} records")
    for n in tqdm(range(reports), desc="generate", disable=not progress):  # one report a day: a group each
        generate_reports(
            folder / f"r{n}", 1, 1, seed=60 + n, start=start + dt.timedelta(n), records_per_report=(records, records)
        )
    days = [(start + dt.timedelta(n)).isoformat() for n in range(reports)]
    timings: dict[str, float] = {}
    _purge_queue(settings)
    try:
        with stage(timings, "w6_collect", say), _raw_queue_drained(settings):
            _collect_parallel(settings, [folder / f"r{n}" / "customer-001" for n in range(reports)], customer)
        with stage(timings, "w6_enrich", say):
            results, driver_mb = _enrich_process(settings, days, master, f"w6-{tag}")
        rows = sum(r["enriched_rows"] for r in results)
        with stage(timings, "w6_one_process", say):
            baseline, _ = _enrich_process(settings, days, "none", f"w6one-{tag}", reprocess=True)
        assert sum(r["enriched_rows"] for r in baseline) == rows
        objects = sum(len(r["written"]) + len(r["unchanged"]) for r in results)
        with scratch_warehouse(settings) as bench:
            _copy_batch_ledger(settings, bench, days)
            with stage(timings, "w6_import", say):
                imported = _import_through_dagster(settings, bench, objects)
            with stage(timings, "w6_project", say):
                refresh(bench.database_url)
        assert imported["rows"] == rows, (imported, rows)
    finally:
        _purge_queue(settings)
        _delete_prefixes(
            settings,
            [
                (settings.raw_bucket, f"{settings.raw_prefix}customer={customer}/"),
                (settings.enriched_bucket, f"{settings.enriched_prefix}customer={customer}/"),
                (settings.enriched_bucket, f"quarantine/customer={customer}/"),
            ],
        )
        forget_enrichment(settings, days)
        _purge_queue(settings)
    enrich_rate = rows / timings["w6_enrich"]
    import_rate = rows / timings["w6_import"]
    reports_written = sorted(p for p in folder.rglob("*") if p.suffix in {".xml", ".gz", ".zip"})
    reader = reader_speed(reports_written[:2], say)
    return {
        **reader,
        "collect_rows_per_s": round(rows / timings["w6_collect"]),
        "w6_collect_vs_import": round((rows / timings["w6_collect"]) / import_rate, 2),
        "w6_records": rows,
        "w6_seconds": timings,
        "enrich_rows_per_s": round(enrich_rate),
        "import_rows_per_s": round(import_rate),
        "enrich_vs_import": round(enrich_rate / import_rate, 2),
        "one_process_rows_per_s": round(rows / timings["w6_one_process"]),
        "spark_vs_one_process": round(timings["w6_one_process"] / timings["w6_enrich"], 2),
        "w6_driver_peak_rss_mb": driver_mb,
    }


def reader_speed(files: list[Path], say) -> dict:
    """``reader_vs_parsedmarc``: records/s of the collector's streaming reader and of parsedmarc
    (each followed by the same normalization, to the raw object's body bytes), the same files, one
    after another in this process, each reader's modules imported first."""
    import warnings

    from pipeline.collector import stream
    from pipeline.collector.normalize import normalize

    def read_stream(data: bytes) -> int:
        report = stream.read(data, "bench", "bench", 1 << 31, False)
        if report.spilled is None:  # a spilled report's body is on disk already
            report.body()
        report.discard()
        return len(report.records)

    def read_parsedmarc(data: bytes) -> int:

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parsedmarc.parse_report_file(data, offline=True, always_use_local_files=True)
        report = normalize(parsed["report"], "bench")
        report.body()
        return len(report.records)

    if not files:
        raise RuntimeError("reader_vs_parsedmarc: no report files to read")
    import parsedmarc

    stream._suffixes()
    rates = {}
    for label, read in (("stream", read_stream), ("parsedmarc", read_parsedmarc)):
        records, started = 0, time.perf_counter()
        for path in files:
            records += read(path.read_bytes())
        rates[label] = records / (time.perf_counter() - started)
        say(f"reader {label}: {rates[label]:.0f} records/s over {len(files)} file(s)")
    return {
        "reader_records_per_s": round(rates["stream"]),
        "parsedmarc_records_per_s": round(rates["parsedmarc"]),
        "reader_vs_parsedmarc": round(rates["stream"] / rates["parsedmarc"], 1),
    }


_RSS_WRAPPER = (
    "import resource, subprocess, sys; "
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
    "sys.stderr.write(r.stderr[-3000:])"
)


def collector_rss(settings: Settings, small: int, large: int, say) -> dict:
    """``collector_rss_growth``: the collector's peak RSS collecting one report of ``large``
    records over one of ``small``, each `pipeline collect` alone in a fresh process."""
    from pipeline.collector.generate import generate_reports

    out: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    customer = f"rss{uuid.uuid4().hex[:6]}"
    env = {**os.environ, **settings.process_env(), "PIPELINE_COLLECT_WORKERS": "1"}
    try:
        for label, records in (("small", small), ("large", large)):
            say(f"collector RSS: generating a report of {records} records")
            [report] = generate_reports(
                folder / label, 1, 1, seed=11, start=dt.date(2015, 6, 1), records_per_report=(records, records)
            )
            command = [sys.executable, "-m", "pipeline", "collect", "--customer", customer, report.path]
            started = time.perf_counter()
            wrapped = [sys.executable, "-c", _RSS_WRAPPER, *command]
            run = subprocess.run(wrapped, capture_output=True, text=True, env=env)
            code, peak = (int(x) for x in run.stdout.split())
            if code != 0:
                raise RuntimeError(f"collect of {records} records failed ({code}): {run.stderr}")
            out[f"collector_{label}_records"] = records
            out[f"collector_{label}_peak_rss_mb"] = peak
            out[f"collector_{label}_seconds"] = round(time.perf_counter() - started, 1)
            say(f"collector RSS: {records} records, peak {peak} MB")
    finally:
        _delete_prefixes(settings, [(settings.raw_bucket, f"{settings.raw_prefix}customer={customer}/")])
        shutil.rmtree(folder, ignore_errors=True)
    out["collector_rss_growth"] = round(out["collector_large_peak_rss_mb"] / out["collector_small_peak_rss_mb"], 2)
    return out


def _collect_parallel(settings: Settings, folders: list[Path], customer: str) -> None:
    """W6's large reports are collected two at a time, each in its own process (the parse is
    CPU-bound Python)."""
    env = {**os.environ, **settings.process_env()}
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda f: subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pipeline",
                        "collect",
                        "--customer",
                        customer,
                        "--max-file-mb",
                        "200",
                        str(f),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                ),
                folders,
            )
        )
    failed = [r.stderr[-2000:] for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"collect failed: {failed[0]}")


_W7_PROBE = r"""
import json, sys, time
from pipeline.bench.flood import PeakRss
from pipeline.importer.batch import ImportItem, import_items
from pipeline.importer.events import ObjectVersion
from pipeline.aws import client
from pipeline.settings import load_settings
import psycopg
bucket, key, etag = sys.argv[1:4]
settings = load_settings()
s3 = client(settings, "s3")
with psycopg.connect(settings.database_url) as conn:  # warm up what every load needs
    conn.execute("SELECT 1")
with PeakRss() as rss:
    [outcome] = import_items(settings.database_url, s3, [ImportItem(ObjectVersion(bucket, key, etag, etag))], streams=1)
print(json.dumps({"ok": outcome.ok, "rows": outcome.result.rows if outcome.ok else 0, "error": outcome.error,
                  "start_mb": rss.start / 2**20, "peak_mb": rss.peak / 2**20}))
"""


def w7(settings: Settings, small: int, large: int, progress: bool, say) -> dict:
    import io

    import pyarrow.parquet as pq

    from pipeline.bench.importer import scratch_warehouse
    from pipeline.enrich.synthetic import synthetic_enriched_table

    s3 = client(settings, "s3")
    tag = uuid.uuid4().hex[:6]
    out: dict = {}
    with scratch_warehouse(settings) as bench:
        env = {**os.environ, **bench.process_env(), "PIPELINE_HOME": config.get("PIPELINE_HOME") or ""}
        env = {k: v for k, v in env.items() if v}
        for label, rows in (("small", small), ("large", large)):
            say(f"W7: writing an enriched object of {rows} rows")
            sink = io.BytesIO()
            table = synthetic_enriched_table(rows, seed=7, customer_id=f"w7{tag}", report_id=f"w7-{label}")
            pq.write_table(table, sink, compression="zstd", row_group_size=100_000)
            del table
            key = f"{settings.enriched_prefix}customer=w7{tag}/dt=2034-01-01/{label}.parquet"
            etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=sink.getvalue())["ETag"].strip('"')
            out[f"w7_{label}_bytes"] = sink.tell()
            del sink
            probe = subprocess.run(
                [sys.executable, "-c", _W7_PROBE, settings.enriched_bucket, key, etag],
                capture_output=True,
                text=True,
                env=env,
                timeout=1800,
            )
            if probe.returncode != 0:
                raise RuntimeError(f"W7 probe failed: {probe.stderr[-3000:]}")
            measured = json.loads(probe.stdout.strip().splitlines()[-1])
            if not measured["ok"] or measured["rows"] != rows:
                raise RuntimeError(f"W7 import of {rows} rows failed: {measured}")
            out[f"w7_{label}_rows"] = rows
            out[f"w7_{label}_rss_growth_mb"] = round(measured["peak_mb"] - measured["start_mb"], 1)
    _purge_queue(settings)
    _delete_prefixes(settings, [(settings.enriched_bucket, f"{settings.enriched_prefix}customer=w7{tag}/")])
    _purge_queue(settings)
    out["importer_rss_growth"] = round(out["w7_large_rss_growth_mb"] / max(1.0, out["w7_small_rss_growth_mb"]), 2)
    return out


def run(
    settings: Settings,
    workloads: str = "w5,w6,w7",
    scale: float = 1.0,
    master: str = "local[2]",
    progress: bool = True,
) -> dict:
    def say(message: str) -> None:
        log.info("bench flood: %s", message)

    chosen = {w.strip().lower() for w in workloads.split(",")}
    figures: dict = {"scale": scale, "master": master}
    if "w5" in chosen:
        figures.update(w5(settings, 10, max(4, int(400 * scale)), master, progress, say))
    if "w6" in chosen:
        figures.update(w6(settings, 20, max(1000, int(50_000 * scale)), master, progress, say))
    if "w6" in chosen:
        figures.update(collector_rss(settings, 10_000, max(20_000, int(1_000_000 * scale)), say))
    if "w5" in chosen and "w6" in chosen:
        figures["driver_rss_ratio"] = round(figures["w6_driver_peak_rss_mb"] / figures["w5_driver_peak_rss_mb"], 2)
    if "w7" in chosen:
        figures.update(
            w7(settings, max(1000, int(100_000 * scale)), max(10_000, int(1_000_000 * scale)), progress, say)
        )
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures
