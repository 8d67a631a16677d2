from dagster import Definitions

from pipeline.defs.raw.assets import raw_telemetry
from pipeline.defs.raw.sensors import raw_telemetry_sensor

defs = Definitions(assets=[raw_telemetry], sensors=[raw_telemetry_sensor])
