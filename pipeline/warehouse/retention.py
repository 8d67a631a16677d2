"""Retention: the warehouse keeps ``PIPELINE_RETENTION_DAYS`` days of telemetry, dropped by the partition.

The horizon is the oldest day kept: ``today - retention_days``. :func:`apply` (the daily
``warehouse_maintenance`` job, and ``pipeline retention``):

1. creates the partitions of this month and the next ones (pipeline.warehouse.partitions);
2. for each partition whose every day is older than the horizon: DETACH PARTITION CONCURRENTLY
   (loads and pages go on: it never holds the lock that would stop them), marks the
   projections' slices of its (customer, day)s dirty, read from the detached table, and DROPs
   it. No DELETE of events. A month partly inside the horizon stays whole until it is not;
   until then pages may show up to a month more than the horizon;
3. deletes the bookkeeping of the objects of the days whose partition is gone: their ledger
   rows (the one sanctioned DELETE of the append-only ledger), settled inbox rows, outbox rows,
   import failures, sequencers and enrichment batches;
4. refreshes the projections, so that the daily rows of those days and their share of every
   all-days rollup go: the figures equal a rebuild from the events that remain.

``verify`` and the reconciler know the horizon (:func:`out_of_scope`): an object whose day is
before it is neither missing (the warehouse dropped it) nor stray (S3's lifecycle rule, at the
same horizon in deploy/, expired it). Dagster's object partitions and the inbox's settled rows
are pruned within days already (PIPELINE_PARTITION_RETENTION_DAYS).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from pipeline import config
from pipeline.warehouse import partitions as parts

log = logging.getLogger(__name__)

_KEY_DAY = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")
DETACH_LOCK_TIMEOUT = "30s"


def retention_days() -> int | None:
    return config.get("PIPELINE_RETENTION_DAYS")


def horizon(days: int | None = None, today: dt.date | None = None) -> dt.date | None:
    """The oldest day kept, or None when everything is kept (the knob unset)."""
    days = retention_days() if days is None else days
    if days is None:
        return None
    return (today or dt.date.today()) - dt.timedelta(days=days)


def key_day(key: str) -> str | None:
    """The day an object key names (``.../dt=YYYY-MM-DD/...``), as text; None when none."""
    found = _KEY_DAY.search(key)
    return found.group(1) if found else None


def out_of_scope(key: str, oldest: dt.date | None) -> bool:
    """Whether an object is past the horizon: verify and the reconciler leave it alone."""
    day = key_day(key)
    return oldest is not None and day is not None and day < oldest.isoformat()


@dataclass
class DroppedPartition:
    name: str
    first_day: str
    last_day: str
    rows: int
    slices: int
    seconds: float


@dataclass
class RetentionResult:
    retention_days: int | None
    horizon: str | None
    dry_run: bool
    partitions_created: int = 0
    dropped: list[DroppedPartition] = field(default_factory=list)
    rows_removed: int = 0
    ledger_rows_removed: int = 0
    inbox_rows_removed: int = 0
    slices_refreshed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def apply(
    database_url: str,
    days: int | None = None,
    today: dt.date | None = None,
    dry_run: bool = False,
    refresh_projections: bool = True,
) -> RetentionResult:
    """Partitions ahead, then everything past the horizon dropped (see the module's docstring)."""
    from pipeline.warehouse.projections import refresh

    started = time.perf_counter()
    days = retention_days() if days is None else days
    oldest = horizon(days, today)
    result = RetentionResult(days, oldest.isoformat() if oldest else None, dry_run)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not dry_run:
            result.partitions_created = parts.ensure_ahead(conn, today)
        if oldest is None:
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        _finish_interrupted_detaches(conn)
        for partition in parts.partitions(conn):
            if partition.end_day > oldest:
                continue
            result.dropped.append(_drop(conn, partition, dry_run))
        result.rows_removed = sum(p.rows for p in result.dropped)
        if not dry_run:
            kept = [p.first_day for p in parts.partitions(conn)]
            gone_before = min([oldest, *kept[:1]])  # the days before it have no partition left
            result.ledger_rows_removed, result.inbox_rows_removed = _forget_objects(conn, gone_before)
    if not dry_run and refresh_projections and result.dropped:
        refreshed = refresh(database_url)
        result.slices_refreshed = refreshed.slices if refreshed else 0
    result.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "retention horizon=%s dropped=%d rows=%d ledger_rows=%d inbox_rows=%d dry_run=%s seconds=%.3f",
        result.horizon,
        len(result.dropped),
        result.rows_removed,
        result.ledger_rows_removed,
        result.inbox_rows_removed,
        dry_run,
        result.seconds,
    )
    return result


