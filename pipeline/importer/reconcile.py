"""The reconciler: S3 notifications are not guaranteed, and a warehouse can drift, so list the
enriched prefix, compare it with the ledger and the rows, and repair every difference that
``pipeline verify`` can report:

* **unloaded**: S3 holds a version that is not its key's live load (a lost notification, or a
  key written again: X -> Y -> X) -> import it;
* **removed**: a live load whose key S3 no longer holds -> tombstone it;
* **partial**: a live load whose rows do not match what it recorded, or a key with two live
  loads -> load the current version again (``repair``), which ends the others;
* **stray**: rows of loads that were superseded or tombstoned -> delete them.

The first three go through the import inbox like any notification (the import sensor plans
them, or ``pipeline reconcile`` imports them at once); stray rows are deleted here. Runs from
``pipeline reconcile`` and from Dagster's ``import_reconciler`` sensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg

from pipeline.collector.catalog import after, list_prefixes
from pipeline.importer import inbox
from pipeline.importer.events import ObjectVersion
from pipeline.importer.inventory import (
    doubly_live,
    ended_loads_with_rows,
    list_enriched,
    live_loads,
    rows_per_load,
)
from pipeline.importer.partitions import partition_key
from pipeline.warehouse import retention

log = logging.getLogger(__name__)


@dataclass
class Drift:
    unloaded: list[ObjectVersion] = field(default_factory=list)
    removed: list[ObjectVersion] = field(default_factory=list)
    partial: list[ObjectVersion] = field(default_factory=list)
    stray_loads: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.unloaded) + len(self.removed) + len(self.partial) + len(self.stray_loads)

    def summary(self) -> str:
        return (
            f"unloaded={len(self.unloaded)} removed={len(self.removed)} partial={len(self.partial)} "
            f"stray_loads={len(self.stray_loads)}"
        )


def find_drift(conn: psycopg.Connection, s3, bucket: str, prefix: str) -> Drift:
    oldest = retention.horizon()  # objects of days before it are neither unloaded nor removed
    objects = [o for o in list_enriched(s3, bucket, prefix) if not retention.out_of_scope(o.key, oldest)]
    live = {k: load for k, load in live_loads(conn, bucket, prefix).items() if not retention.out_of_scope(k, oldest)}
    present = {o.key: o for o in objects}
    drift = Drift()
    twice = set(doubly_live(conn, bucket, prefix))
    matching = [live[o.key] for o in objects if o.key in live and live[o.key].version == o.version]
    counted = rows_per_load(conn, [load.ledger_id for load in matching])
    for obj in objects:
        version = ObjectVersion(
            obj.bucket, obj.key, obj.version, obj.etag, obj.size, event_name="ObjectCreated:Reconciled"
        )
        load = live.get(obj.key)
        if load is None or load.version != obj.version:
            drift.unloaded.append(version)
        elif obj.key in twice or counted.get(load.ledger_id, 0) != load.rows:
            drift.partial.append(version)
    drift.removed = [
        ObjectVersion(bucket, key, "removed@reconcile", event_name="ObjectRemoved:Reconciled")
        for key in live
        if key not in present
    ]
    drift.stray_loads = ended_loads_with_rows(conn, bucket, prefix)
    if drift.total:
        log.warning("reconcile drift bucket=%s prefix=%s %s", bucket, prefix, drift.summary())
    return drift


def record_drift(
    conn: psycopg.Connection, drift: Drift, prefix: str, claim_for: str | None = None, lease_s: float = 300.0
) -> list[inbox.InboxRow]:
    """Delete stray rows; put the rest in the import inbox. Returns the rows made."""
    with conn.transaction():
        if drift.stray_loads:
            deleted = conn.execute(
                "DELETE FROM telemetry_events WHERE ledger_id = ANY(%s)", (drift.stray_loads,)
            ).rowcount
            log.warning("reconcile deleted %d stray row(s) of %d ended load(s)", deleted, len(drift.stray_loads))

        def key_of(v):
            return partition_key(v.bucket, v.key, prefix)

        changes = [(v, None) for v in [*drift.unloaded, *drift.removed]]
        made = inbox.record(conn, changes, key_of, source="reconcile", claim_for=claim_for, lease_s=lease_s).new
        repairs = [(v, None) for v in drift.partial]
        made += inbox.record(
            conn, repairs, key_of, source="reconcile", claim_for=claim_for, lease_s=lease_s, repair=True
        ).new
    return made


def next_slices(s3, bucket: str, root: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
    """The next ``limit`` slices of the enriched prefix ``root`` after the slice ``cursor``: a slice
    is one customer's day (``root/customer=X/dt=D/``) or one day of enrichment batches
    (``root/dt=D/``), in key order. Returns the slices and the cursor to continue from (None
    when the sweep reached the end: the next one starts over).

    Bounded: a handful of delimiter listings, never a listing of objects, whatever the history."""
    slices: list[str] = []
    top_after = None
    if cursor:
        relative = cursor[len(root) :]
        if relative.startswith("customer="):
            customer = cursor[: cursor.index("dt=")]
            slices += list_prefixes(s3, bucket, customer, after(cursor), limit)
            top_after = after(customer)
        else:
            top_after = after(cursor)
    while len(slices) < limit:
        tops = [
            t
            for t in list_prefixes(s3, bucket, root, top_after, min(limit - len(slices), 1000))
            if t[len(root) :].startswith(("customer=", "dt="))
        ]
        if not tops:
            return slices, None
        for top in tops:
            if top[len(root) :].startswith("dt="):
                slices.append(top)
            else:
                slices += [d for d in list_prefixes(s3, bucket, top, None, limit - len(slices)) if "dt=" in d]
            top_after = after(top)
            if len(slices) >= limit:
                break
    return slices, slices[-1] if slices else None


def reconcile_slices(conn: psycopg.Connection, s3, bucket: str, root: str, slices: list[str]) -> tuple[Drift, int]:
    """Find and record the drift of each slice (one listing and a few indexed queries each):
    what a run of ``import_reconcile_job`` does. Returns the drift summed and the inbox rows made."""
    total, made = Drift(), 0
    for prefix in slices:
        drift = find_drift(conn, s3, bucket, prefix)
        if drift.total:
            made += len(record_drift(conn, drift, root))
        total.unloaded += drift.unloaded
        total.removed += drift.removed
        total.partial += drift.partial
        total.stray_loads += drift.stray_loads
    return total, made


@dataclass
class ReconcileResult:
    drift: Drift
    imported: int = 0
    failed: int = 0

    def to_dict(self, dry_run: bool = False) -> dict:
        """What `pipeline reconcile --json` prints."""
        return {
            "unloaded": [v.key for v in self.drift.unloaded],
            "removed": [v.key for v in self.drift.removed],
            "partial": [v.key for v in self.drift.partial],
            "stray_loads": self.drift.stray_loads,
            "imported": self.imported,
            "failed": self.failed,
            "dry_run": dry_run,
        }


def reconcile(settings, dry_run: bool = False, progress=None) -> ReconcileResult:
    """Find the drift and repair it now, in this process (``pipeline reconcile``)."""
    from pipeline.aws import client
    from pipeline.importer.batch import ImportItem, connect, import_items
    from pipeline.importer.worker import worker_owner

    s3 = client(settings, "s3")
    owner = worker_owner("reconcile")
    with connect(settings.database_url) as conn:
        drift = find_drift(conn, s3, settings.enriched_bucket, settings.enriched_prefix)
        if dry_run or not drift.total:
            return ReconcileResult(drift)
        rows = record_drift(conn, drift, settings.enriched_prefix, claim_for=owner)
    outcomes = import_items(
        settings.database_url,
        s3,
        [ImportItem.from_inbox(r) for r in rows],
        worker="reconcile",
        owner=owner,
        on_outcome=progress,
    )
    return ReconcileResult(drift, sum(1 for o in outcomes if o.ok), sum(1 for o in outcomes if not o.ok))
