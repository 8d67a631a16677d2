"""``pipeline bench import``: the importer's figures of DESIGN.md section 7, measured in one run.

* W1 (200 objects x 5,000 rows): importer rows/s (one process: S3 GET, Parquet decode, ledger
  claim, binary COPY, commit, per object, on the default two COPY streams; one stream beside
  it) against a server-side ``COPY ... (FORMAT binary)`` of the same rows into the same table ->
  ``efficiency``; and against a naive importer (one INSERT and one commit per row, on a sample)
  -> ``speedup_vs_naive``.
* W2 (2,000 objects x 500 rows): drain time through a running ``dagster-daemon`` (the shipped
  dagster.yaml: sensor, run queue, launcher, one process per run) minus the Dagster-free
  importer's drain time, per object -> ``overhead_ms_per_object``; the same with the sensor and
  runs in this process beside it.
* W3 (1 object/s for two minutes, into a running daemon): seconds from object written to rows
  committed, p95 -> ``freshness_p95_s``.
* W4 (on request): one sensor tick with 0 and with 100,000 objects seen -> tick flatness.

Each workload runs in a scratch database on the stack's server (migrated like the warehouse)
and under its own key prefix, so a benchmark never touches real data.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import psycopg
from psycopg import sql
from tqdm import tqdm

from pipeline import names
from pipeline.aws import client
from pipeline.bench import verdicts
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.batch import import_items, import_streams
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import EVENT_COLUMNS
from pipeline.local.daemon import running_daemon
from pipeline.local.postgres import ensure_database, sibling_database_url
from pipeline.settings import Settings
from pipeline.warehouse.schema import migrate

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

TARGETS = {
    "efficiency": (">=", 0.70),
    "speedup_vs_naive": (">=", 35.0),
    "overhead_ms_per_object": ("<=", 10.0),
    "freshness_p95_s": ("<=", 15.0),
}


@contextmanager
def scratch_warehouse(settings: Settings, migrated: bool = True):
    name = f"bench_{uuid.uuid4().hex[:8]}"
    ensure_database(settings.database_url, name)
    url = sibling_database_url(settings.database_url, name)
    if migrated:
        migrate(url)
    try:
        yield dataclasses.replace(settings, database_url=url)
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# The import benchmarks' daemons: only the runs import (no workers), and no projection refresh
# (neither the automation sensor's nor the one an import run makes as it ends) or alert evaluation
# competes with the imports they time: W2 compares orchestration with the bare loop, which
# refreshes nothing.
BENCH_DAEMON = {"PIPELINE_SCALING_MAX": "0", "PIPELINE_AUTOMATION": "0", "PIPELINE_IMPORT_REFRESH": "0"}


def put_objects(settings: Settings, prefix: str, objects: int, rows: int, progress: bool) -> list[ObjectVersion]:
    s3 = client(settings, "s3")

    def put(i: int) -> ObjectVersion:
        table = synthetic_enriched_table(rows, seed=i, customer_id="bench", report_id=f"{prefix}-{i}")
        body = parquet_bytes(table)
        key = f"{settings.enriched_prefix}customer=bench/dt=2026-11-01/{prefix}/obj-{i:05d}.parquet"
        etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
        return ObjectVersion(settings.enriched_bucket, key, etag, etag, len(body))

    with ThreadPoolExecutor(4) as pool:
        return list(tqdm(pool.map(put, range(objects)), total=objects, desc=f"write {prefix}", disable=not progress))


def drain_queue_silently(settings: Settings, purge: bool = True) -> None:
    """Empty the import queue (the benchmark's own notifications) without importing. PurgeQueue
    first: it also drops messages still in flight from an earlier workload, which would
    reappear later and be imported by the next one (``purge=False``: only receive and delete, for
    a second drain within the minute SQS allows between purges)."""
    sqs = client(settings, "sqs")
    try:
        if purge:
            sqs.purge_queue(QueueUrl=settings.queue_url)
    except sqs.exceptions.PurgeQueueInProgress:
        time.sleep(61)  # one purge a minute
        sqs.purge_queue(QueueUrl=settings.queue_url)
    while True:
        got = sqs.receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = got.get("Messages", [])
        if not messages:
            return
        sqs.delete_message_batch(
            QueueUrl=settings.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def w1(
    settings: Settings, objects: int, rows: int, naive_rows: int, progress: bool, streams: int | None = None
) -> dict:
    streams = streams or import_streams()
    versions = put_objects(settings, f"w1-{uuid.uuid4().hex[:6]}", objects, rows, progress)
    drain_queue_silently(settings)
    s3 = client(settings, "s3")
    with scratch_warehouse(settings) as one:  # the same process held to one COPY stream
        started = time.perf_counter()
        import_items(one.database_url, s3, [_item(v) for v in versions], worker="bench", streams=1)
        one_stream_seconds = time.perf_counter() - started
    with scratch_warehouse(settings) as bench:
        started = time.perf_counter()
        outcomes = import_items(bench.database_url, s3, [_item(v) for v in versions], worker="bench", streams=streams)
        importer_seconds = time.perf_counter() - started
        total = sum(o.result.rows for o in outcomes if o.ok)
        assert total == objects * rows, f"importer loaded {total} of {objects * rows} rows"
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in ["ledger_id", *EVENT_COLUMNS])
        path = f"/tmp/pipeline-bench-{uuid.uuid4().hex[:8]}.copy"
        with psycopg.connect(bench.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("COPY telemetry_events ({}) TO {} (FORMAT binary)").format(columns, sql.Literal(path)))
            conn.execute("TRUNCATE telemetry_events")
            conn.execute("VACUUM ANALYZE telemetry_events")
            started = time.perf_counter()
            conn.execute(
                sql.SQL("COPY telemetry_events ({}) FROM {} (FORMAT binary)").format(columns, sql.Literal(path))
            )
            copy_seconds = time.perf_counter() - started
            conn.execute("TRUNCATE telemetry_events")
        Path(path).unlink(missing_ok=True)  # the server wrote it on this machine (a local stack)
        naive_seconds = naive_insert(bench.database_url, s3, versions, naive_rows)
    importer_rps, copy_rps, naive_rps = total / importer_seconds, total / copy_seconds, naive_rows / naive_seconds
    one_stream_rps = total / one_stream_seconds
    return {
        "w1_rows": total,
        "importer_streams": streams,
        "importer_rows_per_s": round(importer_rps),
        "importer_one_stream_rows_per_s": round(one_stream_rps),
        "server_copy_rows_per_s": round(copy_rps),
        "naive_rows_per_s": round(naive_rps),
        "efficiency": round(importer_rps / copy_rps, 3),
        "efficiency_one_stream": round(one_stream_rps / copy_rps, 3),
        "speedup_vs_naive": round(importer_rps / naive_rps, 1),
        "speedup_vs_naive_one_stream": round(one_stream_rps / naive_rps, 1),
    }


def _item(version: ObjectVersion):
    from pipeline.importer.batch import ImportItem

    return ImportItem(version)


def naive_insert(database_url: str, s3, versions: list[ObjectVersion], limit: int) -> float:
    """One INSERT and one COMMIT per row: what a first importer often looks like."""
    from pipeline.importer.load import fetch

    table = fetch(s3, versions[0]).table
    rows = [tuple(r[c] for c in EVENT_COLUMNS) for r in table.slice(0, limit).to_pylist()]
    while len(rows) < limit:
        rows += rows[: limit - len(rows)]
    statement = sql.SQL("INSERT INTO telemetry_events ({}) VALUES ({})").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in ["ledger_id", *EVENT_COLUMNS]),
        sql.SQL(", ").join([sql.Placeholder()] * (len(EVENT_COLUMNS) + 1)),
    )
    with psycopg.connect(database_url) as conn:
        ledger_id = conn.execute(
            "INSERT INTO load_ledger (event, bucket, object_key, object_version) VALUES ('loaded','b','naive','v') "
            "RETURNING ledger_id"
        ).fetchone()[0]
        conn.commit()
        started = time.perf_counter()
        for n, row in enumerate(rows):
            conn.execute(statement, (ledger_id, *row[:-1], f"{n:032x}"))  # event_id is the last column
            conn.commit()
        return time.perf_counter() - started


def w2(settings: Settings, objects: int, rows: int, progress: bool) -> dict:

    from pipeline.importer.worker import run_worker
    from pipeline.local.inprocess import drain_import_queue

    with scratch_warehouse(settings) as bench:
        drain_queue_silently(settings)
        put_objects(settings, f"w2a-{uuid.uuid4().hex[:6]}", objects, rows, progress)
        started = time.perf_counter()
        stats = run_worker(bench, batch=10, drain=True)
        bare_seconds = time.perf_counter() - started
        assert stats.objects_loaded == objects, stats
        put_objects(settings, f"w2b-{uuid.uuid4().hex[:6]}", objects, rows, progress)
        no_refresh = mock.patch.dict(os.environ, {"PIPELINE_IMPORT_REFRESH": BENCH_DAEMON["PIPELINE_IMPORT_REFRESH"]})
        with no_refresh, _database(bench), scratch_dagster_instance(settings) as instance:
            started = time.perf_counter()
            runs = drain_import_queue(instance, concurrent_runs=True)
            in_process_seconds = time.perf_counter() - started
        assert all(r.success for r in runs)
        put_objects(settings, f"w2c-{uuid.uuid4().hex[:6]}", objects, rows, progress)
        daemon = drain_through_daemon(settings, bench, objects * 3, progress)
    per_object = 1000 / objects
    return {
        "w2_objects": objects,
        "bare_drain_s": round(bare_seconds, 2),
        "dagster_drain_s": round(daemon["seconds"], 2),
        "dagster_runs": daemon["runs"],
        "dagster_ticks": daemon["ticks"],
        "dagster_first_run_created_s": daemon["first_run_s"],
        "dagster_run_queued_mean_s": daemon["queued_s"],
        "dagster_run_mean_s": daemon["run_s"],
        "in_process_drain_s": round(in_process_seconds, 2),
        "in_process_runs": len(runs),
        # Signed: below zero, the Dagster path's larger batches (hundreds of objects per run
        # against 10 per receive) gained more than its orchestration cost.
        "overhead_ms_per_object": round((daemon["seconds"] - bare_seconds) * per_object, 2),
        "overhead_in_process_ms_per_object": round((in_process_seconds - bare_seconds) * per_object, 2),
    }


SENSOR_TICKS = "FROM job_ticks WHERE type = 'SENSOR' AND tick_body LIKE '%import_queue_sensor%'"


def drain_through_daemon(settings: Settings, bench: Settings, loaded_total: int, progress: bool) -> dict:
    """The queue drained through the daemon (``running_daemon``). Timed from the sensor's first
    tick (the daemon is long-running in production; its start-up is not part of a drain) to the
    end of the last run."""
    with running_daemon(bench, BENCH_DAEMON) as daemon:  # only the runs import
        bar = tqdm(total=loaded_total, desc="W2 through dagster-daemon", disable=not progress)
        deadline = time.monotonic() + 1800
        while True:
            daemon.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"W2 through the daemon did not drain in 30 min; see {daemon.log_path}")
            loaded, active = _daemon_progress(bench.database_url, daemon.dagster_url)
            bar.n = loaded
            bar.refresh()
            if loaded >= loaded_total and active == 0:
                break
            time.sleep(1)
        bar.close()
        (first_tick,) = daemon.query(f"SELECT extract(epoch FROM min(timestamp)) {SENSOR_TICKS}")
        (ticks,) = daemon.query(f"SELECT count(*) {SENSOR_TICKS} AND status = 'SUCCESS'")
        runs, failed, first_created, last_end, queued_s, run_s = daemon.query(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'SUCCESS'), extract(epoch FROM min(create_timestamp)), "
            "max(end_time), avg(start_time - extract(epoch FROM create_timestamp)), avg(end_time - start_time) "
            "FROM runs"
        )
        if failed:
            raise RuntimeError(f"{failed} of {runs} runs through the daemon failed; see {daemon.log_path}")
    # Where a run's time goes: from the tick that asked for it, waiting in the run queue and
    # starting its process (start_time is set once the run's process is up), importing.
    return {
        "seconds": float(last_end) - float(first_tick),
        "runs": runs,
        "ticks": ticks,
        "first_run_s": round(float(first_created) - float(first_tick), 2),
        "queued_s": round(float(queued_s or 0), 2),
        "run_s": round(float(run_s or 0), 2),
    }


def _daemon_progress(warehouse_url: str, dagster_url: str) -> tuple[int, int]:
    """(objects loaded in the scratch warehouse, runs not finished yet)."""
    with psycopg.connect(warehouse_url) as conn:
        (loaded,) = conn.execute("SELECT count(*) FROM load_ledger WHERE event = 'loaded'").fetchone()
    try:
        with psycopg.connect(dagster_url) as conn:
            (active,) = conn.execute(
                "SELECT count(*) FROM runs WHERE status IN ('QUEUED', 'NOT_STARTED', 'STARTING', 'STARTED')"
            ).fetchone()
    except psycopg.errors.UndefinedTable:  # the daemon has not created its storage yet
        active = 0
    return loaded, active


@contextmanager
def scratch_dagster_instance(settings: Settings, capture_logs: bool = True):
    """A Dagster instance with its storage in a scratch PostgreSQL database, as deployed
    (the shipped storage, PooledPostgresStorage), so that event writes cost what they cost there.

    ``capture_logs=False`` turns compute-log capture off: runs executed in threads of one process
    (the flood's import harness) otherwise each wait on the local manager's ``tail`` subprocesses
    (up to 30 s per run at exit), which is the harness's cost, not the import's."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from pipeline.settings import dagster_sqlalchemy_url

    name = f"bench_dagster_{uuid.uuid4().hex[:8]}"
    ensure_database(settings.database_url, name)
    url = dagster_sqlalchemy_url(sibling_database_url(settings.database_url, name))
    with tempfile.TemporaryDirectory() as home:
        storage = {"module": "pipeline.instance", "class": "PooledPostgresStorage", "config": {"postgres_url": url}}
        overrides = {"storage": {"custom": storage}, "telemetry": {"enabled": False}}
        if not capture_logs:
            overrides["compute_logs"] = {
                "module": "dagster._core.storage.noop_compute_log_manager",
                "class": "NoOpComputeLogManager",
            }
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=overrides))
        try:
            yield instance
        finally:
            instance.dispose()
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def _database(settings: Settings):
    """Point the Dagster resources (which read the environment) at the scratch warehouse."""
    import os

    old = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = settings.database_url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = old


