"""run_failure_alerts: a failed run reaches the operator, not only the UI (issue #24).

Every failed run of the code location (import, enrichment, reconcile, projections) is posted as
one JSON object to ``PIPELINE_OPS_WEBHOOK_URL`` and published to ``PIPELINE_OPS_SNS_TOPIC_ARN``
(production: the template's alarm topic), whichever are set, and always logged as one greppable
line (``run failed run_id=... job=... stage=...``). A delivery that fails fails the tick, so
Dagster hands the same run to the next one: at least once.
"""

from __future__ import annotations

import json
import logging
import urllib.request

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from pipeline import config, names

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 2000


def failure_payload(run, message: str | None, step_errors: list[str] | None = None) -> dict:
    """What an operator needs to act: which run, job, stage and partitions, and why (the run's
    failure and each failed step's error)."""
    tags = run.tags
    error = "\n".join([message or "", *(step_errors or [])]).strip()
    return {
        "kind": "dagster_run_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "stage": tags.get(names.STAGE_TAG),
        "partition_range": [tags.get(names.RANGE_START_TAG), tags.get(names.RANGE_END_TAG)]
        if names.RANGE_START_TAG in tags
        else None,
        "sensor": tags.get(names.SENSOR_NAME_TAG),
        "error": error[:MAX_ERROR_CHARS],
    }


def deliver(payload: dict) -> list[str]:
    """Post and publish ``payload`` where the knobs say; the targets it reached."""
    reached = []
    body = json.dumps(payload, sort_keys=True)
    url = config.get("PIPELINE_OPS_WEBHOOK_URL")
    if url:
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=config.get("PIPELINE_WEBHOOK_TIMEOUT_S")) as response:
            if response.status >= 300:
                raise RuntimeError(f"the operations webhook answered {response.status}")
        reached.append("webhook")
    topic = config.get("PIPELINE_OPS_SNS_TOPIC_ARN")
    if topic:
        from pipeline.aws import client
        from pipeline.settings import load_settings

        subject = f"Dagster run failed: {payload['job']} ({payload['stage'] or 'no stage'})"[:100]
        client(load_settings(), "sns").publish(TopicArn=topic, Subject=subject, Message=body)
        reached.append("sns")
    return reached


def _root_cause(error) -> str:
    """The innermost error of a step's failure (Dagster wraps the op's own exception)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


@run_failure_sensor(
    name="run_failure_alerts",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Posts every failed run to the operations webhook and publishes it to the operations SNS topic "
    "(PIPELINE_OPS_WEBHOOK_URL, PIPELINE_OPS_SNS_TOPIC_ARN), and logs it.",
)
def run_failure_alerts(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    steps = [
        f"{event.step_key}: {_root_cause(event.event_specific_data.error)}"
        for event in context.get_step_failure_events()
        if getattr(event.event_specific_data, "error", None) is not None
    ]
    payload = failure_payload(run, context.failure_event.message, steps)
    reached = deliver(payload)
    line = (
        f"run failed run_id={run.run_id} job={run.job_name} stage={payload['stage'] or '-'} "
        f"notified={','.join(reached) or 'none (set PIPELINE_OPS_WEBHOOK_URL or PIPELINE_OPS_SNS_TOPIC_ARN)'}"
    )
    context.log.warning(line)
    log.warning(line)
