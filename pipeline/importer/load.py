"""Load one enriched object version into the warehouse, in one transaction.

Order inside the transaction (DESIGN.md section 5, as built):
1. take the key's lock (an advisory lock that loads and deletes of one key share);
2. re-check, under that lock, that this version is what S3 holds for the key now (a HEAD: a
   load fetched before a newer write is ``stale`` when it commits late), that no newer S3 event
   of the key was applied already (its ``sequencer``, where the event carries one), and that it
   is not the key's live load already (``duplicate``);
3. record the load (a new ``loaded`` ledger row: a version written again after another one is
   loaded again), end the key's earlier live load (``superseded``) and drop its rows;
4. bulk-load the rows with ``COPY ... (FORMAT BINARY)``;
5. settle the object's inbox row, and commit.

The object is fetched and decoded before the transaction opens, so no database lock is held
while the bytes cross the network; only the HEAD is made under the lock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from psycopg import sql

from pipeline.batches import batch_of, manifest
from pipeline.importer import inbox
from pipeline.importer.events import ObjectVersion, compare_sequencers, version_identity
from pipeline.telemetry import ENRICHED_FIELDS
from pipeline.warehouse import partitions, retention

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
# The event id is a uuid column: the 128-bit hash's 16 bytes, which is also uuid's binary format,
# so it travels as those bytes (bytes.fromhex of the 32 hex characters enrichment writes).
COPY_TYPES = ["bytea" if name == "event_id" else _COPY_TYPES[ENRICHED_FIELDS[name]] for name in EVENT_COLUMNS]
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 in Unix days
COPY_SQL = sql.SQL("COPY telemetry_events ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in ["ledger_id", *EVENT_COLUMNS])
)
DEFAULT_MAX_OBJECT_BYTES = 5 * 1024**3  # objects stream to disk by row group: this bounds local disk, not memory


class ObjectRejected(ValueError):
    """The object cannot be imported as it is (not Parquet, wrong columns, too big, ...).

    Retrying will not help; the message names the object and what to do.
    """


# The tenant of an enriched object: the one its key names (enriched/customer=<id>/dt=<day>/),
# or, for a batch object (enriched/dt=<day>/batch=<id>/), the tenants of the batch's manifest,
# which enrichment records in the warehouse before it publishes the batch. The importer checks
# every row against them again: an object in the enriched bucket is not trusted for its key.
_KEY_TENANT = re.compile(r"(?:^|/)customer=(?P<customer>[a-z0-9][a-z0-9_-]{0,62})/dt=\d{4}-\d{2}-\d{2}/")


def key_tenant(key: str) -> str | None:
    match = _KEY_TENANT.search(key)
    return match["customer"] if match else None


def object_tenants(cur, key: str) -> tuple[set[str] | None, str]:
    """The tenants an object's rows may belong to, and what says so (for messages); None: no
    tenant (the object is under no customer=<id>/dt=<day>/ and is no batch enrichment planned)."""
    tenant = key_tenant(key)
    if tenant is not None:
        return {tenant}, "its key"
    batch = batch_of(key)
    if batch is None:
        return None, "its key"
    tenants = manifest(cur, batch)
    if tenants is None:
        return None, f"no enrichment batch {batch}"
    return set(tenants), f"the manifest of enrichment batch {batch}"


def check_tenant(table: pa.Table, tenant: str | set[str] | None, where: str, source: str = "its key") -> None:
    """Every row's ``customer_id`` is a tenant of the object; ObjectRejected otherwise."""
    if tenant is None:
        raise ObjectRejected(
            f"{where} is not under customer=<id>/dt=<day>/ and is no batch enrichment recorded ({source}), so it "
            "names no tenant: enrichment writes no such key; delete it. This version is recorded as failed."
        )
    tenants = {tenant} if isinstance(tenant, str) else tenant
    column = table.column("customer_id")
    matches = pc.fill_null(pc.is_in(column, value_set=pa.array(sorted(tenants), column.type)), False)
    if not pc.all(matches).as_py():
        others = sorted({str(v) for v in pc.filter(column, pc.invert(matches)).unique().to_pylist()})[:5]
        named = repr(next(iter(tenants))) if len(tenants) == 1 else f"the {len(tenants)} tenants"
        raise ObjectRejected(
            f"{where} holds rows of customer_id {others}, not of {named} that {source} names: rows are loaded "
            "only into the tenants of their object. Nothing of this version was loaded; it is recorded as failed "
            "(re-run enrichment for its partition, which quarantines such rows)."
        )


