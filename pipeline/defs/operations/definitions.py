from dagster import Definitions

from pipeline.defs.operations.sensors import run_failure_alerts

defs = Definitions(sensors=[run_failure_alerts])
