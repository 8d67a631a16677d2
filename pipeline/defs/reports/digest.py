"""Schedules of the customers' side: the weekly digest (Mondays 07:00 UTC; off until an operator
turns it on, since it needs PIPELINE_SMTP_HOST), and an hourly evaluation of the alert rules
(a rule like "reports stopped" must fire precisely when nothing is imported to trigger one)."""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Failure,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    define_asset_job,
    job,
    op,
)

from pipeline import config
from pipeline.defs.resources import WarehouseResource

alerts_job = define_asset_job(
    "customer_alerts_job",
    selection=AssetSelection.keys("customer_alerts"),
    description="Evaluate every customer's alert rules and deliver webhooks.",
)


def _schedule(name: str, job, cron: str, knob: str, enabled: bool | None) -> ScheduleDefinition:
    """A UTC schedule that starts running unless ``knob`` (or ``enabled``) says otherwise."""
    enabled = bool(config.get(knob)) if enabled is None else enabled
    return ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if enabled else DefaultScheduleStatus.STOPPED,
    )


def alerts_schedule(enabled: bool | None = None) -> ScheduleDefinition:
    return _schedule("customer_alerts_hourly", alerts_job, "15 * * * *", "PIPELINE_ALERTS_SCHEDULE", enabled)


@op(description="Send each customer with a digest address its weekly DMARC digest over SMTP.")
def send_weekly_digests(context: OpExecutionContext, warehouse: WarehouseResource) -> None:
    from pipeline.web import digest

    if not config.get("PIPELINE_SMTP_HOST"):
        context.log.warning("weekly digest skipped: PIPELINE_SMTP_HOST is not set (no SMTP server to send through)")
        return
    outcome = digest.send_each(warehouse.database_url())
    sent, failed = outcome["sent"], outcome["failed"]
    context.log.info(f"weekly digest sent to {len(sent)} customer(s): {', '.join(s['customer'] for s in sent)}")
    for failure in failed:  # one customer's bad address or refused digest never stops the others'
        context.log.warning(f"weekly digest failed customer={failure['customer']}: {failure['error']}")
    if failed and not sent:
        raise Failure(
            f"every digest failed ({len(failed)}): the SMTP server refused them all; check PIPELINE_SMTP_*",
            metadata={"failed": MetadataValue.json(failed)},
        )


@job(description="The customers' weekly DMARC digest e-mail (docs/DMARC.md).")
def weekly_digest():
    send_weekly_digests()


def digest_schedule(enabled: bool | None = None) -> ScheduleDefinition:
    """Mondays 07:00 UTC, running by default: it mails only customers who set an address, and
    without PIPELINE_SMTP_HOST its run logs that it skipped."""
    return _schedule("weekly_digest_schedule", weekly_digest, "0 7 * * 1", "PIPELINE_AUTOMATION", enabled)


weekly_digest_schedule = digest_schedule()
