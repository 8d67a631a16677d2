"""telemetry_events: the warehouse's fact table, one dynamic partition per enriched S3 object."""

import dataclasses
import typing
from datetime import timedelta

import pydantic
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetMaterialization,
    BackfillPolicy,
    Config,
    Failure,
    FreshnessPolicy,
    MetadataValue,
    asset,
)
from pydantic import Field

from pipeline import config as knobs
from pipeline import names
from pipeline.defs.metadata import EVENT_COLUMNS
from pipeline.defs.partitions import enriched_objects
from pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from pipeline.importer import inbox
from pipeline.importer.batch import ImportItem, connect, import_items
from pipeline.importer.events import ObjectVersion
from pipeline.importer.inbox import InboxPolicy
from pipeline.importer.load import current_object
from pipeline.importer.partitions import objects_for


def _config_of(cls) -> type[Config]:
    """The run-config class of a plain dataclass: the same fields, types and defaults, so that the
    object version has one description (pipeline.importer.events.ObjectVersion)."""
    hints = typing.get_type_hints(cls)
    fields_ = {
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(cls)
    }
    return pydantic.create_model(f"{cls.__name__}Config", __base__=Config, __doc__=cls.__doc__, **fields_)


ObjectVersionConfig = _config_of(ObjectVersion)


class ImportItemConfig(Config):
    version: ObjectVersionConfig
    partition_key: str
    inbox_id: int | None = None
    repair: bool = False


class ImportConfig(Config):
    items: list[ImportItemConfig] = Field(
        default_factory=list,
        description="Object versions and their import inbox rows, filled in by import_queue_sensor. Empty for "
        "a backfill from the UI: the run then imports each partition's current object.",
    )
    streams: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Objects loaded at once, each on its own connection (default: PIPELINE_IMPORT_STREAMS, 2).",
    )


def _log_materializations(context: AssetExecutionContext, materializations: list[AssetMaterialization]) -> None:
    """One materialization per object, written to the event log as one batch.

    What `context.log_event` does per event, with Dagster's event batch metadata, so that
    dagster-postgres stores the run's materializations in one insert instead of one round trip
    (and one asset-index update) per object. Batching needs DAGSTER_EVENT_BATCH_SIZE > 0 in the
    run's process; it is set here unless the deployment set it (0 turns batching off).
    """
    import os
    import uuid

    from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata

    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    op_context = context.op_execution_context
    step_context = op_context._step_execution_context  # what log_event uses
    batch_id = f"import-{uuid.uuid4().hex}"
    for index, materialization in enumerate(materializations):
        last = index == len(materializations) - 1
        op_context._events.append(
            DagsterEvent.asset_materialization(
                step_context, materialization, batch_metadata=DagsterEventBatchMetadata(batch_id, last)
            )
        )


def _current_versions(warehouse: WarehouseResource, s3, keys: list[str]) -> tuple[list[ImportItem], dict]:
    """Items for partitions materialized without a message (backfills): each object's version now."""
    with connect(warehouse.database_url()) as conn:
        known = objects_for(conn, keys)
    items, unknown = [], {}
    for key in keys:
        if key not in known:
            unknown[key] = "no object is recorded for this partition key"
            continue
        bucket, object_key = known[key]
        now = current_object(s3, bucket, object_key)
        if now is None:
            version = ObjectVersion(bucket, object_key, "removed@backfill", event_name="ObjectRemoved:Delete")
        else:
            version = ObjectVersion(bucket, object_key, now.identity, now.etag, now.size)
        items.append(ImportItem(version, key))
    return items, unknown


