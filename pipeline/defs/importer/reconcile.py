"""The reconciler in Dagster: a sensor that plans bounded sweeps, and the job that does them.

Each tick of ``import_reconciler`` lists a few prefixes (never objects) to pick the next slices
of the enriched prefix (one customer's day each, ``PIPELINE_RECONCILE_SLICES`` of them, after
its cursor) and requests one run of ``import_reconcile_job`` over them; the run lists those
slices, compares them with the ledger and the rows, and puts what drifted in the import inbox
(``pipeline.importer.reconcile``). The sweep goes round the whole prefix, slice by slice, and
starts over; a tick costs the same with ten objects or ten million. For a full sweep at once,
launch the job with ``everything: true`` from the UI, or run ``pipeline reconcile``; at
production scale an S3 Inventory report is the cheaper full listing (docs/ARCHITECTURE.md).
"""

import hashlib
import json

from dagster import (
    Config,
    DefaultSensorStatus,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    sensor,
)

from pipeline import config, names
from pipeline.defs.resources import ImportQueueResource, WarehouseResource
from pipeline.importer.batch import connect


class ReconcileConfig(Config):
    slices: list[str] = []  # enriched/customer=<id>/dt=<day>/ prefixes
    everything: bool = False  # the whole enriched prefix, at once


@op(description="Compares slices of the enriched prefix with the ledger and the rows; puts the drift in the inbox.")
def reconcile_slices(
    context: OpExecutionContext,
    config: ReconcileConfig,
    import_queue: ImportQueueResource,
    warehouse: WarehouseResource,
) -> None:
    from pipeline.importer.reconcile import reconcile_slices as sweep

    settings = import_queue.settings()
    s3 = import_queue.stack.client("s3")
    slices = [settings.enriched_prefix] if config.everything else list(config.slices)
    bad = [s for s in slices if not s.startswith(settings.enriched_prefix)]
    if bad:
        raise ValueError(f"slices outside the enriched prefix {settings.enriched_prefix!r}: {bad[:3]}")
    with connect(warehouse.database_url()) as conn:
        drift, made = sweep(conn, s3, settings.enriched_bucket, settings.enriched_prefix, slices)
    summary = drift.summary()
    if drift.total:
        context.log.warning(f"reconcile drift {summary}: {made} object(s) put in the import inbox")
    else:
        context.log.info(f"reconcile: {len(slices)} slice(s) reflect S3")
    context.add_output_metadata(
        {
            "slices": len(slices),
            "first_slice": slices[0] if slices else "",
            "last_slice": slices[-1] if slices else "",
            "unloaded": len(drift.unloaded),
            "removed": len(drift.removed),
            "partial": len(drift.partial),
            "stray_loads": len(drift.stray_loads),
            "inbox_rows_made": made,
            "unloaded_keys": MetadataValue.json([v.key for v in drift.unloaded[:20]]),
        }
    )


@job(
    description="The reconciler: slices of the enriched prefix against the warehouse (import_reconciler plans "
    "one run per tick; launch it with everything: true for a full sweep)."
)
def import_reconcile_job():
    reconcile_slices()


@sensor(
    name="import_reconciler",
    job=import_reconcile_job,
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.RUNNING,
    description="Plans the reconciler's sweep: the next PIPELINE_RECONCILE_SLICES slices (customer and day) of the "
    "enriched prefix per tick, one run of import_reconcile_job over them; round and round.",
)
def import_reconciler(context: SensorEvaluationContext, import_queue: ImportQueueResource) -> SensorResult | SkipReason:
    from pipeline.importer.reconcile import next_slices

    settings = import_queue.settings()
    s3 = import_queue.stack.client("s3")
    state = json.loads(context.cursor) if context.cursor else {"after": None, "round": 0}
    slices, after = next_slices(
        s3, settings.enriched_bucket, settings.enriched_prefix, state["after"], config.get("PIPELINE_RECONCILE_SLICES")
    )
    cursor = json.dumps({"after": after, "round": state["round"] + (after is None)})
    if not slices:
        return SkipReason("the enriched prefix holds no slice to reconcile")
    digest = hashlib.sha256("\n".join(slices).encode()).hexdigest()[:12]
    request = RunRequest(
        job_name=import_reconcile_job.name,
        run_key=f"reconcile-{state['round']}-{digest}",
        run_config={"ops": {"reconcile_slices": {"config": {"slices": slices}}}},
        tags={"pipeline/reconcile_round": str(state["round"]), **names.STAGE_TAGS["reconcile"]},
    )
    return SensorResult(run_requests=[request], cursor=cursor)