class S3AccessDenied(PermissionError):
    """S3 answered 403. Without ``s3:ListBucket`` S3 answers 403, not 404, for a missing key, so a
    403 is never taken for "gone": the message names the permission the importer needs."""


def _access_denied(exc: ClientError, what: str, where: str, permission: str) -> S3AccessDenied | None:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if error.get("Code") in {"AccessDenied", "403", "Forbidden"} or status == 403:
        return S3AccessDenied(
            f"{what} {where} answered 403 Forbidden: the importer's role needs {permission} (a missing key "
            "also answers 403 without s3:ListBucket on the enriched prefix, see deploy/cloudformation/"
            "compute.yaml). The object is retried, not taken for deleted."
        )
    return None


_GONE = {"NoSuchKey", "404", "NotFound", "NoSuchVersion", "PreconditionFailed", "412", "MethodNotAllowed", "405"}


@dataclass(frozen=True)
class LoadResult:
    version: ObjectVersion
    outcome: str  # loaded | duplicate | stale | expired | tombstoned | nothing_to_tombstone
    rows: int = 0
    bytes: int = 0
    ledger_id: int | None = None
    superseded: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class FetchedObject:
    """A downloaded object, read in batches of rows: an importer's memory is bounded by a batch,
    not by the object (bytes above ``SPOOL_IN_MEMORY`` wait on local disk, not in memory)."""

    parquet: pq.ParquetFile
    body_bytes: int
    checksum: str
    etag: str
    version_id: str | None
    where: str = ""

    @property
    def identity(self) -> str:
        return version_identity(self.version_id, self.etag)

    @property
    def num_rows(self) -> int:
        return self.parquet.metadata.num_rows

    def batches(self, rows: int | None = None):
        """The object's rows as Arrow batches of at most ``rows`` (default ``COPY_BATCH_ROWS``)."""
        try:
            for batch in self.parquet.iter_batches(batch_size=rows or COPY_BATCH_ROWS, columns=EVENT_COLUMNS):
                yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, OSError) as exc:
            raise ObjectRejected(
                f"{self.where} is not readable Parquet past its footer: {exc}. Re-publish the partition "
                "from enrichment; this version is recorded as failed."
            ) from None

    def day_range(self) -> tuple[dt.date, dt.date] | tuple[None, None]:
        """The first and last day of the object's rows (one column read), for their partitions.

        Every row needs a day: telemetry_events is partitioned by it."""
        try:
            days = self.parquet.read(columns=["day"]).column("day")
        except (pa.ArrowInvalid, OSError) as exc:
            raise ObjectRejected(
                f"{self.where} is not readable Parquet past its footer: {exc}. Re-publish the partition "
                "from enrichment; this version is recorded as failed."
            ) from None
        if days.null_count:
            raise ObjectRejected(
                f"{self.where} has {days.null_count} row(s) without a day: it was not written by this "
                "pipeline's enrichment. Re-run enrichment for its partition; this version is recorded as failed."
            )
        if len(days) == 0:
            return None, None
        bounds = pc.min_max(pc.cast(days, pa.date32()))
        return bounds["min"].as_py(), bounds["max"].as_py()

    @property
    def table(self) -> pa.Table:
        """The whole object at once (tests and benchmarks; the importer reads batches)."""
        return pa.concat_tables(list(self.batches()))


SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CHUNK = 1024 * 1024
# Rows turned into Python values at a time for COPY (47 columns: ~30 MB of objects per batch).
COPY_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class CurrentObject:
    """What S3 holds for a key now (a HEAD)."""

    etag: str
    version_id: str | None
    size: int

    @property
    def identity(self) -> str:
        return version_identity(self.version_id, self.etag)


def current_object(s3, bucket: str, key: str) -> CurrentObject | None:
    """The key's current object, or None when it does not exist (or its current version is a
    delete marker). A 403 raises ``S3AccessDenied``: forbidden is not gone."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        denied = _access_denied(exc, "HEAD", f"s3://{bucket}/{key}", "s3:GetObject and s3:ListBucket")
        if denied:
            raise denied from None
        if exc.response.get("Error", {}).get("Code") in _GONE:
            return None
        raise
    version_id = head.get("VersionId")
    return CurrentObject(head["ETag"].strip('"'), version_id if version_id != "null" else None, head["ContentLength"])


def fetch(s3, version: ObjectVersion, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> FetchedObject | None:
    """Download and decode the version; None when that version no longer exists (overwritten or
    deleted since the event)."""
    where = f"s3://{version.bucket}/{version.key}"
    kwargs = {"Bucket": version.bucket, "Key": version.key}
    if version.version_id:
        kwargs["VersionId"] = version.version_id
    elif version.etag:
        kwargs["IfMatch"] = f'"{version.etag}"'
    try:
        response = s3.get_object(**kwargs)
    except ClientError as exc:
        denied = _access_denied(exc, "GET", where, "s3:GetObject (and s3:GetObjectVersion on a versioned bucket)")
        if denied:
            raise denied from None
        if exc.response.get("Error", {}).get("Code") in _GONE:
            return None
        raise
    length = response.get("ContentLength") or 0
    if length > max_bytes:
        raise ObjectRejected(
            f"{where} is {length} bytes, over the importer's limit of {max_bytes}: split the "
            "enriched output into smaller objects or raise importer max_object_bytes."
        )
    etag = response.get("ETag", "").strip('"')
    if version.etag and etag and etag != version.etag and "VersionId" not in kwargs:
        return None  # the key was overwritten between the event and this read
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="pipeline-import-")  # noqa: SIM115
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: response["Body"].read(_CHUNK), b""):
        spooled.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    spooled.seek(0)
    try:
        parquet = pq.ParquetFile(spooled)
    except (pa.ArrowInvalid, OSError) as exc:
        spooled.close()
        raise ObjectRejected(
            f"{where} (version {version.version}) is not readable Parquet: {exc}. "
            "Re-publish the partition from enrichment; this version is recorded as failed."
        ) from None
    missing = [name for name in EVENT_COLUMNS if name not in parquet.schema_arrow.names]
    if missing:
        spooled.close()
        raise ObjectRejected(
            f"{where} (version {version.version}) lacks columns {missing}: it was not written "
            "by this pipeline's enrichment (or by an older schema). Re-run enrichment for its partition."
        )
    version_id = response.get("VersionId")
    return FetchedObject(
        parquet,
        size,
        digest.hexdigest(),
        etag or version.etag or "",
        version_id if version_id and version_id != "null" else None,
        where,
    )


_HEX = re.compile(r"[0-9a-fA-F]{32}")


def _wire_column(table: pa.Table, name: str, where: str = "") -> list:
    column = table.column(name)
    kind = ENRICHED_FIELDS[name]
    if kind == "timestamp":
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.subtract(micros, _PG_EPOCH_US).to_pylist()
    if kind == "date":
        return pc.subtract(pc.cast(pc.cast(column, pa.date32()), pa.int32()), _PG_EPOCH_DAYS).to_pylist()
    if name == "event_id":
        return _event_id_bytes(column.to_pylist(), where)
    return column.to_pylist()


def _event_id_bytes(ids: list, where: str) -> list[bytes]:
    try:
        return [bytes.fromhex(event_id) for event_id in ids]
    except (TypeError, ValueError):
        bad = next(i for i in ids if not isinstance(i, str) or len(i) != 32 or not _HEX.fullmatch(i))
        raise ObjectRejected(
            f"{where} holds event_id {str(bad)[:80]!r}, not 32 hexadecimal characters: it was not written by "
            "this pipeline's enrichment. Re-run enrichment for its partition; this version is recorded as failed."
        ) from None


def _rows(table: pa.Table, ledger_id: int, where: str = ""):
    columns = [_wire_column(table, name, where) for name in EVENT_COLUMNS]
    ids = [ledger_id] * table.num_rows
    return zip(ids, *columns, strict=True)


@dataclass(frozen=True)
class LiveLoad:
    ledger_id: int
    object_version: str
    etag: str | None
    rows: int | None


def live_load(conn_or_cursor, bucket: str, key: str) -> LiveLoad | None:
    row = conn_or_cursor.execute(
        "SELECT ledger_id, object_version, etag, rows FROM live_object_versions WHERE bucket = %s AND object_key = %s "
        "ORDER BY ledger_id DESC LIMIT 1",
        (bucket, key),
    ).fetchone()
    return LiveLoad(*row) if row else None


def _supersede(
    cur, version: ObjectVersion, event: str, run_id: str | None, worker: str | None, keep: int | None = None
) -> int:
    """End the key's live loads (all of them, or all but ``keep``) and drop their rows."""
    cur.execute(
        """SELECT ledger_id FROM live_object_versions
           WHERE bucket = %s AND object_key = %s AND ledger_id IS DISTINCT FROM %s""",
        (version.bucket, version.key, keep),
    )
    ended = [row[0] for row in cur.fetchall()]
    for ledger_id in ended:
        cur.execute(
            """INSERT INTO load_ledger (event, bucket, object_key, object_version, etag,
                                        refers_to, run_id, worker, event_time, sequencer)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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
                version.sequencer,
            ),
        )
        cur.execute("DELETE FROM telemetry_events WHERE ledger_id = %s", (ledger_id,))
    return len(ended)


def _lock_key(cur, version: ObjectVersion) -> None:
    """Serialize the transactions that change one key's live version (loads and deletes)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{version.bucket}/{version.key}",))


def _older_than_applied(cur, version: ObjectVersion) -> bool:
    """Whether a newer S3 event of this key (by sequencer) was applied already."""
    if not version.sequencer:
        return False
    row = cur.execute(
        "SELECT sequencer FROM object_sequencers WHERE bucket = %s AND object_key = %s",
        (version.bucket, version.key),
    ).fetchone()
    return row is not None and compare_sequencers(version.sequencer, row[0]) < 0


def _remember_sequencer(cur, version: ObjectVersion) -> None:
    if not version.sequencer:
        return
    row = cur.execute(
        "SELECT sequencer FROM object_sequencers WHERE bucket = %s AND object_key = %s",
        (version.bucket, version.key),
    ).fetchone()
    if row is None:
        cur.execute(
            "INSERT INTO object_sequencers (bucket, object_key, sequencer) VALUES (%s, %s, %s)",
            (version.bucket, version.key, version.sequencer),
        )
    elif compare_sequencers(version.sequencer, row[0]) > 0:
        cur.execute(
            "UPDATE object_sequencers SET sequencer = %s, updated_at = clock_timestamp() "
            "WHERE bucket = %s AND object_key = %s",
            (version.sequencer, version.bucket, version.key),
        )


def _stale(cur, version: ObjectVersion, inbox_id: int | None, started: float, why: str) -> LoadResult:
    log.info("stale s3://%s/%s version=%s: %s", version.bucket, version.key, version.version, why)
    inbox.settle(cur, inbox_id, "stale")
    return LoadResult(version, "stale", seconds=time.monotonic() - started)


def load_object(
    conn: psycopg.Connection,
    s3,
    version: ObjectVersion,
    run_id: str | None = None,
    worker: str | None = None,
    max_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    prefetched: Future | None = None,
    inbox_id: int | None = None,
    repair: bool = False,
) -> LoadResult:
    """Make ``version`` the key's live load, exactly once. Safe to call again: a duplicate.

    ``prefetched``: a future of ``fetch(s3, version)`` started earlier (the batch importer reads
    the next objects while this one is copied). ``inbox_id``: the inbox row this settles, in the
    same transaction. ``repair``: load even when this version is live already (the reconciler,
    when the live load's rows do not match the object).
    """
    if not conn.autocommit:
        raise ValueError("load_object needs an autocommit connection, so that its transaction commits by itself")
    started = time.monotonic()
    if version.removed:
        if prefetched is not None:
            prefetched.cancel()
        return tombstone(conn, version, run_id, worker, s3, inbox_id=inbox_id, max_bytes=max_bytes)
    oldest = retention.horizon()
    if retention.out_of_scope(version.key, oldest):
        # A late report, or a replayed notification, of a day past PIPELINE_RETENTION_DAYS: the
        # warehouse keeps no such day (its partition is dropped, or would be at the next run), so
        # it is neither loaded nor retried; verify and the reconciler leave it alone likewise.
        if prefetched is not None:
            prefetched.cancel()
        log.info(
            "expired s3://%s/%s version=%s: its day %s is past the retention horizon %s; not loaded",
            version.bucket,
            version.key,
            version.version,
            retention.key_day(version.key),
            oldest,
        )
        inbox.settle(conn, inbox_id, "expired")
        return LoadResult(version, "expired", seconds=time.monotonic() - started)
    if _older_than_applied(conn, version):  # decided by the sequencer alone: no fetch, no lock
        if prefetched is not None:
            prefetched.cancel()
        return _stale(conn, version, inbox_id, started, f"a newer event than sequencer {version.sequencer} applied")
    if not repair:
        live = live_load(conn, version.bucket, version.key)
        if live is not None and version.same_object(live.object_version, live.etag):
            if prefetched is not None:
                prefetched.cancel()
            inbox.settle(conn, inbox_id, "duplicate", live.ledger_id)
            return LoadResult(version, "duplicate", ledger_id=live.ledger_id)
    try:
        fetched = prefetched.result() if prefetched is not None else fetch(s3, version, max_bytes)
    except ObjectRejected:
        # Unreadable, but is it still what S3 holds? A version overwritten since (a fixed
        # re-publish) needs no import: stale, not a failure that ends in the dead letters.
        now = current_object(s3, version.bucket, version.key)
        if now is not None and version.is_current(now.identity, now.etag):
            raise
        with conn.cursor() as cur:
            return _stale(cur, version, inbox_id, started, "unreadable, and no longer what S3 holds")
    if fetched is not None:  # the rows' partitions exist before the transaction that writes them
        partitions.ensure(conn, *fetched.day_range())
    with conn.transaction(), conn.cursor() as cur:
        if fetched is None:
            return _stale(cur, version, inbox_id, started, "this version is no longer in S3")
        _lock_key(cur, version)
        if _older_than_applied(cur, version):
            return _stale(cur, version, inbox_id, started, f"a newer event than sequencer {version.sequencer} applied")
        now = current_object(s3, version.bucket, version.key)
        if now is None:
            return _stale(cur, version, inbox_id, started, "the key was deleted since")
        if now.identity != fetched.identity and not (now.version_id is None and now.etag == fetched.etag):
            return _stale(cur, version, inbox_id, started, f"S3 holds {now.identity} now")
        live = live_load(cur, version.bucket, version.key)
        if live is not None and live.object_version == fetched.identity and not repair:
            inbox.settle(cur, inbox_id, "duplicate", live.ledger_id)
            return LoadResult(version, "duplicate", ledger_id=live.ledger_id, seconds=time.monotonic() - started)
        cur.execute(
            """INSERT INTO load_ledger (event, bucket, object_key, object_version, etag, rows,
                                        bytes, checksum, run_id, worker, event_time, started_at, sequencer)
               VALUES ('loaded', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)
               RETURNING ledger_id""",
            (
                version.bucket,
                version.key,
                fetched.identity,
                fetched.etag,
                fetched.num_rows,
                fetched.body_bytes,
                fetched.checksum,
                run_id,
                worker,
                version.event_time,
                version.sequencer,
            ),
        )
        ledger_id = cur.fetchone()[0]
        if run_id is None:  # a load no run reports: Dagster hears of it from worker_loads_sensor
            cur.execute("INSERT INTO dagster_outbox (ledger_id) VALUES (%s)", (ledger_id,))
        superseded = _supersede(cur, version, "superseded", run_id, worker, keep=ledger_id)
        tenants, source = object_tenants(cur, version.key)
        with cur.copy(COPY_SQL) as copy:
            copy.set_types(["int8", *COPY_TYPES])
            for table in fetched.batches():  # a batch of rows in memory at a time, whatever the object's size
                check_tenant(table, tenants, fetched.where, source)  # a foreign row rolls the whole version back
                for row in _rows(table, ledger_id, fetched.where):
                    copy.write_row(row)
        _remember_sequencer(cur, version)
        inbox.settle(cur, inbox_id, "loaded", ledger_id)
    seconds = time.monotonic() - started
    log.info(
        "imported s3://%s/%s version=%s rows=%d bytes=%d superseded=%d seconds=%.3f",
        version.bucket,
        version.key,
        fetched.identity,
        fetched.num_rows,
        fetched.body_bytes,
        superseded,
        seconds,
    )
    return LoadResult(version, "loaded", fetched.num_rows, fetched.body_bytes, ledger_id, superseded, seconds)


def tombstone(
    conn: psycopg.Connection,
    version: ObjectVersion,
    run_id: str | None = None,
    worker: str | None = None,
    s3=None,
    inbox_id: int | None = None,
    max_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
) -> LoadResult:
    """The key was deleted: end its live load so its rows leave the warehouse.

    S3 events arrive in any order: a delete can come after the key was written again. With
    ``s3``, the key is looked up under the key's lock. If it exists and its current version is
    the live load, this delete is older than that object: ``stale``. If it exists at a version
    that is not loaded (a versioned bucket whose newest version was deleted, so an older one is
    current again; or a re-creation whose own event is still on its way), that version is loaded.
    """
    started = time.monotonic()
    restore: CurrentObject | None = None
    with conn.transaction(), conn.cursor() as cur:
        _lock_key(cur, version)
        if _older_than_applied(cur, version):
            return _stale(cur, version, inbox_id, started, f"a newer event than sequencer {version.sequencer} applied")
        now = current_object(s3, version.bucket, version.key) if s3 is not None else None
        if now is not None:
            live = live_load(cur, version.bucket, version.key)
            if live is not None and live.object_version == now.identity:
                _remember_sequencer(cur, version)
                return _stale(cur, version, inbox_id, started, "the key exists again and is loaded")
            restore = now
        else:
            ended = _supersede(cur, version, "tombstoned", run_id, worker)
            _remember_sequencer(cur, version)
            outcome = "tombstoned" if ended else "nothing_to_tombstone"
            inbox.settle(cur, inbox_id, outcome)
            return LoadResult(version, outcome, superseded=ended, seconds=time.monotonic() - started)
    current = replace(
        version,
        version=restore.identity,
        etag=restore.etag,
        size=restore.size,
        event_name="ObjectCreated:Current",
        sequencer=None,
    )
    log.info(
        "delete of s3://%s/%s: the key holds %s, which is not loaded: loading it",
        version.bucket,
        version.key,
        restore.identity,
    )
    return load_object(conn, s3, current, run_id, worker, max_bytes, inbox_id=inbox_id)
