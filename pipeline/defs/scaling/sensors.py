"""capacity_sensor: the periodic half of queue-depth autoscaling (the launcher is the other).

Launches only happen while there is work; scaling back in to zero after the cooldown needs
someone to look when nothing happens. This sensor does, every
``PIPELINE_CAPACITY_SENSOR_INTERVAL_S`` seconds (default 30), with the same controller,
policy and shared state as ``QueueDepthRunLauncher``.
"""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from pipeline import config, names
from pipeline.defs.resources import ImportQueueResource
from pipeline.importer.metrics import publish_import_metrics
from pipeline.scaling.config import ScalingConfig, build_controller

INTERVAL_S = config.get("PIPELINE_CAPACITY_SENSOR_INTERVAL_S")


@sensor(
    name=names.CAPACITY_SENSOR,
    minimum_interval_seconds=INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Sets importer worker capacity from the backlog (SQS + the import inbox + backfill partitions), "
    "and publishes the import inbox's backlog, age and dead letters as CloudWatch metrics.",
)
def capacity_sensor(context: SensorEvaluationContext, import_queue: ImportQueueResource) -> SkipReason:
    settings = import_queue.settings()
    controller = build_controller(settings, ScalingConfig.for_instance(context.instance))
    record = controller.reconcile("capacity sensor", instance=context.instance)
    summary = (
        f"{record.backend}: backlog {record.backlog.total} (visible {record.backlog.visible}, in flight "
        f"{record.backlog.in_flight}, import inbox {record.backlog.inbox}, backfill partitions "
        f"{record.backlog.pending_partitions}) -> desired {record.desired}: {record.reason}"
    )
    published = publish_import_metrics(settings)
    if published is not None:
        context.log.warning(f"import metrics not published: {published}")
    if not record.applied:
        context.log.error(f"capacity NOT applied after {record.attempts} attempts: {record.error}; {summary}")
    else:
        context.log.info(summary)
    return SkipReason(summary)
