"""The chaos kind ``trickle_during_backfill``: reports arrive for a day while its reprocessing runs.

On the real local stack, on a day of its own: three customers' first reports are collected one
by one, each followed by a sensor-like enrichment run of its customer (a batch each), and
imported. Then a new model label is deployed and a backfill re-enriches the day whole
(``reprocess``) in a thread, held for a few seconds between staging and publishing, while
the remaining reports keep arriving, each with its own
enrichment run, and an importer drains the queue all along. Runs plan under one lock but stage
and publish concurrently, and both the backfill and the sensor runs may re-enrich the same
batch. At the end every customer's rows must be its reports' records exactly once, at the
current version of every object: lost, duplicated and wrong_version are 0, and no import of
the day failed on the way (an event published in two live objects at once fails its load).
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from pipeline.aws import client
from pipeline.settings import Settings

HOLD_S = 3.0  # the backfill holds between staging and publishing, while reports keep arriving


def trickle_during_backfill(settings: Settings, seed: int, progress=None) -> dict:
    from pipeline.collector.collect import collect
    from pipeline.collector.generate import generate_reports
    from pipeline.collector.spool import Spool
    from pipeline.enrich import model
    from pipeline.enrich import spark as spark_module
    from pipeline.enrich.spark import enrich_days_in_process
    from pipeline.importer.verify import verify
    from pipeline.local.inprocess import drain_import_queue, local_instance

    say = progress or (lambda _: None)
    started_at = dt.datetime.now(dt.UTC)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    day = dt.date(2012, 6, 1) + dt.timedelta(days=rng.randrange(180))  # a calendar of its own
    s3 = client(settings, "s3")
    instance = local_instance()
    original = model.MODEL_VERSION
    stop = threading.Event()
    errors: list[BaseException] = []

    def importer() -> None:
        while not stop.is_set():
            try:
                drain_import_queue(instance)
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0.2)

    def enrich(customers: list[str] | None, reprocess: bool = False) -> None:
        enrich_days_in_process(
            settings, s3, [day.isoformat()], f"chaos-{tag}-{uuid.uuid4().hex[:6]}", customers, reprocess
        )

    with tempfile.TemporaryDirectory(prefix="chaos-trickle-") as tmp:
        generated = generate_reports(Path(tmp) / "r", 3, 24, seed=seed, start=day, per_day=24)
        names = {c: f"ct{tag}{n}" for n, c in enumerate(sorted({r.customer_id for r in generated}))}
        spool = Spool(Path(tmp) / "spool")
        rng.shuffle(generated)
        first, rest = generated[: len(generated) // 3], generated[len(generated) // 3 :]
        say(f"trickle_during_backfill: {len(first)} reports of {day}, one enrichment run each")
        for report in first:
            collect([Path(report.path)], names[report.customer_id], settings, spool)
            enrich([names[report.customer_id]])
        drain_import_queue(instance)
        loader = threading.Thread(target=importer, daemon=True)
        loader.start()
        overlapped = 0
        real_publish = spark_module.publish_batches

        def held_publish(*args, **kwargs):
            if threading.current_thread() is backfill:  # staged, not yet published: the window
                time.sleep(HOLD_S)
            return real_publish(*args, **kwargs)

        backfill = threading.Thread(target=lambda: enrich(None, reprocess=True), daemon=True)
        try:
            spark_module.publish_batches = held_publish
            model.MODEL_VERSION = f"{original}-chaos{tag}"  # a new model: the backfill's reason
            say(f"trickle_during_backfill: backfill of {day} while {len(rest)} more reports arrive")
            backfill.start()
            for report in rest:
                collect([Path(report.path)], names[report.customer_id], settings, spool)
                enrich([names[report.customer_id]])
                overlapped += backfill.is_alive()
            backfill.join()
            enrich(None)  # what is due after both: a sensor run later on
        finally:
            model.MODEL_VERSION = original
            spark_module.publish_batches = real_publish
            stop.set()
            loader.join()
        for _ in range(3):
            drain_import_queue(instance)
        expected = {names[r.customer_id]: 0 for r in generated}
        for report in generated:
            expected[names[report.customer_id]] += len(report.records)
    if errors:
        raise errors[0]
    reports = {c: verify(settings, c) for c in expected}
    with psycopg.connect(settings.database_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT customer_id, count(*) FROM telemetry_events WHERE customer_id = ANY(%s) GROUP BY 1",
                (list(expected),),
            ).fetchall()
        )
        failures = conn.execute(  # a batch loaded while another still held its rows fails on the key
            "SELECT count(*) FROM import_failures WHERE starts_with(object_key, %s) AND failed_at >= %s",
            (f"{settings.enriched_prefix}dt={day.isoformat()}/", started_at),
        ).fetchone()[0]
    lost = sum(max(0, n - rows.get(c, 0)) for c, n in expected.items())
    duplicated = sum(r["duplicates"] for r in reports.values()) + sum(
        max(0, rows.get(c, 0) - n) for c, n in expected.items()
    )
    wrong_version = sum(r["wrong_version"] for r in reports.values())
    return {
        "day": day.isoformat(),
        "reports": len(generated),
        "records": sum(expected.values()),
        "rows_loaded": sum(rows.values()),
        "runs_during_backfill": overlapped,
        "lost": lost,
        "duplicated": duplicated,
        "wrong_version": wrong_version,
        "import_failures": failures,
        "ok": lost == 0
        and duplicated == 0
        and wrong_version == 0
        and failures == 0
        and all(r["ok"] for r in reports.values()),
    }