def w3(settings: Settings, seconds: int, rows: int, progress: bool) -> dict:
    """One object per second into a running daemon (``running_daemon``): the sensor ticks, runs
    launch in their own processes, as deployed. Per object, seconds from its PUT to its ledger
    row (the commit)."""
    s3 = client(settings, "s3")
    written: dict[str, float] = {}
    prefix = f"w3-{uuid.uuid4().hex[:6]}"

    def trickle():
        for i in range(seconds):
            key = f"{settings.enriched_prefix}customer=bench/dt=2026-11-01/{prefix}/obj-{i:05d}.parquet"
            body = parquet_bytes(synthetic_enriched_table(rows, seed=i, customer_id="bench", report_id=f"{prefix}-{i}"))
            written[key] = time.time()
            s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)
            time.sleep(max(0.0, 1.0 - (time.time() - written[key])))

    with scratch_warehouse(settings) as bench:
        drain_queue_silently(settings)
        with running_daemon(bench, BENCH_DAEMON) as daemon:  # only the runs import
            deadline = time.monotonic() + 120
            while not daemon.sensor_ticks():
                daemon.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the import sensor never ticked; see {daemon.log_path}")
                time.sleep(0.5)
            writer = threading.Thread(target=trickle, daemon=True)
            writer.start()
            bar = tqdm(total=seconds, desc="W3 trickle through dagster-daemon", disable=not progress)
            while writer.is_alive() or len(_committed(bench, prefix)) < len(written):
                daemon.check()
                bar.n = len(_committed(bench, prefix))
                bar.refresh()
                if not writer.is_alive() and time.time() - max(written.values()) > 120:
                    break
                time.sleep(0.5)
            bar.close()
            committed = _committed(bench, prefix)
    lags = sorted(committed[k] - written[k] for k in committed)
    p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else float("inf")
    return {
        "w3_objects": len(written),
        "w3_committed": len(committed),
        "freshness_p50_s": round(statistics.median(lags), 2) if lags else None,
        "freshness_p95_s": round(p95, 2),
    }


