from dagster import Definitions

from pipeline.defs.warehouse.assets import telemetry_events
from pipeline.defs.warehouse.projections import warehouse_projections
from pipeline.defs.warehouse.sensors import import_queue_sensor, import_reconciler, prune_object_partitions

defs = Definitions(
    assets=[telemetry_events, warehouse_projections],
    sensors=[import_queue_sensor, import_reconciler, prune_object_partitions],
)
