from dagster import Definitions

from pipeline.defs.reports.assets import warehouse_projections

defs = Definitions(assets=[warehouse_projections])
