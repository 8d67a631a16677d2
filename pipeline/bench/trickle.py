"""``pipeline bench trickle`` (W8): reports arriving all day, through the real path, in waves.

Waves (in this process, through the same sensors and assets the daemon runs): each wave's
reports are collected (real upload, S3 -> SNS -> the raw queue), the raw sensor ticks and its
enrichment runs execute (Spark), the import queue is drained by the import sensor's runs, and
the projections refresh. The workload: ``customers`` customers with ``reports`` reports each
over two days, ordered as receivers send them (a report of day D arrives within 48 h of D's
start, so the first day's late reports come in among the second's), a duplicate re-send, and in
the middle a model-version backfill of both days (reported apart, excluded from the
amplification figures).

Also: ``raw_tick_growth`` (a raw-detection tick with 100,000 raw objects held against one with
none, on a scratch bucket and queue), ``partitions_at_production_load`` (the simulation of
``pipeline.bench.partitions``), and ``report_to_page_p50_s``/``p95`` (a report's upload to its
rows in the customer's overview projection, through a real dagster-daemon running the whole
code location).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_plus

import psycopg

from pipeline.aws import client
from pipeline.bench import verdicts
from pipeline.settings import Settings

log = logging.getLogger("pipeline.bench")

TARGETS = {
    "write_amplification": ("<=", 1.1),
    "enrich_amplification": ("<=", 1.1),
    "wave_cost_growth": ("<=", 1.3),
    "raw_tick_growth": ("<=", 1.5),
    "partitions_at_production_load": ("<=", 100_000),
    "report_to_page_p95_s": ("<=", 60.0),
}


def _say(progress: bool, text: str) -> None:
    if progress:
        log.warning("trickle: %s", text)


def _schedule(generated, first_day: dt.date, seed: int) -> list:
    """Reports in arrival order: a report of day D arrives at a random time within 48 h of D."""
    rng = random.Random(seed)
    arrivals = []
    for report in generated:
        day = dt.datetime.fromtimestamp(report.begin, dt.UTC).date()
        arrivals.append(((day - first_day).days * 24 + rng.uniform(0, 48), report))
    return [r for _, r in sorted(arrivals, key=lambda a: a[0])]


def _rows_loaded(conn, prefixes: list[str], after_id: int, until_id: int | None = None) -> int:
    return conn.execute(
        """SELECT coalesce(sum(rows), 0) FROM load_ledger WHERE event = 'loaded' AND ledger_id > %s
           AND (%s::bigint IS NULL OR ledger_id <= %s)
           AND EXISTS (SELECT 1 FROM unnest(%s::text[]) p WHERE starts_with(object_key, p))""",
        (after_id, until_id, until_id, prefixes),
    ).fetchone()[0]


def _last_ledger_id(conn) -> int:
    return conn.execute("SELECT coalesce(max(ledger_id), 0) FROM load_ledger").fetchone()[0]


def _raw_records_read(runs, days: list[str]) -> int:
    """Raw records the enrichment runs read for ``days`` (a first tick may also take in objects
    of other days that were waiting in the raw queue: they are not this workload's)."""
    total = 0
    for run in runs:
        for event in run.get_asset_materialization_events():
            if event.materialization.partition not in days:
                continue
            value = event.materialization.metadata.get("raw_records")
            total += int(value.value) if value is not None else 0
    return total


def waves(settings: Settings, customers: int, reports: int, wave_size: int, progress: bool) -> dict:
    """Each wave is one report of the raw sensor: PIPELINE_RAW_RUN_INTERVAL_S, which spaces the
    daemon's reports under a steady load, is the waves' own spacing here (otherwise a held wave's
    reports would be read by the next wave, or by the backfill, and the figures would mix waves)."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"PIPELINE_RAW_RUN_INTERVAL_S": "0"}):
        return _waves(settings, customers, reports, wave_size, progress)


def _waves(settings: Settings, customers: int, reports: int, wave_size: int, progress: bool) -> dict:
    from dagster import AssetKey, RunRequest, SensorResult

    from pipeline import names
    from pipeline.collector.collect import collect
    from pipeline.collector.generate import generate_reports
    from pipeline.collector.spool import Spool
    from pipeline.defs.raw.sensors import raw_telemetry_sensor
    from pipeline.enrich import model
    from pipeline.enrich.spark import spark_session
    from pipeline.local.inprocess import apply, drain_import_queue, local_instance, tick
    from pipeline.warehouse.projections import refresh

    tag = uuid.uuid4().hex[:6]
    rng = random.Random(tag)
    first_day = dt.date(2017, 1, 1) + dt.timedelta(days=2 * rng.randrange(180))  # a calendar only this run uses
    days = [first_day.isoformat(), (first_day + dt.timedelta(days=1)).isoformat()]
    prefixes = [f"{settings.enriched_prefix}dt={d}/" for d in days]
    instance = local_instance()
    spark_session()  # the session the enrichment runs share, started before the first wave is timed
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        cursor = json.dumps(
            {"reported": conn.execute("SELECT coalesce(max(raw_id), 0) FROM raw_inbox").fetchone()[0], "sweep": None}
        )
        start_id = _last_ledger_id(conn)
    out: dict = {"days": days}
    with tempfile.TemporaryDirectory(prefix="trickle-") as tmp:
        folder = Path(tmp)
        generated = generate_reports(
            folder / "reports",
            customers,
            reports,
            seed=rng.randrange(1 << 30),
            start=first_day,
            records_per_report=(5, 30),
            per_day=-(-reports // 2),
        )
        names_of = {c: f"tr{tag}{n:03d}" for n, c in enumerate(sorted({r.customer_id for r in generated}))}
        ordered = _schedule(generated, first_day, rng.randrange(1 << 30))
        records_received = sum(len(r.records) for r in ordered)
        batches = [ordered[i : i + wave_size] for i in range(0, len(ordered), wave_size)]
        resend_wave = len(batches) // 3
        backfill_after = len(batches) // 2
        spool = Spool(folder / "spool")
        seconds, stage_seconds, read, runs_failed = (
            [],
            {"collect": 0.0, "enrich": 0.0, "import": 0.0, "project": 0.0},
            0,
            0,
        )
        backfill: dict = {}
        backfill_window = (0, 0)
        original_model = model.MODEL_VERSION
        try:
            for n, wave in enumerate(batches):
                started = time.perf_counter()
                for customer in sorted({r.customer_id for r in wave}):
                    paths = [Path(r.path) for r in wave if r.customer_id == customer]
                    if n == resend_wave and customer == ordered[0].customer_id:
                        paths.append(Path(ordered[0].path))  # a receiver sends a report again
                    collect(paths, names_of[customer], settings, spool)
                t_collect = time.perf_counter()
                raw_tick = tick(instance, raw_telemetry_sensor, cursor)
                cursor = getattr(raw_tick, "cursor", None) or cursor
                enrich_runs = apply(instance, raw_tick)
                read += _raw_records_read(enrich_runs, days)
                t_enrich = time.perf_counter()
                import_runs = drain_import_queue(instance)
                t_import = time.perf_counter()
                refresh(settings.database_url)
                t_project = time.perf_counter()
                runs_failed += sum(not r.success for r in enrich_runs + import_runs)
                seconds.append(t_project - started)
                for name, took in (
                    ("collect", t_collect - started),
                    ("enrich", t_enrich - t_collect),
                    ("import", t_import - t_enrich),
                    ("project", t_project - t_import),
                ):
                    stage_seconds[name] += took
                _say(progress, f"wave {n + 1}/{len(batches)}: {len(wave)} reports in {seconds[-1]:.1f}s")
                if n + 1 == backfill_after:
                    # A new model: the backfill of both days, as from the UI (every customer of the days).
                    model.MODEL_VERSION = f"{original_model}-bench{tag}"
                    with psycopg.connect(settings.database_url, autocommit=True) as conn:
                        before = _last_ledger_id(conn)
                    started = time.perf_counter()
                    request = RunRequest(
                        asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
                        tags={names.RANGE_START_TAG: days[0], names.RANGE_END_TAG: days[1]},
                    )
                    runs = apply(instance, SensorResult(run_requests=[request]))
                    runs += drain_import_queue(instance)
                    refresh(settings.database_url)
                    runs_failed += sum(not r.success for r in runs)
                    with psycopg.connect(settings.database_url, autocommit=True) as conn:
                        after = _last_ledger_id(conn)
                        backfill = {
                            "seconds": round(time.perf_counter() - started, 1),
                            "rows_copied": int(_rows_loaded(conn, prefixes, before, after)),
                            "raw_records_read": _raw_records_read(runs, days),
                        }
                    backfill_window = (before, after)
                    _say(progress, f"model backfill of both days: {backfill}")
        finally:
            model.MODEL_VERSION = original_model
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            copied = _rows_loaded(conn, prefixes, start_id) - _rows_loaded(conn, prefixes, *backfill_window)
            batches_made = conn.execute(
                "SELECT count(*) FROM enrichment_batches WHERE day = ANY(%s::date[])", (days,)
            ).fetchone()[0]
            live_rows = conn.execute(
                "SELECT count(*) FROM telemetry_events WHERE customer_id = ANY(%s)", (list(names_of.values()),)
            ).fetchone()[0]
    from pipeline.importer.verify import verify

    checks = [verify(settings, c) for c in names_of.values()]
    _clean_up(settings, instance, days, list(names_of.values()))
    first, last = seconds[:5], seconds[-5:]
    out.update(
        {
            "customers": customers,
            "reports": len(ordered),
            "waves": len(batches),
            "records_received": records_received,
            "rows_copied": int(copied),
            "raw_records_read": read,
            "live_rows": live_rows,
            "batches": batches_made,
            "write_amplification": round(int(copied) / records_received, 3),
            "enrich_amplification": round(read / records_received, 3),
            "wave_seconds_first5": [round(s, 2) for s in first],
            "wave_seconds_last5": [round(s, 2) for s in last],
            "wave_cost_growth": round(statistics.median(last) / statistics.median(first), 3),
            "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
            "backfill": backfill,
            "runs_failed": runs_failed,
            "verify_ok": all(c["ok"] for c in checks),
        }
    )
    return out


def _clean_up(settings: Settings, instance, days: list[str], customers: list[str]) -> None:
    """The run's calendar goes: raw and enriched objects, the rows (tombstoned by the importer,
    as any deletion), the ledger's batches."""
    from pipeline.bench import forget_enrichment
    from pipeline.enrich.publish import delete_keys
    from pipeline.local.inprocess import drain_import_queue

    s3 = client(settings, "s3")
    paginator = s3.get_paginator("list_objects_v2")
    for bucket, prefix in [(settings.enriched_bucket, f"{settings.enriched_prefix}dt={d}/") for d in days] + [
        (b, f"{p}customer={c}/")
        for c in customers
        for b, p in ((settings.raw_bucket, settings.raw_prefix), (settings.enriched_bucket, "quarantine/"))
    ]:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            delete_keys(s3, bucket, [o["Key"] for o in page.get("Contents", [])])
    drain_import_queue(instance)
    forget_enrichment(settings, days)


