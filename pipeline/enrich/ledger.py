"""What was enriched into what: the enrichment ledger, and a run's plan made from it.

A run lists the raw objects of its (customer, day) scope, then, under one lock that serializes
planners:

* raw objects no batch holds are **new**: one new batch per day (more when the day's new bytes
  exceed ``PIPELINE_ENRICH_BATCH_BYTES``), recorded ``planned`` with its inputs before anything
  is staged;
* a batch is **due** again when it is still ``planned`` (a run crashed before publishing it),
  was published under another model or reference data, holds a raw key whose ETag changed, or
  the run reprocesses its day (``--reprocess``, a backfill with ``reprocess: true``).
  It is enriched again whole, with its recorded inputs: the same keys, and for the same inputs
  and versions the same bytes, so publishing it again writes nothing.

Every other batch is left alone: a new report costs one report's work. The batch id is a hash
of its input keys (with the newest input's time first, so the UI sorts and reads it), never of
a model, so a re-enrichment overwrites its objects and the importer supersedes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline import config
from pipeline.batches import BATCH_ID, BATCH_KEY, manifest  # noqa: F401 (the ledger's own names too)

if TYPE_CHECKING:  # Spark tasks import this module for its types: no database driver there
    import psycopg

log = logging.getLogger(__name__)
_PLAN_LOCK = 0x656E7269636800  # pg_advisory_xact_lock key of the planners ("enrich")


@dataclass(frozen=True)
class RawVersion:
    """One raw object as a listing shows it."""

    key: str
    etag: str
    size: int
    customer: str
    day: str
    modified: dt.datetime


@dataclass(frozen=True)
class Batch:
    batch_id: str
    day: str
    inputs: tuple[RawVersion, ...]
    new: bool = True  # False: an existing batch enriched again
    why: str = "new"

    def prefix(self, root: str) -> str:
        return f"{root}dt={self.day}/batch={self.batch_id}/"

    def customers(self) -> list[str]:
        return sorted({v.customer for v in self.inputs})


@dataclass
class Plan:
    batches: list[Batch] = field(default_factory=list)  # new and due: what the run enriches


def batch_id(keys: Iterable[str], newest: dt.datetime) -> str:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:12]
    return f"{newest.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{digest}"


def new_batches(versions: list[RawVersion], max_bytes: int | None = None) -> list[Batch]:
    """The batches of raw objects no batch holds yet: per day, in key order, cut at ``max_bytes``."""
    limit = max_bytes or config.get("PIPELINE_ENRICH_BATCH_BYTES")
    by_day: dict[str, list[RawVersion]] = defaultdict(list)
    for version in versions:
        by_day[version.day].append(version)
    out = []
    for day, found in sorted(by_day.items()):
        found.sort(key=lambda v: v.key)
        current: list[RawVersion] = []
        size = 0
        for version in found:
            if current and size + version.size > limit:
                out.append(_batch(day, current))
                current, size = [], 0
            current.append(version)
            size += version.size
        if current:
            out.append(_batch(day, current))
    return out


def _batch(day: str, inputs: list[RawVersion], new: bool = True, why: str = "new") -> Batch:
    return Batch(batch_id([v.key for v in inputs], max(v.modified for v in inputs)), day, tuple(inputs), new, why)


def plan(
    conn: psycopg.Connection,
    bucket: str,
    listed: list[RawVersion],
    versions: tuple[str, str],
    reprocess: bool = False,
    run_id: str | None = None,
    scope: tuple[list[str], list[str] | None, dt.datetime] | None = None,
) -> Plan:
    """The run's batches (see the module), recorded before the run stages anything.

    ``scope``: the (days, customers or None for all, when the listing began: the database's
    clock) that ``listed`` is the complete listing of. An input of the scope recorded before the
    listing began that the listing does not have was deleted, and its batch is due (enriched
    again without it; a batch with no input left has its objects removed). An input recorded
    since, by a run that listed later, is not: this listing could not see it."""
    out = Plan()
    model, reference = versions
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PLAN_LOCK,))
        due: dict[str, str] = {}
        if scope is not None:
            days, customers, listed_at = scope
            present = {v.key for v in listed}
            recorded = conn.execute(
                """SELECT object_key, batch_id FROM enrichment_inputs
                   WHERE bucket = %s AND day = ANY(%s::date[]) AND (%s::text[] IS NULL OR customer_id = ANY(%s))
                     AND recorded_at < %s""",
                (bucket, days, customers, customers, listed_at),
            ).fetchall()
            gone = [(key, batch) for key, batch in recorded if key not in present]
            for key, batch in gone:
                due.setdefault(batch, f"{key} was deleted")
            if gone:
                conn.execute(
                    "DELETE FROM enrichment_inputs WHERE bucket = %s AND object_key = ANY(%s)",
                    (bucket, [key for key, _ in gone]),
                )
        if not listed and not due:
            return out
        rows = conn.execute(
            """SELECT i.object_key, i.etag, b.batch_id, b.state, b.model_version, b.reference_version
               FROM unnest(%s::text[]) AS k(object_key)
               JOIN enrichment_inputs i ON i.bucket = %s AND i.object_key = k.object_key
               JOIN enrichment_batches b ON b.batch_id = i.batch_id""",
            ([v.key for v in listed], bucket),
        ).fetchall()
        known = {r[0]: r for r in rows}
        changed: list[RawVersion] = []
        for version in listed:
            row = known.get(version.key)
            if row is None:
                continue
            _, etag, batch, state, row_model, row_reference = row
            if reprocess:
                due.setdefault(batch, "reprocess")
            elif state == "planned":
                due.setdefault(batch, "planned, never published (a run stopped before publishing)")
            elif (row_model, row_reference) != (model, reference):
                due.setdefault(batch, f"enriched with {row_model}/{row_reference}, now {model}/{reference}")
            elif etag != version.etag:
                due.setdefault(batch, f"{version.key} changed")
            if etag != version.etag:
                changed.append(version)
        by_key = {v.key: v for v in listed}
        for version in changed:
            conn.execute(
                "UPDATE enrichment_inputs SET etag = %s, size = %s WHERE bucket = %s AND object_key = %s",
                (version.etag, version.size, bucket, version.key),
            )
        if due:
            days_of = dict(
                conn.execute(
                    "SELECT batch_id, day FROM enrichment_batches WHERE batch_id = ANY(%s)", (list(due),)
                ).fetchall()
            )
            inputs = conn.execute(
                """SELECT batch_id, object_key, etag, size, customer_id FROM enrichment_inputs
                   WHERE batch_id = ANY(%s) AND bucket = %s ORDER BY batch_id, object_key""",
                (list(due), bucket),
            ).fetchall()
            grouped: dict[str, list[RawVersion]] = defaultdict(list)
            for batch, key, etag, size, customer in inputs:
                day = days_of[batch].isoformat()
                grouped[batch].append(
                    by_key.get(key) or RawVersion(key, etag, size or 0, customer, day, dt.datetime.min)
                )
            for batch in sorted(due):
                out.batches.append(
                    Batch(batch, days_of[batch].isoformat(), tuple(grouped[batch]), new=False, why=due[batch])
                )
        fresh = new_batches([v for v in listed if v.key not in known])
        with conn.cursor() as cur:
            for batch in fresh:
                cur.execute(
                    "INSERT INTO enrichment_batches (batch_id, day, run_id) VALUES (%s, %s, %s) "
                    "ON CONFLICT (batch_id) DO NOTHING",
                    (batch.batch_id, batch.day, run_id),
                )
                cur.executemany(
                    """INSERT INTO enrichment_inputs (bucket, object_key, etag, size, customer_id, day, batch_id)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                    [(bucket, v.key, v.etag, v.size, v.customer, v.day, batch.batch_id) for v in batch.inputs],
                )
        out.batches += fresh
    for batch in out.batches:
        log.info(
            "enrichment batch=%s day=%s inputs=%d customers=%d %s",
            batch.batch_id,
            batch.day,
            len(batch.inputs),
            len(batch.customers()),
            batch.why,
        )
    return out


def record_manifest(conn: psycopg.Connection, rows: dict[str, dict[str, int]]) -> None:
    """batch -> customer -> rows, before publishing: the importer's tenancy check reads it.
    Upserted (two runs may enrich one batch again at once), then the customers it no longer
    holds are removed."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO enrichment_manifest (batch_id, customer_id, rows) VALUES (%s, %s, %s)
               ON CONFLICT (batch_id, customer_id) DO UPDATE SET rows = EXCLUDED.rows""",
            [(batch, customer, n) for batch, found in sorted(rows.items()) for customer, n in sorted(found.items())],
        )
        for batch, found in sorted(rows.items()):
            cur.execute(
                "DELETE FROM enrichment_manifest WHERE batch_id = %s AND NOT (customer_id = ANY(%s))",
                (batch, sorted(found)),
            )


def mark_published(
    conn: psycopg.Connection,
    published: dict[str, dict],
    versions: tuple[str, str],
) -> None:
    """The batches are at their final keys, enriched with ``versions``."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """UPDATE enrichment_batches SET state = 'published', model_version = %s, reference_version = %s,
                      objects = %s, raw_objects = %s, raw_records = %s, enriched_rows = %s,
                      published_at = clock_timestamp()
               WHERE batch_id = %s""",
            [
                (
                    versions[0],
                    versions[1],
                    facts["objects"],
                    facts["raw_objects"],
                    facts["raw_records"],
                    facts["enriched_rows"],
                    batch,
                )
                for batch, facts in published.items()
            ],
        )
