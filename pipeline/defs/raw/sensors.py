"""raw_telemetry_sensor: reports new raw objects as materializations of their day partitions."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from dagster import (
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from pipeline import config, names
from pipeline.collector.catalog import raw_object_stats
from pipeline.defs.partitions import FIRST_DAY
from pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from pipeline.importer.batch import connect

HEAD_THREADS = 16
RAW_INBOX_RETENTION_DAYS = 7.0  # past the sweep's reach (a few recent days): history


def _read_cursor(cursor: str | None) -> dict:
    doc = json.loads(cursor) if cursor else {}
    if not isinstance(doc, dict) or "reported" not in doc:  # a cursor of the listing sensor before
        return {"reported": 0, "sweep": None, "swept_at": None}
    return {
        "reported": int(doc["reported"]),
        "reported_at": doc.get("reported_at"),
        "tokens": doc.get("tokens"),
        "tokens_at": doc.get("tokens_at"),
        "sweep": doc.get("sweep"),
        "swept_at": doc.get("swept_at"),
    }


@sensor(
    name=names.RAW_SENSOR,
    # A report after a quiet spell waits at most this; PIPELINE_RAW_RUN_INTERVAL_S (detection.may_report)
    # spaces the ticks that report under a steady load, which is what bounds the batches and partitions.
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    # The target of its run requests: without it the daemon refuses them (in-process driving
    # does not check, so only `pipeline dev` showed it).
    asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
    description="Takes in the raw bucket's notifications (and sweeps recent days for lost ones), reports the new "
    "raw objects as raw_telemetry materializations, and requests enrichment of their days.",
)
def raw_telemetry_sensor(
    context: SensorEvaluationContext, object_store: ObjectStoreResource, warehouse: WarehouseResource
) -> SensorResult:
    from pipeline.enrich import detection

    settings = object_store.stack.settings()
    bucket = object_store.raw_bucket_name()
    state = _read_cursor(context.cursor)
    if not settings.raw_queue_url:
        context.log.warning(
            "raw_telemetry: no raw queue (PIPELINE_RAW_QUEUE_URL; `pipeline down && pipeline up` makes one): "
            "new objects are found by the sweep of recent days only"
        )
    with connect(warehouse.database_url()) as conn:
        done = detection.tick(
            conn,
            object_store.stack.client("sqs") if settings.raw_queue_url else None,
            settings.raw_queue_url,
            object_store.s3,
            bucket,
            settings.raw_prefix,
            state,
            config.get("PIPELINE_RAW_RUN_INTERVAL_S"),
            config.get("PIPELINE_RAW_RUN_BURST"),
        )
        detection.prune(conn, RAW_INBOX_RETENTION_DAYS)
    fresh, taken, swept = done["fresh"], done, done["swept"]
    cursor = json.dumps(state)
    if done["held"]:
        interval = config.get("PIPELINE_RAW_RUN_INTERVAL_S")
        ago = time.time() - float(state["reported_at"])
        return SensorResult(
            cursor=cursor,
            skip_reason=f"new objects were reported {ago:.0f} s ago, and reports are spaced by "
            f"PIPELINE_RAW_RUN_INTERVAL_S ({interval:g} s, bursts of PIPELINE_RAW_RUN_BURST): what is new since is "
            f"reported within {interval:g} s ({taken['messages']} notification(s) taken in meanwhile)",
        )
    by_day: dict[str, list] = defaultdict(list)
    outside: dict[str, int] = defaultdict(int)
    last = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    for obj in fresh:
        if obj.day < FIRST_DAY.isoformat() or obj.day > last:
            outside[obj.day] += 1  # no partition holds it: the collector refuses such reports today
        else:
            by_day[obj.day].append(obj)
    for day, count in sorted(outside.items()):
        context.log.warning(
            f"raw_telemetry: {count} object(s) dated {day}, outside the calendar ({FIRST_DAY} to tomorrow, "
            "PIPELINE_FIRST_DAY): not reported or enriched; set PIPELINE_FIRST_DAY earlier to include them"
        )
    events = []
    s3 = object_store.s3
    with ThreadPoolExecutor(HEAD_THREADS) as pool:  # a HEAD per new object: round trips, not work
        found_of = dict(zip(fresh, pool.map(lambda o: raw_object_stats(s3, bucket, o.key), fresh), strict=True))
    for day in sorted(by_day):
        stats, objects = [], []
        for obj in by_day[day]:
            found = found_of[obj]
            if found is None:
                context.log.info(f"raw_telemetry: {obj.key} is gone since its notification; not reported")
                continue
            stats.append(found)
            objects.append(obj)
        by_day[day] = objects
        if not objects:
            del by_day[day]
            continue
        events.append(
            AssetMaterialization(
                asset_key=names.RAW_TELEMETRY,
                partition=day,
                description=f"{len(objects)} report object(s) written by the collector",
                metadata={
                    "objects": len(objects),
                    "records": sum(s.records for s in stats),
                    "messages": sum(s.messages for s in stats),
                    "bytes": sum(o.size or 0 for o in objects),
                    "customers": MetadataValue.json(sorted({o.customer_id for o in objects})),
                    "keys": MetadataValue.json([o.key for o in objects[:20]]),
                },
            )
        )
    if fresh or taken["messages"] or swept:
        context.log.info(
            f"raw_telemetry: {taken['messages']} notification(s), {swept} found by the sweep, "
            f"{len(fresh)} new object(s) over {len(by_day)} day(s)"
        )
    customers = {day: sorted({o.customer_id for o in objects}) for day, objects in by_day.items()}
    return SensorResult(asset_events=events, cursor=cursor, run_requests=enrichment_requests(customers, cursor))


def day_ranges(days: list[str]) -> list[tuple[str, str]]:
    """Consecutive days grouped: ['2026-11-01', '2026-11-02', '2026-11-05'] -> two ranges."""
    ranges: list[tuple[str, str]] = []
    for day in sorted(days):
        if ranges and dt.date.fromisoformat(day) - dt.date.fromisoformat(ranges[-1][1]) == dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def enrichment_requests(customers_by_day: dict[str, list[str]], cursor: str | None) -> list[RunRequest]:
    """One enrichment run (one Spark session) per range of consecutive days with new raw data,
    of the customers whose new objects those days hold (the others' days are not read again)."""
    salt = hashlib.sha256((cursor or "").encode()).hexdigest()[:12]
    requests = []
    for start, end in day_ranges(sorted(customers_by_day)):
        customers = sorted({c for day, cs in customers_by_day.items() if start <= day <= end for c in cs})
        requests.append(
            RunRequest(
                run_key=f"enrich-{start}-{end}-{salt}",
                asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
                tags={names.RANGE_START_TAG: start, names.RANGE_END_TAG: end, **names.STAGE_TAGS["enrich"]},
                run_config={"ops": {names.ENRICHED_TELEMETRY: {"config": {"customers": customers}}}},
            )
        )
    return requests
