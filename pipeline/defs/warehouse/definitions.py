"""Warehouse upkeep: telemetry_events' partitions ahead of the data, retention past the horizon.

``warehouse_maintenance_daily`` (03:30 UTC, running from the first deploy) runs the
``warehouse_maintenance`` job: this month's partition and the next two exist before any load
needs them, and, with PIPELINE_RETENTION_DAYS set, the partitions whose every day is past the
horizon are detached and dropped with their projections and bookkeeping
(pipeline.warehouse.retention). Each run records an observation of ``telemetry_events``: the
horizon, the partitions, what was dropped; the catalog shows retention's history beside the loads.
"""

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultScheduleStatus,
    Definitions,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from pipeline import names
from pipeline.defs.resources import WarehouseResource


@op(description="Create telemetry_events' partitions ahead; drop those past PIPELINE_RETENTION_DAYS (no DELETE).")
def maintain_warehouse(context: OpExecutionContext, warehouse: WarehouseResource) -> None:
    import psycopg

    from pipeline.warehouse import partitions, retention

    url = warehouse.database_url()
    result = retention.apply(url)
    with psycopg.connect(url) as conn:
        kept = partitions.partitions(conn)
    for dropped in result.dropped:
        context.log.info(
            f"retention dropped partition={dropped.name} days={dropped.first_day}..{dropped.last_day} "
            f"rows={dropped.rows} seconds={dropped.seconds}"
        )
    if result.horizon is None:
        context.log.info("retention: PIPELINE_RETENTION_DAYS is unset, every day is kept")
    context.log_event(
        AssetObservation(
            asset_key=AssetKey(names.TELEMETRY_EVENTS),
            metadata={
                "retention_days": result.retention_days if result.retention_days is not None else "unset",
                "horizon": result.horizon or "none (everything kept)",
                "partitions": len(kept),
                "first_partition": kept[0].name if kept else "",
                "last_partition": kept[-1].name if kept else "",
                "partitions_created": result.partitions_created,
                "partitions_dropped": MetadataValue.json([d.name for d in result.dropped]),
                "rows_removed": result.rows_removed,
                "ledger_rows_removed": result.ledger_rows_removed,
                "slices_refreshed": result.slices_refreshed,
                "seconds": result.seconds,
            },
        )
    )


@job(description="telemetry_events' monthly partitions: created ahead, dropped past the retention horizon.")
def warehouse_maintenance():
    maintain_warehouse()


warehouse_maintenance_daily = ScheduleDefinition(
    name="warehouse_maintenance_daily",
    job=warehouse_maintenance,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)

defs = Definitions(jobs=[warehouse_maintenance], schedules=[warehouse_maintenance_daily])