def raw_tick_growth(settings: Settings, held: int, progress: bool) -> dict:
    """A raw-detection tick (intake from the queue, the sweep of recent days, the rows past the
    cursor) on a scratch bucket and queue, with no raw object held, then with ``held`` objects of
    older days (and as many raw_inbox rows); the same new objects in both."""
    from pipeline.enrich import detection

    s3, sqs = client(settings, "s3"), client(settings, "sqs")
    tag = uuid.uuid4().hex[:8]
    bucket = f"trickle-raw-{tag}"
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"trickle-raw-{tag}")["QueueUrl"]
    today = dt.datetime.now(dt.UTC).date()
    customers = [f"th{tag}{n:02d}" for n in range(20)]

    def put(key: str) -> str:
        return s3.put_object(Bucket=bucket, Key=key, Body=b"\x1f\x8b")["ETag"].strip('"')

    def ticks(n: int = 10) -> tuple[float, float]:
        """The median of ``n`` sensor ticks as the daemon runs them (the first one sweeps, the
        others fall between sweeps), and the seconds of that sweep."""
        timings = []
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            reported = conn.execute("SELECT coalesce(max(raw_id), 0) FROM raw_inbox").fetchone()[0]
            state = {"reported": reported, "sweep": None, "swept_at": None}
            for _ in range(n):
                for c in customers[:2]:  # new objects each tick: two reports of today
                    key = f"raw/customer={c}/dt={today}/new-{uuid.uuid4().hex}.jsonl.gz"
                    sqs.send_message(QueueUrl=queue_url, MessageBody=_s3_event(bucket, key, put(key)))
                started = time.perf_counter()
                detection.tick(conn, sqs, queue_url, s3, bucket, "raw/", state)
                timings.append(time.perf_counter() - started)
        return statistics.median(timings[1:]), timings[0]

    try:
        empty, sweep_empty = ticks()
        keys = [
            f"raw/customer={customers[n % len(customers)]}/dt={today - dt.timedelta(days=30 + n % 300)}/"
            f"old-{n:07d}.jsonl.gz"
            for n in range(held)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(put, keys))
        copy_sql = "COPY raw_inbox (bucket, object_key, etag, size, customer_id, day, source) FROM STDIN"
        with (
            psycopg.connect(settings.database_url, autocommit=True) as conn,
            conn.cursor() as cur,
            cur.copy(copy_sql) as copy,
        ):
            for key in keys:
                customer, day = key.split("/")[1][9:], key.split("/")[2][3:]
                copy.write_row((bucket, key, "e", 2, customer, day, "sweep"))
        _say(progress, f"raw detection: {held} objects held, written in {time.perf_counter() - started:.0f}s")
        full, sweep_full = ticks()
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM raw_inbox WHERE bucket = %s", (bucket,))
        sqs.delete_queue(QueueUrl=queue_url)
        from pipeline.enrich.publish import delete_keys

        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            delete_keys(s3, bucket, [o["Key"] for o in page.get("Contents", [])])
        s3.delete_bucket(Bucket=bucket)
    return {
        "raw_tick_s_empty": round(empty, 4),
        "raw_tick_s_held": round(full, 4),
        "raw_objects_held": held,
        "raw_tick_growth": round(full / empty, 3),
        # A sweep (every PIPELINE_RAW_SWEEP_INTERVAL_S) makes the same listings either way; moto's
        # server scans the whole bucket for each, so locally its seconds follow the bucket.
        "raw_sweep_s_empty": round(sweep_empty, 4),
        "raw_sweep_s_held": round(sweep_full, 4),
    }