def _committed(settings: Settings, prefix: str) -> dict[str, float]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT object_key, extract(epoch FROM recorded_at) FROM load_ledger WHERE event = 'loaded' "
            "AND object_key LIKE %s",
            (f"%/{prefix}/%",),
        ).fetchall()
    return {k: float(t) for k, t in rows}


def w4(settings: Settings, seen: int, new: int, progress: bool) -> dict:
    """Tick flatness: one import-sensor tick of ``new`` objects (which adds their partitions),
    and resolving its run's partition range, with no objects seen before and with ``seen``
    objects seen (rows in object_partitions, and as many dynamic partitions in Dagster's storage)."""
    from dagster import PartitionKeyRange
    from dagster._core.definitions.partitions.context import partition_loading_context

    from pipeline.defs.importer.sensors import import_queue_sensor
    from pipeline.defs.partitions import enriched_objects
    from pipeline.local.inprocess import tick

    timings: dict[str, float] = {}
    with scratch_warehouse(settings) as bench, _database(bench), scratch_dagster_instance(settings) as instance:
        drain_queue_silently(settings)  # warm-up: connections, imports, caches
        put_objects(settings, f"w4warm-{uuid.uuid4().hex[:6]}", 10, 10, False)
        time.sleep(1)
        tick(instance, import_queue_sensor)
        for label, existing in (("empty", 0), ("seen", seen)):
            if existing:
                keys = [f"customer=seen/dt=2026-01-01/old-{i:07d}.parquet" for i in range(existing)]
                for start in tqdm(range(0, existing, 10_000), desc="seed partitions", disable=not progress):
                    instance.add_dynamic_partitions(names.ENRICHED_OBJECTS, keys[start : start + 10_000])
                copy_sql = "COPY object_partitions (partition_key, bucket, object_key) FROM STDIN"
                with psycopg.connect(bench.database_url) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    for key in keys:
                        copy.write_row((key, settings.enriched_bucket, f"{settings.enriched_prefix}{key}"))
            drain_queue_silently(settings)
            put_objects(settings, f"w4{label}-{uuid.uuid4().hex[:6]}", new, 10, progress)
            time.sleep(1)  # the notifications reach the queue
            started = time.perf_counter()
            result = tick(instance, import_queue_sensor)
            tick_s = time.perf_counter() - started
            started = time.perf_counter()  # the tick added its partitions itself
            with partition_loading_context(dynamic_partitions_store=instance):
                for request in result.run_requests:
                    enriched_objects.get_partition_keys_in_range(
                        PartitionKeyRange(request.tags[RANGE_START], request.tags[RANGE_END])
                    )
            resolve_s = time.perf_counter() - started
            timings[f"tick_{label}_s"] = round(tick_s, 3)
            timings[f"resolve_{label}_s"] = round(resolve_s, 3)
            drain_queue_silently(settings)
    return {
        "w4_seen_objects": seen,
        "w4_new_objects": new,
        **timings,
        "tick_growth": round(timings["tick_seen_s"] / timings["tick_empty_s"], 2),
        "resolve_growth": round(timings["resolve_seen_s"] / timings["resolve_empty_s"], 2),
    }


def run(
    settings: Settings,
    workloads: str = "w1,w2,w3",
    scale: float = 1.0,
    trickle_seconds: int = 120,
    progress: bool = True,
) -> dict:
    chosen = {w.strip() for w in workloads.split(",")}
    figures: dict = {"scale": scale}
    if "w1" in chosen:
        figures.update(w1(settings, max(1, int(200 * scale)), 5000, 20_000 if scale >= 1 else 3000, progress))
    if "w2" in chosen:
        figures.update(w2(settings, max(1, int(2000 * scale)), 500, progress))
    if "w4" in chosen:
        figures.update(w4(settings, max(1000, int(100_000 * scale)), 100, progress))
    if "w3" in chosen:
        figures.update(w3(settings, max(5, int(trickle_seconds)), 500, progress))
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures
