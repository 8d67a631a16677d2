from dagster import Definitions

from pipeline.defs.warehouse.assets import telemetry_events
from pipeline.defs.warehouse.sensors import import_queue_sensor, import_reconciler, prune_object_partitions

defs = Definitions(assets=[telemetry_events], sensors=[import_queue_sensor, import_reconciler, prune_object_partitions])