def _s3_event(bucket: str, key: str, etag: str) -> str:
    """An S3 ObjectCreated notification as SNS delivers it to the raw queue."""
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": dt.datetime.now(dt.UTC).isoformat(),
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/="), "eTag": etag, "size": 2}},
    }
    return json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})


def report_to_page(settings: Settings, reports: int, progress: bool) -> dict:
    """Reports uploaded one after another under a real dagster-daemon running the whole code
    location; each one's seconds from upload to rows in its customer's overview projection."""
    from pipeline.collector.collect import collect
    from pipeline.collector.generate import generate_reports
    from pipeline.collector.spool import Spool
    from pipeline.local.daemon import running_daemon

    tag = uuid.uuid4().hex[:6]
    latencies = []
    env = {"PIPELINE_AUTOMATION": "1", "PIPELINE_SCALING_MAX": "0", "PIPELINE_ALERTS_SCHEDULE": "0"}
    with (
        tempfile.TemporaryDirectory(prefix="trickle-page-") as tmp,
        running_daemon(settings, env, location="pipeline.definitions") as daemon,
    ):
        generated = generate_reports(Path(tmp) / "reports", reports + 1, 1, seed=5)
        spool = Spool(Path(tmp) / "spool")
        for n, report in enumerate(generated):
            customer = f"tp{tag}{n:02d}"
            started = time.monotonic()
            collect([Path(report.path)], customer, settings, spool)
            while True:
                daemon.check()
                with psycopg.connect(settings.database_url) as conn:
                    seen = conn.execute(
                        "SELECT sum(messages) FROM daily_domain_compliance WHERE customer_id = %s", (customer,)
                    ).fetchone()[0]
                if seen:
                    break
                if time.monotonic() - started > 600:
                    raise RuntimeError(f"report {n} never reached the overview; daemon log:\n{daemon.log_tail(4000)}")
                time.sleep(1)
            took = time.monotonic() - started
            if n:  # the first report warms the daemon up (its first ticks, the first run's imports)
                latencies.append(took)
            _say(progress, f"report {n}: on the page {took:.1f}s after upload")
    latencies.sort()
    return {
        "report_to_page_s": [round(x, 1) for x in latencies],
        "report_to_page_p50_s": round(statistics.median(latencies), 1),
        "report_to_page_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
    }


def run(
    settings: Settings,
    customers: int = 20,
    reports: int = 40,
    wave_size: int = 20,
    held: int = 100_000,
    page_reports: int = 6,
    production_customers: int = 10_000,
    progress: bool = True,
) -> dict:
    from pipeline.bench import partitions

    figures: dict = {}
    figures.update(waves(settings, customers, reports, wave_size, progress))
    if held:
        figures.update(raw_tick_growth(settings, held, progress))
    if page_reports:
        figures.update(report_to_page(settings, page_reports, progress))
    simulated = partitions.simulate(customers=production_customers, progress=lambda t: _say(progress, t))
    figures["partitions_at_production_load"] = simulated.pop("partitions_at_production_load")
    figures["partition_simulation"] = simulated
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures
