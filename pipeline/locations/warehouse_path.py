"""A code location with the import path and the customers' side: the warehouse asset, the import
sensor, the projections, the alerts and the automation sensor that refreshes them. The automation
test's daemon loads it (no Spark enrichment starts for raw objects the stack may hold)."""

from dagster import Definitions, in_process_executor

from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.importer.sensors import import_queue_sensor
from pipeline.defs.reports import definitions as reports
from pipeline.defs.resources import resource_defs

defs = Definitions.merge(
    Definitions(assets=[telemetry_events], sensors=[import_queue_sensor]),
    reports.defs,
    Definitions(resources=resource_defs(), executor=in_process_executor),  # as pipeline.definitions
)
