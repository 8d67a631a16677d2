"""The dynamic partitions held at production load, by simulation (issue #22).

The load model: ``customers`` customers, each with ``reports_per_day`` reports a day, a report
of day D arriving at a uniformly random time in [D, D + ``arrival_hours``). Every
``tick_seconds`` (the raw sensor's interval) the raw sensor ticks; when the **real** gate
(``detection.may_report``: ``PIPELINE_RAW_RUN_INTERVAL_S``, ``PIPELINE_RAW_RUN_BURST``) lets it
report, it takes what arrived since its last report, and the simulation runs the **real**
planning and naming code on it: ``enrichment_requests`` (the raw sensor's run requests),
``new_batches`` (the batches a run records for what is new), ``Batch.prefix`` and
``partition_key`` (the enriched object's key and its Dagster partition). A partition is held
from its object's publication until the prune sensor removes it
(``PIPELINE_PARTITION_RETENTION_DAYS`` after it settled). The figure is the most partitions
held at once, after a warm-up as long as the arrival window.

The same arrivals are also counted for the granularities the design did not choose: one
partition per raw object, and per (customer, day, batch).
"""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np

from pipeline import config
from pipeline.enrich.ledger import RawVersion, new_batches
from pipeline.importer.partitions import partition_key

RAW_OBJECT_BYTES = 3_000  # a gzip raw object of a typical report (a few records)


def simulate(
    customers: int = 10_000,
    reports_per_day: int = 200,
    arrival_hours: float = 48.0,
    retention_days: float | None = None,
    tick_seconds: int | None = None,
    run_interval_s: float | None = None,
    seed: int = 8,
    progress=None,
) -> dict:
    retention_days = config.get("PIPELINE_PARTITION_RETENTION_DAYS") if retention_days is None else retention_days
    from pipeline.defs.raw.sensors import enrichment_requests, raw_telemetry_sensor
    from pipeline.enrich.detection import may_report, spend

    tick_seconds = tick_seconds or raw_telemetry_sensor.minimum_interval_seconds  # as the daemon ticks it
    run_interval_s = config.get("PIPELINE_RAW_RUN_INTERVAL_S") if run_interval_s is None else run_interval_s
    burst = config.get("PIPELINE_RAW_RUN_BURST")
    gate: dict = {}
    pending: list[tuple[int, int, int]] = []  # (customer, day index, tick) arrived since the last report

    rng = np.random.default_rng(seed)
    rate = customers * reports_per_day / 86_400 * tick_seconds  # arrivals per tick
    warmup_s = arrival_hours * 3600
    total_s = warmup_s + retention_days * 86_400
    ticks = int(total_s // tick_seconds)
    epoch = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    created: list[int] = []  # per tick: partitions published
    per_object: list[int] = []
    per_customer_day: list[int] = []
    started = time.perf_counter()
    serial = 0
    max_bytes = config.get("PIPELINE_ENRICH_BATCH_BYTES")
    days: dict[int, str] = {}
    for tick in range(ticks):
        now_s = (tick + 1) * tick_seconds
        n = int(rng.poisson(rate))
        who = rng.integers(customers, size=n)
        # A report arriving now is of a day whose start lies within the arrival window before now.
        report_day = np.floor((now_s - rng.uniform(0, arrival_hours * 3600, size=n)) / 86_400).astype(int)
        pending.extend(zip(who.tolist(), report_day.tolist(), [tick] * n, strict=True))
        per_object.append(n)
        if not may_report(gate, float(now_s), run_interval_s, burst):
            created.append(0)
            per_customer_day.append(0)
            continue
        spend(gate, float(now_s), run_interval_s, burst)
        arrived, pending = pending, []
        versions = []
        for customer, day_index, at in arrived:
            day = days.get(day_index) or days.setdefault(
                day_index, (epoch.date() + dt.timedelta(days=day_index)).isoformat()
            )
            cid = f"c{customer:05d}"
            serial += 1
            modified = epoch + dt.timedelta(seconds=(at + 1) * tick_seconds)
            versions.append(
                RawVersion(f"raw/customer={cid}/dt={day}/r{serial}.jsonl.gz", "e", RAW_OBJECT_BYTES, cid, day, modified)
            )
        by_day: dict[str, set[str]] = {}
        for version in versions:
            by_day.setdefault(version.day, set()).add(version.customer)
        keys = set()
        for request in enrichment_requests({d: sorted(c) for d, c in by_day.items()}, json.dumps({"tick": tick})):
            start, end = (
                request.tags["dagster/asset_partition_range_start"],
                request.tags["dagster/asset_partition_range_end"],
            )
            scope = set(request.run_config["ops"]["enriched_telemetry"]["config"]["customers"])
            run = [v for v in versions if start <= v.day <= end and v.customer in scope]
            for batch in new_batches(run, max_bytes):
                key = batch.prefix("enriched/") + "part-00000.parquet"
                keys.add(partition_key("enriched-bucket", key, "enriched/"))
        created.append(len(keys))
        per_customer_day.append(len({(v.customer, v.day) for v in versions}))
        if progress and tick % (86_400 // tick_seconds) == 0:
            progress(f"simulated {tick * tick_seconds / 86_400:.1f} of {total_s / 86_400:.1f} days")
    held_ticks = int(retention_days * 86_400 // tick_seconds)
    warm = int(warmup_s // tick_seconds)

    def held(series: list[int]) -> int:
        sums = np.convolve(np.asarray(series), np.ones(held_ticks, dtype=int), mode="valid")
        return int(sums[max(0, warm - held_ticks) :].max()) if len(sums) else int(sum(series))

    return {
        "model": {
            "customers": customers,
            "reports_per_day": reports_per_day,
            "arrival_hours": arrival_hours,
            "retention_days": retention_days,
            "tick_seconds": tick_seconds,
            "run_interval_s": run_interval_s,
        },
        "partitions_at_production_load": held(created),
        "partitions_per_raw_object": held(per_object),
        "partitions_per_customer_day_batch": held(per_customer_day),
        "raw_objects_per_report": round(rate * max(run_interval_s, tick_seconds) / tick_seconds, 1),
        "simulation_s": round(time.perf_counter() - started, 1),
    }