@asset(
    key=names.TELEMETRY_EVENTS,
    group_name="warehouse",
    partitions_def=enriched_objects,
    # Lineage: every object comes from some day of enriched_telemetry; which day is in its key.
    deps=[AssetDep(names.ENRICHED_TELEMETRY, partition_mapping=AllPartitionMapping())],
    backfill_policy=BackfillPolicy.single_run(),
    output_required=False,
    kinds={"postgres"},
    description=(
        "Telemetry events in PostgreSQL, one immutable row per enriched record, unique by event_id. "
        "Each partition is one enriched S3 object; a run imports many objects, each in its own "
        "transaction (ledger claim, supersession, COPY), settling the object's import inbox row in "
        "that same transaction. Re-materializing a partition (a backfill) is idempotent."
    ),
    tags={names.STAGE_TAG: "import"},
    # op-level concurrency for the runs no sensor tagged (backfills from the UI); the sensor's
    # runs are limited by their pipeline/stage tag (deploy/dagster/dagster.yaml)
    pool="import",
    # Reports trickle in all day from many receivers: hours without a single import means the
    # path is stuck (a dead daemon, a full dead-letter queue), not a quiet day. Dagster's freshness
    # daemon evaluates it; the asset turns failing in the UI and its freshness events alert.
    freshness_policy=FreshnessPolicy.time_window(
        fail_window=timedelta(hours=knobs.get("PIPELINE_IMPORT_FRESHNESS_HOURS")),
        warn_window=timedelta(hours=knobs.get("PIPELINE_IMPORT_FRESHNESS_HOURS") / 2),
    ),
    owners=["team:data-platform"],
    metadata={"dagster/column_schema": EVENT_COLUMNS, "dagster/table_name": "telemetry_events"},
)
def telemetry_events(
    context: AssetExecutionContext,
    config: ImportConfig,
    object_store: ObjectStoreResource,
    warehouse: WarehouseResource,
):
    keys = list(context.partition_keys)
    items = [ImportItem.from_config(i.model_dump()) for i in config.items if i.partition_key in set(keys)]
    given = {i.partition_key for i in items}
    extra, unknown = _current_versions(warehouse, object_store.s3, [k for k in keys if k not in given])
    items.extend(extra)
    context.log.info(f"importing {len(items)} object version(s) for {len(keys)} partition(s)")
    owner = context.run.tags.get(names.RUN_KEY_TAG)  # the sensor handed the rows to this run key
    policy = InboxPolicy.from_env()
    outcomes = import_items(
        warehouse.database_url(),
        object_store.s3,
        items,
        run_id=context.run_id,
        worker=f"dagster:{context.run_id[:8]}",
        owner=owner,
        lease_s=policy.plan_lease_s,
        streams=config.streams,
    )
    if len(outcomes) < len(items):  # stopped early: the rest is due again for the next plan
        done = {id(o.item) for o in outcomes}
        with connect(warehouse.database_url()) as conn:
            inbox.release(conn, [i.inbox_id for i in items if id(i) not in done and i.inbox_id is not None])
    failed: dict[str, str] = dict(unknown)
    reported: set[str] = set()
    materializations: list[AssetMaterialization] = []
    for outcome in outcomes:
        key = outcome.item.partition_key
        if not outcome.ok:
            failed[key] = outcome.error
            continue
        if key in reported:
            continue  # a duplicate delivery of the same object in the same run
        reported.add(key)
        result, version = outcome.result, outcome.item.version
        materializations.append(
            AssetMaterialization(
                asset_key=context.asset_key,
                partition=key,
                metadata={
                    "outcome": result.outcome,
                    "rows": result.rows,
                    "bytes": result.bytes,
                    "object": MetadataValue.path(f"s3://{version.bucket}/{version.key}"),
                    "object_version": version.version,
                    "ledger_id": result.ledger_id or 0,
                    "superseded": result.superseded,
                    "seconds": round(result.seconds, 4),
                    "inbox_id": outcome.item.inbox_id or 0,
                    "dagster/row_count": result.rows,  # Dagster's own keys: the UI's columns and search
                    "dagster/uri": f"s3://{version.bucket}/{version.key}",
                },
            )
        )
    _log_materializations(context, materializations)
    loaded = any(o.ok and o.result.outcome in {"loaded", "tombstoned"} for o in outcomes)
    if loaded and knobs.get("PIPELINE_IMPORT_REFRESH"):
        # The customers' pages follow the import now, not after the automation sensor's next run
        # of warehouse_projections (which still follows, records the refresh, and evaluates alerts).
        # Skipped when another refresh holds the lock: that one, or the next, takes these slices.
        from pipeline.warehouse.projections import refresh

        refreshed = refresh(warehouse.database_url(), wait=False)
        if refreshed is not None:
            context.log.info(f"projections refreshed after the import: slices={refreshed.slices}")
    if failed:
        raise Failure(
            description=f"{len(failed)} of {len(keys)} object(s) failed to import; they wait in the import inbox "
            "for their next attempt (after the last one, in its dead letters). See `pipeline import-status`.",
            metadata={"failed": MetadataValue.json(failed)},
        )
    yield from ()
