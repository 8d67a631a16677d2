"""The weekly digest as a Dagster job and schedule (Mondays 07:00 UTC; off until an operator
turns it on, since it needs PIPELINE_SMTP_HOST)."""

from dagster import DefaultScheduleStatus, OpExecutionContext, ScheduleDefinition, job, op

from pipeline import config
from pipeline.defs.resources import WarehouseResource


@op(description="Send each customer with a digest address its weekly DMARC digest over SMTP.")
def send_weekly_digests(context: OpExecutionContext, warehouse: WarehouseResource) -> None:
    from pipeline.web import digest

    if not config.get("PIPELINE_SMTP_HOST"):
        context.log.warning("weekly digest skipped: PIPELINE_SMTP_HOST is not set (no SMTP server to send through)")
        return
    sent = digest.send_all(warehouse.database_url())
    context.log.info(f"weekly digest sent to {len(sent)} customer(s): {', '.join(s['customer'] for s in sent)}")


@job(description="The customers' weekly DMARC digest e-mail (docs/DMARC.md).")
def weekly_digest():
    send_weekly_digests()


weekly_digest_schedule = ScheduleDefinition(
    job=weekly_digest,
    cron_schedule="0 7 * * 1",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)
