from dagster import Definitions

from pipeline.defs.scaling.sensors import capacity_sensor

defs = Definitions(sensors=[capacity_sensor])