def _drop(conn, partition: parts.Partition, dry_run: bool) -> DroppedPartition:
    name = sql.Identifier(partition.name)
    started = time.perf_counter()
    (rows,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
    slices = 0
    if not dry_run:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(DETACH_LOCK_TIMEOUT)))
        conn.execute(sql.SQL("ALTER TABLE telemetry_events DETACH PARTITION {} CONCURRENTLY").format(name))
        conn.execute("RESET lock_timeout")
        slices = _mark_and_drop(conn, partition.name)
    dropped = DroppedPartition(
        partition.name,
        partition.first_day.isoformat(),
        partition.last_day.isoformat(),
        rows,
        slices,
        round(time.perf_counter() - started, 3),
    )
    log.info(
        "retention %s partition=%s days=%s..%s rows=%d seconds=%.3f",
        "would drop" if dry_run else "dropped",
        dropped.name,
        dropped.first_day,
        dropped.last_day,
        rows,
        dropped.seconds,
    )
    return dropped


def _mark_and_drop(conn, name: str) -> int:
    """A detached partition's slices marked for the next refresh (the rows are still readable
    there, and no longer in telemetry_events), then the table dropped, in one transaction."""
    with conn.transaction():
        marked = conn.execute(
            sql.SQL(
                """INSERT INTO projection_dirty (customer_id, day)
                   SELECT DISTINCT customer_id, day FROM {} ORDER BY 1, 2
                   ON CONFLICT (customer_id, day) DO UPDATE SET marked_at = clock_timestamp()"""
            ).format(sql.Identifier(name))
        ).rowcount
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return marked


def _finish_interrupted_detaches(conn) -> None:
    """A DETACH ... CONCURRENTLY cut short (a lock timeout, a restart) leaves its partition
    pending; FINALIZE completes it, and the next loop drops the table."""
    pending = conn.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'telemetry_events'::regclass AND i.inhdetachpending"""
    ).fetchall()
    for (name,) in pending:
        conn.execute(sql.SQL("ALTER TABLE telemetry_events DETACH PARTITION {} FINALIZE").format(sql.Identifier(name)))
        _mark_and_drop(conn, name)
        log.info("retention finished the interrupted detach of partition=%s", name)


def _forget_objects(conn, before: dt.date) -> tuple[int, int]:
    """The bookkeeping of objects whose day (in their key) is before ``before``: no partition
    holds their rows any more. A key with an inbox row still pending keeps its rows."""
    cutoff = before.isoformat()
    with conn.transaction():
        conn.execute("SET LOCAL pipeline.retention = 'on'")
        conn.execute(
            """CREATE TEMP TABLE expired_keys ON COMMIT DROP AS
               SELECT DISTINCT bucket, object_key FROM load_ledger
               WHERE object_key_day(object_key) < %s
                 AND NOT EXISTS (SELECT 1 FROM import_inbox i WHERE i.state = 'pending'
                                 AND i.bucket = load_ledger.bucket AND i.object_key = load_ledger.object_key)""",
            (cutoff,),
        )
        conn.execute(
            """CREATE TEMP TABLE expired_loads ON COMMIT DROP AS
               SELECT l.ledger_id FROM load_ledger l JOIN expired_keys k USING (bucket, object_key)"""
        )
        conn.execute("""DELETE FROM dagster_outbox o USING expired_loads x WHERE o.ledger_id = x.ledger_id""")
        inbox_rows = conn.execute(
            """DELETE FROM import_inbox i USING expired_keys k
               WHERE i.bucket = k.bucket AND i.object_key = k.object_key AND i.state <> 'pending'"""
        ).rowcount
        conn.execute(
            """DELETE FROM import_failures f USING expired_keys k
               WHERE f.bucket = k.bucket AND f.object_key = k.object_key"""
        )
        conn.execute(
            """DELETE FROM object_sequencers s USING expired_keys k
               WHERE s.bucket = k.bucket AND s.object_key = k.object_key"""
        )
        ledger_rows = conn.execute(
            """DELETE FROM load_ledger l USING expired_loads x WHERE l.ledger_id = x.ledger_id
                 AND NOT EXISTS (SELECT 1 FROM telemetry_events e WHERE e.ledger_id = l.ledger_id)"""
        ).rowcount
        conn.execute("DELETE FROM enrichment_batches WHERE day < %s", (before,))
    return ledger_rows, inbox_rows
