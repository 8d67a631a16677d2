"""raw_telemetry_sensor: reports new raw objects as materializations of their day partitions."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict

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

from pipeline import names
from pipeline.collector.catalog import list_raw_objects, raw_object_stats
from pipeline.defs.partitions import FIRST_DAY
from pipeline.defs.resources import ObjectStoreResource

# S3's LastModified has one-second resolution: objects written in the cursor's second may be
# listed later than others of that second, so the last few seconds are looked at again and the
# keys already reported there are remembered.
_OVERLAP = dt.timedelta(seconds=5)
MAX_OBJECTS_PER_TICK = 500


def _read_cursor(cursor: str | None) -> tuple[dt.datetime | None, set[str]]:
    if not cursor:
        return None, set()
    doc = json.loads(cursor)
    return dt.datetime.fromisoformat(doc["last_modified"]), set(doc["recent"])


def new_raw_objects(object_store: ObjectStoreResource, cursor: str | None, limit: int = MAX_OBJECTS_PER_TICK):
    """(objects to report, next cursor), oldest first, at most ``limit``."""
    since, recent = _read_cursor(cursor)
    settings = object_store.stack.settings()
    listed = list_raw_objects(object_store.s3, object_store.raw_bucket_name(), settings.raw_prefix)
    candidates = sorted(o for o in listed if since is None or o.last_modified > since - _OVERLAP)
    fresh = [o for o in candidates if o.key not in recent][:limit]
    if not fresh:
        return [], cursor
    newest = fresh[-1].last_modified
    reported = recent | {o.key for o in fresh}
    # Remember the reported keys inside the new cursor's overlap window, and only those.
    window = sorted(o.key for o in candidates if o.last_modified > newest - _OVERLAP and o.key in reported)
    return fresh, json.dumps({"last_modified": newest.isoformat(), "recent": window})


@sensor(
    name=names.RAW_SENSOR,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    # The target of its run requests: without it the daemon refuses them (in-process driving
    # does not check, so only `pipeline dev` showed it).
    asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
    description="Reports objects the collector wrote to the raw prefix as raw_telemetry materializations, and "
    "requests enrichment of their days.",
)
def raw_telemetry_sensor(context: SensorEvaluationContext, object_store: ObjectStoreResource) -> SensorResult:
    fresh, cursor = new_raw_objects(object_store, context.cursor)
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
    bucket = object_store.raw_bucket_name()
    for day, objects in sorted(by_day.items()):
        stats = [raw_object_stats(object_store.s3, bucket, o.key) for o in objects]
        events.append(
            AssetMaterialization(
                asset_key=names.RAW_TELEMETRY,
                partition=day,
                description=f"{len(objects)} report object(s) written by the collector",
                metadata={
                    "objects": len(objects),
                    "records": sum(s.records for s in stats),
                    "messages": sum(s.messages for s in stats),
                    "bytes": sum(o.size for o in objects),
                    "customers": MetadataValue.json(sorted({o.customer_id for o in objects})),
                    "keys": MetadataValue.json([o.key for o in objects[:20]]),
                },
            )
        )
    if fresh:
        context.log.info(f"raw_telemetry: {len(fresh)} new object(s) over {len(by_day)} day(s)")
    return SensorResult(asset_events=events, cursor=cursor, run_requests=enrichment_requests(sorted(by_day), cursor))


def day_ranges(days: list[str]) -> list[tuple[str, str]]:
    """Consecutive days grouped: ['2026-11-01', '2026-11-02', '2026-11-05'] -> two ranges."""
    ranges: list[tuple[str, str]] = []
    for day in sorted(days):
        if ranges and dt.date.fromisoformat(day) - dt.date.fromisoformat(ranges[-1][1]) == dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def enrichment_requests(days: list[str], cursor: str | None) -> list[RunRequest]:
    """One enrichment run (one Spark session) per range of consecutive days with new raw data."""
    salt = hashlib.sha256((cursor or "").encode()).hexdigest()[:12]
    return [
        RunRequest(
            run_key=f"enrich-{start}-{end}-{salt}",
            asset_selection=[AssetKey(names.ENRICHED_TELEMETRY)],
            tags={names.RANGE_START_TAG: start, names.RANGE_END_TAG: end},
        )
        for start, end in day_ranges(days)
    ]
