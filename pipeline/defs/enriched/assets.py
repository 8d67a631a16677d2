"""enriched_telemetry: Spark enrichment of a range of days, published to the enriched prefix."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetMaterialization,
    BackfillPolicy,
    Config,
    MetadataValue,
    asset,
)
from dagster_pyspark import LazyPySparkResource

from pipeline import names
from pipeline.defs.metadata import ENRICHED_COLUMNS
from pipeline.defs.partitions import telemetry_days
from pipeline.defs.resources import ObjectStoreResource
from pipeline.enrich.java import require_java
from pipeline.enrich.model import MODEL_VERSION
from pipeline.enrich.spark import enrich_days


class EnrichConfig(Config):
    """customers: only these customers' raw objects of the run's days (the raw sensor names the
    customers with new reports); empty, as a backfill from the UI leaves it: every customer.
    reprocess: enrich every batch of the days again (a fix with no new model or reference data);
    without it a run, a sensor's or a backfill's, enriches only what no run has enriched under
    the current model and reference data."""

    customers: list[str] = []
    reprocess: bool = False


ROWS_MATCH = "enriched_rows_match_raw"
NO_NULL_EVENT_ID = "no_null_event_id"
ROWS_MATCH_KEY = "rows_match_their_object_key"


@asset(
    key=names.ENRICHED_TELEMETRY,
    group_name="enriched",
    partitions_def=telemetry_days,
    deps=[names.RAW_TELEMETRY],
    # A backfill of many days is one run and one Spark session, not one per day.
    backfill_policy=BackfillPolicy.single_run(),
    output_required=False,
    kinds={"spark", "s3", "parquet"},
    metadata={"dagster/column_schema": ENRICHED_COLUMNS},
    pool="enrich",  # backfills from the UI share the enrichment limit with the sensor's runs
    check_specs=[
        AssetCheckSpec(
            ROWS_MATCH,
            asset=names.ENRICHED_TELEMETRY,
            description="Enriched + rescued rows equal the raw records the collector wrote.",
        ),
        AssetCheckSpec(
            NO_NULL_EVENT_ID, asset=names.ENRICHED_TELEMETRY, description="Every enriched row has an event_id."
        ),
        AssetCheckSpec(
            ROWS_MATCH_KEY,
            asset=names.ENRICHED_TELEMETRY,
            description=(
                "Every raw row names the tenant and day of its object key, and every raw object is gzip within "
                "PIPELINE_RAW_MAX_BYTES; the others are quarantined (a warning: someone wrote them)."
            ),
        ),
    ],
    description=(
        "Raw telemetry enriched by Spark: country/ASN/AS organisation (ipinfo lite), known sending service, DMARC "
        "alignment (RFC 7489, public suffix list), a sender category and trust score (model "
        f"{MODEL_VERSION}), and a deterministic event_id. A run enriches only the raw objects no run enriched under "
        "the current model and "
        "reference data (config reprocess: true enriches the days again), as batches published at "
        "enriched/dt=<day>/batch=<id>/part-N.parquet; each publish stages first, and re-enriching a batch "
        "overwrites its own objects only. Every write notifies the "
        "import queue through SNS."
    ),
)
def enriched_telemetry(
    context: AssetExecutionContext,
    config: EnrichConfig,
    pyspark: LazyPySparkResource,
    object_store: ObjectStoreResource,
):
    days = list(context.partition_keys)

    def spark_session():  # started only for a run too big to enrich in this process
        require_java()  # say what is missing before Spark fails obscurely
        return pyspark.spark_session

    settings = object_store.stack.settings()
    customers = list(config.customers) or None
    results = enrich_days(
        spark_session,
        settings,
        object_store.s3,
        days,
        context.run_id,
        customers,
        config.reprocess,
    )
    for result in results:
        context.log_event(
            AssetMaterialization(
                asset_key=context.asset_key,
                partition=result.day,
                metadata={
                    "raw_objects": result.raw_objects,
                    "raw_records": result.raw_records,
                    "enriched_rows": result.enriched_rows,
                    "rescued_rows": result.rescued_rows,
                    "foreign_rows": result.foreign_rows,
                    "quarantined_objects": result.quarantined_objects,
                    "ip_coverage": result.ip_coverage,
                    "listed_objects": result.listed_objects,
                    "skipped_objects": result.skipped_objects,
                    "new_batches": result.new_batches,
                    "reenriched_batches": result.reenriched_batches,
                    "objects_written": len(result.written),
                    "objects_unchanged": len(result.unchanged),
                    "objects_removed": len(result.removed),
                    "customers": MetadataValue.json(result.customers),
                    "categories": MetadataValue.json(result.categories),
                    "gone_objects": result.gone_objects,
                    "model_version": result.model_version,
                    "reference_data": result.reference_data,
                },
            )
        )
    mismatched = {
        r.day: {"raw": r.raw_records, "enriched": r.enriched_rows, "rescued": r.rescued_rows}
        for r in results
        if not r.rows_match
    }
    yield AssetCheckResult(
        check_name=ROWS_MATCH,
        passed=not mismatched,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "days": len(results),
            "mismatched_days": MetadataValue.json(mismatched),
            "raw_records": sum(r.raw_records for r in results),
            "enriched_rows": sum(r.enriched_rows for r in results),
            "rescued_rows": sum(r.rescued_rows for r in results),
        },
    )
    nulls = sum(r.null_event_ids for r in results)
    yield AssetCheckResult(check_name=NO_NULL_EVENT_ID, passed=nulls == 0, metadata={"null_event_ids": nulls})
    foreign = {r.day: r.foreign_rows for r in results if r.foreign_rows}
    refused = {r.day: r.quarantined_objects for r in results if r.quarantined_objects}
    yield AssetCheckResult(
        check_name=ROWS_MATCH_KEY,
        passed=not foreign and not refused,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "foreign_rows_by_day": MetadataValue.json(foreign),
            "quarantined_objects_by_day": MetadataValue.json(refused),
            "quarantine": "s3://<enriched bucket>/quarantine/customer=<id>/dt=<day>/",
        },
    )
