"""A code location with only the import path: the warehouse asset, the import sensor and the
capacity sensor. The launcher test's daemon and `pipeline bench import` (W2 through the daemon)
load it, so that no Spark enrichment starts for raw objects the stack may hold."""

from dagster import Definitions, in_process_executor

from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.importer.sensors import import_queue_sensor
from pipeline.defs.resources import resource_defs
from pipeline.defs.scaling import definitions as scaling

defs = Definitions.merge(
    Definitions(assets=[telemetry_events], sensors=[import_queue_sensor]),
    scaling.defs,
    Definitions(resources=resource_defs(), executor=in_process_executor),  # as pipeline.definitions
)
