"""A code location with only the import path (warehouse asset, import sensor, capacity sensor):
the launcher test's daemon must not start Spark for the raw objects other tests left behind."""

from dagster import Definitions

from pipeline.defs.resources import resource_defs
from pipeline.defs.scaling import definitions as scaling
from pipeline.defs.warehouse.assets import telemetry_events
from pipeline.defs.warehouse.sensors import import_queue_sensor

defs = Definitions.merge(
    Definitions(assets=[telemetry_events], sensors=[import_queue_sensor]),
    scaling.defs,
    Definitions(resources=resource_defs()),
)
