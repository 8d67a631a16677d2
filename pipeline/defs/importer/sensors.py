"""import_queue_sensor: SQS -> the import inbox -> one dynamic partition per object -> runs.

Per tick (bounded: sensors time out at 60 s):

1. **intake**: long-poll up to ``max_messages`` messages; record every object version they name
   in the inbox (one transaction), then delete them from SQS (``pipeline.importer.intake``).
   Non-S3 messages go to the dead-letter queue; foreign ones to ``rejected_messages``;
2. **orphans**: rows planned for runs that are no longer queued or running, unsettled (a run
   that crashed, or was canceled), are due again (or dead after ``max_attempts`` starts);
3. **plan**: claim the due inbox rows (new ones, retries after their backoff, the reconciler's
   finds), add a partition per new object, and request runs of up to ``objects_per_run``
   objects each; the run key names the rows' plan, and the run config carries their inbox ids.

No SQS receipt is held across Dagster's run queue: a run that waits longer than any visibility
timeout finds its rows in the inbox, and a redelivered message for an object already planned
joins its row instead of making another run. Partitions added in one tick are contiguous, so a
run covers them with one partition range (BackfillPolicy single_run).
"""

from __future__ import annotations

import hashlib
import os
import time

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pipeline import config, names
from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.partitions import enriched_objects
from pipeline.defs.resources import ImportQueueResource, WarehouseResource
from pipeline.importer import inbox
from pipeline.importer.batch import ImportItem, connect
from pipeline.importer.inbox import InboxPolicy
from pipeline.importer.intake import intake_visibility_s, take_in
from pipeline.importer.partitions import partition_key, record_partitions
from pipeline.importer.queue import receive

# Per tick: PIPELINE_SENSOR_MAX_MESSAGES messages taken in and inbox rows planned, in runs of
# up to PIPELINE_OBJECTS_PER_RUN objects. A known key (an overwrite, a retry) cannot join a
# contiguous range: it runs alone, at most PIPELINE_SENSOR_SINGLE_RUNS such runs per tick; the
# rest stay due for the next ticks.
TICK_BUDGET_SECONDS = 30.0  # of the 60 s a sensor tick may take; the rest is for intake and planning
RANGE_START, RANGE_END = names.RANGE_START_TAG, names.RANGE_END_TAG
RUN_KEY_PREFIX = "import-"
ACTIVE_RUN = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def run_key(items: list[ImportItem], plans: dict[int, int], salt: str = "") -> str:
    """The plan's identity: its inbox rows and how often each was planned, so a row planned again
    (its first run crashed) gets a new run key; Dagster never runs one run key twice."""
    parts = sorted(f"{i.inbox_id}:{plans.get(i.inbox_id, 0)}:{i.partition_key}" for i in items)
    return RUN_KEY_PREFIX + hashlib.sha256(("|".join(parts) + salt).encode()).hexdigest()[:32]


def run_request(items: list[ImportItem], keys: list[str], plans: dict[int, int], salt: str = "") -> RunRequest:
    return RunRequest(
        run_key=run_key(items, plans, salt),
        asset_selection=[telemetry_events.key],
        tags={
            RANGE_START: keys[0],
            RANGE_END: keys[-1],
            names.OBJECTS_TAG: str(len(keys)),
            names.INBOX_TAG: "1",
            **names.STAGE_TAGS["import"],
        },
        run_config={"ops": {names.TELEMETRY_EVENTS: {"config": {"items": [i.to_config() for i in items]}}}},
    )


def plan_runs(
    items: list[ImportItem],
    first_seen: set[str],
    plans: dict[int, int] | None = None,
    objects_per_run: int | None = None,
    single_runs: int | None = None,
    salt: str = "",
) -> tuple[list[RunRequest], list[ImportItem]]:
    """Keys seen for the first time are added in this tick, so they are contiguous: batch them by
    range. A key seen before (an overwrite, a delete, a retry) runs alone, at most ``single_runs``
    of them; the items left over are returned (they stay due for the next tick)."""
    plans = plans or {}
    by_key: dict[str, list[ImportItem]] = {}
    for item in items:
        by_key.setdefault(item.partition_key, []).append(item)
    new = [k for k in by_key if k in first_seen]
    known = [k for k in by_key if k not in first_seen]
    requests = []
    objects_per_run = objects_per_run or config.get("PIPELINE_OBJECTS_PER_RUN")
    for start in range(0, len(new), objects_per_run):
        chunk = new[start : start + objects_per_run]
        requests.append(run_request([i for k in chunk for i in by_key[k]], chunk, plans, salt))
    limit = len(known) if single_runs is None else single_runs
    for key in known[:limit]:
        requests.append(run_request(by_key[key], [key], plans, salt))
    left = [i for key in known[limit:] for i in by_key[key]]
    return requests, left


def active_run_keys(instance) -> set[str]:
    """Run keys of import runs that are queued or running (their inbox rows are spoken for)."""
    if instance is None:
        return set()
    records = instance.get_run_records(filters=RunsFilter(statuses=ACTIVE_RUN, tags={names.INBOX_TAG: "1"}))
    return {r.dagster_run.tags.get(names.RUN_KEY_TAG) for r in records} - {None}


