from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
)

from pipeline import config
from pipeline.defs.metadata import with_code_references
from pipeline.defs.reports.assets import customer_alerts, warehouse_projections
from pipeline.defs.reports.digest import alerts_job, alerts_schedule, weekly_digest, weekly_digest_schedule


def automation_sensor(enabled: bool | None = None) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates the eager conditions of the projections and the alerts, running
    from the first deploy: without it a customer's pages never change after an import (Dagster's
    implicit one starts stopped and waits for someone to switch it on in the UI)."""
    enabled = bool(config.get("PIPELINE_AUTOMATION")) if enabled is None else enabled
    return AutomationConditionSensorDefinition(
        "default_automation_condition_sensor",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING if enabled else DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=15,
        description="Refreshes the projections after imports and evaluates the alerts after each refresh.",
    )


defs = Definitions(
    assets=with_code_references([warehouse_projections, customer_alerts]),  # the UI links each asset to its code
    jobs=[weekly_digest, alerts_job],
    schedules=[weekly_digest_schedule, alerts_schedule()],
    sensors=[automation_sensor()],
)
