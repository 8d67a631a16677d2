from dagster import Definitions

from pipeline.defs.reports.assets import customer_alerts, warehouse_projections

defs = Definitions(assets=[warehouse_projections, customer_alerts])
