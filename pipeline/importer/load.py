"""Load one enriched object version into the warehouse, in one transaction.

Order inside the transaction (DESIGN.md section 5):
1. claim the version's ``loaded`` ledger row (its unique index serializes concurrent importers
   of the same version: the second one waits, then finds the claim and backs off);
2. end the earlier live version of the same key (``superseded``) and drop its rows;
3. bulk-load the rows with ``COPY ... (FORMAT BINARY)``;
4. commit. Only after this may the caller acknowledge the queue message.

The object is fetched and decoded before the transaction opens, so no database lock is held
while bytes cross the network.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from psycopg import sql

from pipeline.importer.events import ObjectVersion
from pipeline.telemetry import ENRICHED_FIELDS

log = logging.getLogger(__name__)

EVENT_COLUMNS = list(ENRICHED_FIELDS)
# Binary COPY wire types. timestamptz and date travel as what PostgreSQL's binary format is for
# them (int64 microseconds / int32 days since 2000-01-01), computed column-wise by Arrow: the
# bytes are identical, and no Python datetime is ever built (that was half the importer's time).
_COPY_TYPES = {
    "str": "text",
    "int": "int8",
    "float": "float8",
    "bool": "bool",
    "date": "int4",
    "timestamp": "int8",
}
COPY_TYPES = [_COPY_TYPES[ENRICHED_FIELDS[name]] for name in EVENT_COLUMNS]
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 in Unix days
COPY_SQL = sql.SQL("COPY telemetry_events ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in ["ledger_id", *EVENT_COLUMNS])
)
DEFAULT_MAX_OBJECT_BYTES = 512 * 1024 * 1024


class ObjectRejected(ValueError):
    """The object cannot be imported as it is (not Parquet, wrong columns, too big, ...).

    Retrying will not help; the message names the object and what to do.
    """


@dataclass(frozen=True)
class LoadResult:
    version: ObjectVersion
    outcome: str  # loaded | duplicate | stale | tombstoned | nothing_to_tombstone
    rows: int = 0
    bytes: int = 0
    ledger_id: int | None = None
    superseded: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class FetchedObject:
    table: pa.Table
    body_bytes: int
    checksum: str


def fetch(s3, version: ObjectVersion, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> FetchedObject | None:
    """Download and decode the version; None when that version no longer exists (overwritten)."""
    where = f"s3://{version.bucket}/{version.key}"
    kwargs = {"Bucket": version.bucket, "Key": version.key}
    if version.etag and version.version != version.etag:
        kwargs["VersionId"] = version.version
    elif version.etag:
        kwargs["IfMatch"] = f'"{version.etag}"'
    try:
        response = s3.get_object(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "PreconditionFailed", "412", "404", "NoSuchVersion"}:
            return None
        raise
    length = response.get("ContentLength") or 0
    if length > max_bytes:
        raise ObjectRejected(
            f"{where} is {length} bytes, over the importer's limit of {max_bytes}: split the "
            "enriched output into smaller objects or raise importer max_object_bytes."
        )
    body = response["Body"].read()
    etag = response.get("ETag", "").strip('"')
    if version.etag and etag and etag != version.etag and "VersionId" not in kwargs:
        return None  # the key was overwritten between the event and this read
    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ObjectRejected(
            f"{where} (version {version.version}) is not readable Parquet: {exc}. "
            "Re-publish the partition from enrichment; this version is recorded as failed."
        ) from None
    missing = [name for name in EVENT_COLUMNS if name not in table.column_names]
    if missing:
        raise ObjectRejected(
            f"{where} (version {version.version}) lacks columns {missing}: it was not written "
            "by this pipeline's enrichment (or by an older schema). Re-run enrichment for its partition."
        )
    return FetchedObject(table.select(EVENT_COLUMNS), len(body), hashlib.sha256(body).hexdigest())


def _wire_column(table: pa.Table, name: str) -> list:
    column = table.column(name)
    kind = ENRICHED_FIELDS[name]
    if kind == "timestamp":
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.subtract(micros, _PG_EPOCH_US).to_pylist()
    if kind == "date":
        return pc.subtract(pc.cast(pc.cast(column, pa.date32()), pa.int32()), _PG_EPOCH_DAYS).to_pylist()
    return column.to_pylist()


def _rows(table: pa.Table, ledger_id: int):
    columns = [_wire_column(table, name) for name in EVENT_COLUMNS]
    ids = [ledger_id] * table.num_rows
    return zip(ids, *columns, strict=True)


def _supersede(cur, version: ObjectVersion, event: str, run_id: str | None, worker: str | None) -> int:
    """End the live loads of the key (all of them for a removal, else all but ``version``); drop their rows."""
    cur.execute(
        """SELECT ledger_id FROM live_object_versions
           WHERE bucket = %s AND object_key = %s AND (%s OR object_version <> %s)""",
        (version.bucket, version.key, event == "tombstoned", version.version),
    )
    ended = [row[0] for row in cur.fetchall()]
    for ledger_id in ended:
        cur.execute(
            """INSERT INTO load_ledger (event, bucket, object_key, object_version, etag,
                                        refers_to, run_id, worker, event_time)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                event,
                version.bucket,
                version.key,
                version.version,
                version.etag,
                ledger_id,
                run_id,
                worker,
                version.event_time,
            ),
        )
        cur.execute("DELETE FROM telemetry_events WHERE ledger_id = %s", (ledger_id,))
    return len(ended)


