from dagster import Definitions

from pipeline.defs.importer.assets import telemetry_events
from pipeline.defs.importer.reconcile import import_reconcile_job, import_reconciler
from pipeline.defs.importer.sensors import import_queue_sensor, prune_object_partitions
from pipeline.defs.importer.worker_loads import worker_loads_sensor
from pipeline.defs.metadata import with_code_references

defs = Definitions(
    assets=with_code_references([telemetry_events]),  # the UI links each asset to its code
    jobs=[import_reconcile_job],
    sensors=[import_queue_sensor, import_reconciler, prune_object_partitions, worker_loads_sensor],
)
