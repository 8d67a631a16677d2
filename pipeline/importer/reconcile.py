"""The reconciler: S3 notifications are not guaranteed, so list the enriched prefix and import
(or tombstone) whatever the ledger does not reflect. Runs from ``pipeline reconcile`` and from
Dagster's ``import_reconciler`` sensor."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from pipeline.importer.batch import ImportItem
from pipeline.importer.events import ObjectVersion
from pipeline.importer.inventory import list_enriched, live_loads

log = logging.getLogger(__name__)


@dataclass
class Drift:
    unloaded: list[ObjectVersion]  # objects (or versions) in S3 that the ledger has not loaded
    removed: list[ObjectVersion]  # live loads whose object is gone from S3

    @property
    def items(self) -> list[ImportItem]:
        return [ImportItem(v) for v in [*self.unloaded, *self.removed]]


def find_drift(conn: psycopg.Connection, s3, bucket: str, prefix: str) -> Drift:
    objects = list_enriched(s3, bucket, prefix)
    live = live_loads(conn, bucket, prefix)
    present = {o.key for o in objects}
    unloaded = [
        ObjectVersion(o.bucket, o.key, o.etag, o.etag, o.size, event_name="ObjectCreated:Reconciled")
        for o in objects
        if o.key not in live or live[o.key].version != o.etag
    ]
    removed = [
        ObjectVersion(bucket, key, "removed@reconcile", event_name="ObjectRemoved:Reconciled")
        for key in live
        if key not in present
    ]
    if unloaded or removed:
        log.warning(
            "reconcile drift bucket=%s prefix=%s unloaded=%d removed=%d", bucket, prefix, len(unloaded), len(removed)
        )
    return Drift(unloaded, removed)
