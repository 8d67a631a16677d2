from dagster import Definitions

from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.importer.sensors import import_queue_sensor, import_reconciler, prune_object_partitions

defs = Definitions(
    assets=[telemetry_events],
    sensors=[import_queue_sensor, import_reconciler, prune_object_partitions],
)
