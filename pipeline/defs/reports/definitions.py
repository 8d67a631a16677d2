from dagster import Definitions

from pipeline.defs.reports.assets import customer_alerts, warehouse_projections
from pipeline.defs.reports.digest import alerts_job, alerts_schedule, weekly_digest, weekly_digest_schedule

defs = Definitions(
    assets=[warehouse_projections, customer_alerts],
    jobs=[weekly_digest, alerts_job],
    schedules=[weekly_digest_schedule, alerts_schedule()],
)
