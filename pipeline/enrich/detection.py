"""Raw detection without listing history: what the raw sensor does each tick, without Dagster.

1. **Intake.** The raw bucket notifies S3 -> SNS -> the raw queue (deploy/cloudformation/
   pipeline.yaml). A tick receives a bounded batch, records every raw object version the
   messages name in ``raw_inbox`` in one transaction, and only then deletes the messages: a
   crash between the two redelivers them, and the unique (bucket, key, ETag) makes the second
   recording a no-op. Messages that are no S3 event, or name another bucket or prefix, are
   deleted with a log line (nothing to retry).
2. **Sweep.** Notifications can be lost, so every ``PIPELINE_RAW_SWEEP_INTERVAL_S`` a tick also
   lists the recent day prefixes (``PIPELINE_RAW_SWEEP_DAYS`` to tomorrow) of the next
   ``PIPELINE_RAW_SWEEP_CUSTOMERS`` customers, round-robin, and records what it finds the same
   way. (Its listings are bounded by the recent objects on S3; moto's server filters a listing
   by scanning the whole bucket, so locally a sweep's seconds grow with the bucket, which is
   why it does not run on every tick.)
3. **Report.** Rows past the sensor's cursor (a ``raw_id``) are the new objects. The sensor
   ticks every few seconds, so that a report arriving after a quiet spell is enriched at once;
   but it reports (and requests runs) once per ``PIPELINE_RAW_RUN_INTERVAL_S`` on average (a
   token bucket of ``PIPELINE_RAW_RUN_BURST``): under a steady load what arrives meanwhile waits
   for the next report, so the batches (and the Dagster partitions) a day gets stay bounded by
   that interval, not by the tick's.

A tick's cost follows the new objects and the customers swept, never the objects held: no
listing ever covers an older day.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg

from pipeline import config
from pipeline.collector.catalog import RAW_KEY, after, list_prefixes
from pipeline.importer.events import UnexpectedMessage, parse_s3_event
from pipeline.importer.queue import delete, receive

log = logging.getLogger(__name__)
MAX_MESSAGES_PER_TICK = 1000


@dataclass(frozen=True)
class RawSeen:
    raw_id: int
    bucket: str
    key: str
    etag: str
    size: int | None
    customer_id: str
    day: str


def _row(bucket: str, key: str, etag: str | None, size, source: str) -> tuple | None:
    match = RAW_KEY.search(key)
    if not match or not etag:
        return None
    try:
        day = dt.date.fromisoformat(match["day"])
    except ValueError:
        return None
    return (bucket, key, etag.strip('"'), size, match["customer"], day, source)


def _record(conn: psycopg.Connection, rows: list[tuple]) -> int:
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO raw_inbox (bucket, object_key, etag, size, customer_id, day, source)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (bucket, object_key, etag) DO NOTHING""",
            rows,
        )
        return cur.rowcount


def take_in(conn: psycopg.Connection, sqs, queue_url: str, bucket: str, prefix: str) -> dict:
    """Step 1: notifications -> raw_inbox (committed) -> deleted. Counts what happened."""
    messages = receive(sqs, queue_url, MAX_MESSAGES_PER_TICK, wait_seconds=0)
    rows, foreign = [], 0
    for message in messages:
        try:
            parsed = parse_s3_event(message["Body"], bucket, prefix)
        except UnexpectedMessage as exc:
            log.warning("raw queue: not an S3 event, deleted: %s", exc)
            continue
        foreign += len(parsed.rejected)
        for reason in parsed.rejected:
            log.warning("raw queue: rejected %s", reason)
        for version in parsed.versions:
            if version.event_name and version.event_name.startswith("ObjectCreated"):
                row = _row(version.bucket, version.key, version.etag, version.size, "notification")
                if row:
                    rows.append(row)
    with conn.transaction():
        recorded = _record(conn, rows)
    delete(sqs, queue_url, [m["ReceiptHandle"] for m in messages])  # only once they are durable
    return {"messages": len(messages), "recorded": recorded, "foreign": foreign}


