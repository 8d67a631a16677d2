"""capacity_sensor: the periodic half of queue-depth autoscaling (the launcher is the other).

Launches only happen while there is work; scaling back in to zero after the cooldown needs
someone to look when nothing happens. This sensor does, every
``PIPELINE_CAPACITY_SENSOR_INTERVAL_S`` seconds (default 30), with the same controller,
policy and shared state as ``QueueDepthRunLauncher``.
"""

import os

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from pipeline.defs.resources import ImportQueueResource
from pipeline.scaling.config import ScalingConfig, build_controller

INTERVAL_S = int(os.environ.get("PIPELINE_CAPACITY_SENSOR_INTERVAL_S", "30"))


@sensor(
    name="capacity_sensor",
    minimum_interval_seconds=INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Sets importer worker capacity from the backlog (SQS visible + in flight + pending partitions).",
)
def capacity_sensor(context: SensorEvaluationContext, import_queue: ImportQueueResource) -> SkipReason:
    controller = build_controller(import_queue.stack.settings(), ScalingConfig.from_env())
    record = controller.reconcile("capacity sensor", instance=context.instance)
    summary = (
        f"{record.backend}: backlog {record.backlog.total} (visible {record.backlog.visible}, in flight "
        f"{record.backlog.in_flight}, pending partitions {record.backlog.pending_partitions}) -> desired "
        f"{record.desired}: {record.reason}"
    )
    if not record.applied:
        context.log.error(f"capacity NOT applied after {record.attempts} attempts: {record.error}; {summary}")
    else:
        context.log.info(summary)
    return SkipReason(summary)
