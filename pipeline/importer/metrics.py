"""The import inbox as CloudWatch metrics, for alarms (deploy/cloudformation/compute.yaml).

Once intake takes a notification into the inbox its SQS message is gone, so SQS's own metrics
no longer say how long objects wait, nor how many are dead-lettered; these do. Namespace
``DMARCPipeline/Import``, dimension ``Bucket`` (the enriched bucket):

* ``InboxPending``: objects not settled yet (due, backing off, or claimed);
* ``InboxOldestPendingSeconds``: how long the oldest of them has waited (the freshness promise);
* ``InboxDeadLetters``: objects dead-lettered in the inbox (an operator fixes, then redrives).
"""

from __future__ import annotations

import logging

import psycopg

from pipeline.aws import client
from pipeline.importer import inbox
from pipeline.settings import Settings

log = logging.getLogger(__name__)
NAMESPACE = "DMARCPipeline/Import"


def import_metrics(settings: Settings) -> list[dict]:
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        box = inbox.counts(conn, settings.enriched_bucket)
    dimensions = [{"Name": "Bucket", "Value": settings.enriched_bucket}]
    return [
        {"MetricName": "InboxPending", "Value": box.pending, "Unit": "Count", "Dimensions": dimensions},
        {
            "MetricName": "InboxOldestPendingSeconds",
            "Value": box.oldest_pending_s or 0.0,
            "Unit": "Seconds",
            "Dimensions": dimensions,
        },
        {"MetricName": "InboxDeadLetters", "Value": box.dead, "Unit": "Count", "Dimensions": dimensions},
    ]


def publish_import_metrics(settings: Settings) -> str | None:
    """Put the metrics; None when published, else what went wrong (never raises: metrics must
    not stop the sensor that scales capacity)."""
    try:
        client(settings, "cloudwatch").put_metric_data(Namespace=NAMESPACE, MetricData=import_metrics(settings))
    except Exception as exc:
        log.warning("import metrics not published: %s", exc)
        return f"{type(exc).__name__}: {exc}"
    return None
