"""The names the Dagster UI, the run queue and the capacity controller share: assets, sensors,
partitions and run tags, spelled once. Plain strings, no Dagster import, so the stage cores
(the capacity controller counts runs by these tags) use them too."""

# Assets
RAW_TELEMETRY = "raw_telemetry"
ENRICHED_TELEMETRY = "enriched_telemetry"
TELEMETRY_EVENTS = "telemetry_events"
DAILY_DOMAIN_COMPLIANCE = "daily_domain_compliance"
DAILY_SOURCE_SUMMARY = "daily_source_summary"

# Sensors
RAW_SENSOR = "raw_telemetry_sensor"
IMPORT_SENSOR = "import_queue_sensor"
WORKER_LOADS_SENSOR = "worker_loads_sensor"
CAPACITY_SENSOR = "capacity_sensor"

# Partitions
ENRICHED_OBJECTS = "enriched_objects"  # one dynamic partition per enriched S3 object

# Run tags: Dagster's own
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# Run tags: the pipeline's
STAGE_TAG = "pipeline/stage"
RETRIES_TAG = "dagster/max_retries"
# Who retries what (one owner per retry): an import run never (the inbox backs each object off
# and counts its attempts); an enrichment run once (a lost executor; the next report's run
# enriches its day again anyway); a reconcile run never (the next tick sweeps on).
STAGE_TAGS = {
    "import": {STAGE_TAG: "import", RETRIES_TAG: "0"},
    "enrich": {STAGE_TAG: "enrich", RETRIES_TAG: "1"},
    "reconcile": {STAGE_TAG: "reconcile", RETRIES_TAG: "0"},
}
OBJECTS_TAG = "pipeline/objects"  # objects an import run carries
INBOX_TAG = "pipeline/inbox"  # "1": the run takes its work from the import inbox
