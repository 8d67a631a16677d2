"""raw_telemetry: the collector's objects in S3. Written outside Dagster, reported by a sensor."""

from dagster import AssetSpec

from pipeline import names
from pipeline.defs.metadata import RAW_COLUMNS
from pipeline.defs.partitions import telemetry_days

raw_telemetry = AssetSpec(
    key=names.RAW_TELEMETRY,
    description=(
        "DMARC aggregate report records as the on-premise collector wrote them: gzip NDJSON, one "
        "object per report, at raw/customer=<id>/dt=<day>/<org>_<identity>.jsonl.gz. Written by "
        "`pipeline collect`; `raw_telemetry_sensor` reports each new object as a materialization "
        "of its day."
    ),
    partitions_def=telemetry_days,
    group_name="raw",
    kinds={"s3"},
    metadata={
        "key_layout": "raw/customer=<id>/dt=<yyyy-mm-dd>/<org>_<identity>.jsonl.gz",
        "dagster/column_schema": RAW_COLUMNS,
    },
)