@sensor(
    name=names.IMPORT_SENSOR,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    asset_selection=[telemetry_events],
    description="Takes S3 notifications from SQS into the import inbox; one dynamic partition per enriched "
    "object; batched import runs planned from the inbox.",
)
def import_queue_sensor(
    context: SensorEvaluationContext, import_queue: ImportQueueResource, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    settings = import_queue.settings()
    policy = InboxPolicy.from_env()
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    with connect(warehouse.database_url()) as conn:  # the warehouse first: no receive when it is down
        messages = receive(
            import_queue.sqs,
            settings.queue_url,
            config.get("PIPELINE_SENSOR_MAX_MESSAGES"),
            wait_seconds=1,
            visibility=intake_visibility_s(),
            deadline=deadline,
        )
        intake = take_in(conn, import_queue.sqs, settings, messages)
        orphans = inbox.release_orphans(conn, active_run_keys(context.instance), RUN_KEY_PREFIX, policy)
        result, new_keys, planned = plan_from_inbox(conn, settings.enriched_prefix, policy)
    if intake.messages or orphans:
        context.log.info(f"import intake {intake.summary()} orphans_released={orphans}")
    if not planned:
        return SkipReason(f"nothing due in the import inbox ({intake.summary()})")
    result = add_partitions_now(context, result)
    context.log.info(f"import tick objects={planned} new_partitions={len(new_keys)} runs={len(result.run_requests)}")
    return result


def plan_from_inbox(conn, prefix: str, policy: InboxPolicy, limit: int | None = None, salt: str = ""):
    """Claim the due inbox rows, plan their runs, hand each run's rows to its run key.

    Returns (SensorResult, new partition keys, objects planned)."""
    planning = f"planning:{os.getpid()}:{time.time_ns()}"
    with conn.transaction():
        rows = inbox.claim(
            conn, planning, limit or config.get("PIPELINE_SENSOR_MAX_MESSAGES"), policy.plan_lease_s, policy
        )
        if not rows:
            return SensorResult(), [], 0
        items = [
            ImportItem(
                r.version,
                r.partition_key or partition_key(r.version.bucket, r.version.key, prefix),
                r.inbox_id,
                r.repair,
            )
            for r in rows
        ]
        plans = {r.inbox_id: r.plans for r in rows}
        first_seen = record_partitions(conn, {(i.partition_key, i.version.bucket, i.version.key) for i in items})
        requests, left = plan_runs(
            items, first_seen, plans, single_runs=config.get("PIPELINE_SENSOR_SINGLE_RUNS"), salt=salt
        )
        inbox.assign(
            conn,
            {r.run_key: [i["inbox_id"] for i in _config_items(r)] for r in requests},
            policy.plan_lease_s,
        )
        inbox.release(conn, [i.inbox_id for i in left], planning)
    # All keys go into the add request: first-seen ones in order (contiguous, for the ranges);
    # known ones are no-ops for Dagster unless a crash lost them between this table and Dagster.
    planned = [i for i in items if i not in left]
    keys = list(
        dict.fromkeys(
            [k for k in (i.partition_key for i in planned) if k in first_seen] + [i.partition_key for i in planned]
        )
    )
    adds = [enriched_objects.build_add_request(keys)] if keys else []
    new_keys = [k for k in keys if k in first_seen]
    return SensorResult(run_requests=requests, dynamic_partitions_requests=adds), new_keys, len(planned)


def _config_items(request: RunRequest) -> list[dict]:
    return request.run_config["ops"][names.TELEMETRY_EVENTS]["config"]["items"]


def add_partitions_now(context: SensorEvaluationContext, result: SensorResult) -> SensorResult:
    """Add the tick's partitions in one storage call instead of handing them to the daemon.

    The daemon applies an AddDynamicPartitionsRequest with one existence query per key (500
    queries for a tick of 500 objects, ~2 s before its runs are even created); the storage's
    ``add_dynamic_partitions`` takes them all in one query and one insert. Should that fail (a
    concurrent sensor adding the same key), the request goes to the daemon as usual. The keys
    are in the tick log either way (``new_partitions=``).
    """
    adds = [r for r in result.dynamic_partitions_requests or [] if isinstance(r, AddDynamicPartitionsRequest)]
    if not adds or context.instance is None:
        return result
    try:
        for request in adds:
            context.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    except Exception as exc:  # the daemon's path still adds them, key by key
        context.log.warning(f"adding partitions in the sensor failed ({exc}); the daemon adds them")
        return result
    rest = [r for r in result.dynamic_partitions_requests if not isinstance(r, AddDynamicPartitionsRequest)]
    return SensorResult(run_requests=result.run_requests, dynamic_partitions_requests=rest)


@sensor(
    name="prune_object_partitions",
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keeps enriched_objects and the import inbox bounded: removes old partitions of settled objects "
    "and old settled inbox rows (the ledger keeps the history).",
)
def prune_object_partitions(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    from pipeline.importer.partitions import mark_pruned, prunable

    retention_days = config.get("PIPELINE_PARTITION_RETENTION_DAYS")
    with connect(warehouse.database_url()) as conn:
        settled = inbox.prune_settled(conn, retention_days * 86400)
        keys = prunable(conn, retention_days * 86400)
        if not keys:
            return SkipReason(f"nothing old enough to prune ({settled} settled inbox row(s) removed)")
        mark_pruned(conn, keys)
    context.log.info(f"pruning {len(keys)} object partition(s) older than {retention_days:g} day(s)")
    return SensorResult(dynamic_partitions_requests=[enriched_objects.build_delete_request(keys)])