def sweep(conn: psycopg.Connection, s3, bucket: str, prefix: str, cursor: str | None) -> tuple[int, str | None]:
    """Step 2: the recent days of the next customers after ``cursor`` (a customer prefix).
    Returns the rows it recorded (objects no notification named) and the next cursor."""
    customers = [
        c
        for c in list_prefixes(
            s3, bucket, prefix, after(cursor) if cursor else None, config.get("PIPELINE_RAW_SWEEP_CUSTOMERS")
        )
        if c[len(prefix) :].startswith("customer=")
    ]
    today = dt.datetime.now(dt.UTC).date()
    days = [today + dt.timedelta(days=n) for n in range(1 - config.get("PIPELINE_RAW_SWEEP_DAYS"), 2)]
    rows = []
    for customer in customers:
        for day in days:
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{customer}dt={day.isoformat()}/")
            for obj in listing.get("Contents", []):
                row = _row(bucket, obj["Key"], obj.get("ETag"), obj.get("Size"), "sweep")
                if row:
                    rows.append(row)
    with conn.transaction():
        recorded = _record(conn, rows)
    if recorded:
        log.warning("raw sweep: %d object(s) no notification named (lost notifications?)", recorded)
    next_cursor = customers[-1] if len(customers) == config.get("PIPELINE_RAW_SWEEP_CUSTOMERS") else None
    return recorded, next_cursor


def _tokens(state: dict, now: float, interval: float, burst: int) -> float:
    """The gate is a token bucket: one report per ``interval`` seconds on average, up to ``burst``
    in a row after a quiet spell."""
    at = state.get("tokens_at")
    if interval <= 0 or at is None or now < float(at):  # no gate, a first tick, or a clock gone back
        return float(burst)
    return min(float(burst), float(state.get("tokens", burst)) + (now - float(at)) / interval)


def may_report(state: dict, now: float, interval: float, burst: int) -> bool:
    """Step 3's gate: may this tick report what is new? Reports are spaced by ``interval``
    seconds on average (what bounds the batches a day gets under a steady load), but a report
    after a quiet spell, and up to ``burst`` of them in a row, goes at once."""
    return _tokens(state, now, interval, burst) >= 1.0


def spend(state: dict, now: float, interval: float, burst: int) -> None:
    """Record a report in ``state`` (the sensor's cursor)."""
    state["tokens"] = round(_tokens(state, now, interval, burst) - 1.0, 6)
    state["tokens_at"] = now
    state["reported_at"] = now


def tick(
    conn: psycopg.Connection,
    sqs,
    queue_url: str | None,
    s3,
    bucket: str,
    prefix: str,
    state: dict,
    report_interval: float = 0.0,
    report_burst: int = 1,
) -> dict:
    """One raw sensor tick without Dagster: intake, the sweep when it is due, the rows past the
    cursor unless the gate (``may_report``) holds them. ``state``: {"reported": raw_id,
    "reported_at", "tokens", "tokens_at": the gate's, "sweep": customer cursor, "swept_at":
    epoch seconds}, updated in place. Returns the counts, ``fresh`` (the new rows, oldest
    first) and ``held`` (True when the gate kept them for a later tick)."""
    import time

    taken = take_in(conn, sqs, queue_url, bucket, prefix) if queue_url else {"messages": 0, "recorded": 0, "foreign": 0}
    swept = 0
    now = time.time()
    last = state.get("swept_at")
    interval = config.get("PIPELINE_RAW_SWEEP_INTERVAL_S") if queue_url else 0.0  # no queue: the sweep is all
    if last is None or now - float(last) >= interval:
        swept, state["sweep"] = sweep(conn, s3, bucket, prefix, state.get("sweep"))
        state["swept_at"] = now
    if not may_report(state, now, report_interval, report_burst):
        return {**taken, "swept": swept, "fresh": [], "held": True}
    fresh = new_since(conn, int(state.get("reported") or 0), MAX_ROWS_PER_TICK)
    if fresh:
        state["reported"] = fresh[-1].raw_id
        spend(state, now, report_interval, report_burst)
    return {**taken, "swept": swept, "fresh": fresh, "held": False}


MAX_ROWS_PER_TICK = 5000  # production load is ~700 new objects a 30 s report (bench trickle's simulation)


def new_since(conn: psycopg.Connection, raw_id: int, limit: int) -> list[RawSeen]:
    """Step 3: what was recorded after ``raw_id``, oldest first."""
    rows = conn.execute(
        """SELECT raw_id, bucket, object_key, etag, size, customer_id, day FROM raw_inbox
           WHERE raw_id > %s ORDER BY raw_id LIMIT %s""",
        (raw_id, limit),
    ).fetchall()
    return [RawSeen(r[0], r[1], r[2], r[3], r[4], r[5], r[6].isoformat()) for r in rows]


def prune(conn: psycopg.Connection, older_than_days: float, limit: int = 10_000) -> int:
    """Rows older than the sweep can reach again are history (S3 and the materializations keep it)."""
    with conn.transaction():
        return conn.execute(
            """DELETE FROM raw_inbox WHERE raw_id IN (
                   SELECT raw_id FROM raw_inbox WHERE seen_at < clock_timestamp() - %s * interval '1 day'
                   ORDER BY raw_id LIMIT %s)""",
            (older_than_days, limit),
        ).rowcount