def load_object(
    conn: psycopg.Connection,
    s3,
    version: ObjectVersion,
    run_id: str | None = None,
    worker: str | None = None,
    max_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    prefetched: Future | None = None,
) -> LoadResult:
    """Import ``version`` exactly once. Safe to call again for the same version: a duplicate.

    ``prefetched``: a future of ``fetch(s3, version)`` started earlier (the batch importer reads
    the next objects while this one is copied).
    """
    if not conn.autocommit:
        raise ValueError("load_object needs an autocommit connection, so that its transaction commits by itself")
    started = time.monotonic()
    if version.removed:
        return tombstone(conn, version, run_id, worker, s3)
    if already_loaded(conn, version):
        return LoadResult(version, "duplicate")
    fetched = prefetched.result() if prefetched is not None else fetch(s3, version, max_bytes)
    if fetched is None:
        return LoadResult(version, "stale", seconds=time.monotonic() - started)
    with conn.transaction(), conn.cursor() as cur:
        _lock_key(cur, version)
        cur.execute(
            """INSERT INTO load_ledger (event, bucket, object_key, object_version, etag, rows,
                                        bytes, checksum, run_id, worker, event_time, started_at)
               VALUES ('loaded', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
               ON CONFLICT (bucket, object_key, object_version) WHERE event = 'loaded' DO NOTHING
               RETURNING ledger_id""",
            (
                version.bucket,
                version.key,
                version.version,
                version.etag,
                fetched.table.num_rows,
                fetched.body_bytes,
                fetched.checksum,
                run_id,
                worker,
                version.event_time,
            ),
        )
        claimed = cur.fetchone()
        if claimed is None:
            return LoadResult(version, "duplicate", seconds=time.monotonic() - started)
        ledger_id = claimed[0]
        superseded = _supersede(cur, version, "superseded", run_id, worker)
        with cur.copy(COPY_SQL) as copy:
            copy.set_types(["int8", *COPY_TYPES])
            for row in _rows(fetched.table, ledger_id):
                copy.write_row(row)
    seconds = time.monotonic() - started
    log.info(
        "imported s3://%s/%s version=%s rows=%d bytes=%d superseded=%d seconds=%.3f",
        version.bucket,
        version.key,
        version.version,
        fetched.table.num_rows,
        fetched.body_bytes,
        superseded,
        seconds,
    )
    return LoadResult(version, "loaded", fetched.table.num_rows, fetched.body_bytes, ledger_id, superseded, seconds)


def _exists(s3, version: ObjectVersion) -> bool:
    try:
        s3.head_object(Bucket=version.bucket, Key=version.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def _lock_key(cur, version: ObjectVersion) -> None:
    """Serialize the transactions that change one key's live version (loads and deletes)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{version.bucket}/{version.key}",))


def tombstone(
    conn: psycopg.Connection,
    version: ObjectVersion,
    run_id: str | None = None,
    worker: str | None = None,
    s3=None,
) -> LoadResult:
    """The key was deleted: end its live load so its rows leave the warehouse.

    S3 events arrive in any order: a delete can come after the key was written again. With
    ``s3``, the key is looked up under the key's lock; if it exists, this delete is older than
    the object there (whose own event loads it) and is ``stale``. The lock makes the look-up and
    a concurrent load of the new object take turns, so neither can undo the other.
    """
    started = time.monotonic()
    with conn.transaction(), conn.cursor() as cur:
        _lock_key(cur, version)
        if s3 is not None and _exists(s3, version):
            log.info("stale delete s3://%s/%s: the key exists again", version.bucket, version.key)
            return LoadResult(version, "stale", seconds=time.monotonic() - started)
        ended = _supersede(cur, version, "tombstoned", run_id, worker)
    outcome = "tombstoned" if ended else "nothing_to_tombstone"
    return LoadResult(version, outcome, superseded=ended, seconds=time.monotonic() - started)


def already_loaded(conn: psycopg.Connection, version: ObjectVersion) -> bool:
    row = conn.execute(
        """SELECT 1 FROM load_ledger WHERE event = 'loaded' AND bucket = %s
           AND object_key = %s AND object_version = %s""",
        (version.bucket, version.key, version.version),
    ).fetchone()
    return row is not None
