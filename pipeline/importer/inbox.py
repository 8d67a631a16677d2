"""The transactional import inbox (migration 0008): the importers' work queue, in the warehouse.

Every object version a notification names is recorded here in one transaction before its SQS
message is deleted (``pipeline.importer.intake``), so an SQS receipt is never held while a run
waits in Dagster's queue: waiting redelivers nothing and dead-letters nothing. Importers take
rows by claiming them:

* the import sensor claims due rows for the runs it requests (``claimed_by`` = the run key,
  with a long lease); a run that ended without settling its rows is found by the sensor
  (``release_orphans``) and its rows are planned again;
* ``pipeline importer`` workers claim due rows for themselves (a short lease that a heartbeat
  renews); the rows of a worker that died come free when its lease runs out.

An importer counts an attempt when it starts a row (``start``), settles the row in the same
transaction as the load (``settle`` from ``load_object``), or records a failure (``fail``):
the row waits out a backoff and is tried again, until ``max_attempts`` starts make it ``dead``
(the dead-letter state: ``pipeline import-status`` lists it, ``pipeline redrive`` revives it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from pipeline import config
from pipeline.importer.events import ObjectVersion


@dataclass(frozen=True)
class InboxPolicy:
    """Retries, leases and dead-lettering of inbox rows (environment: PIPELINE_IMPORT_*)."""

    max_attempts: int = 5  # as the SQS queue's maxReceiveCount was
    retry_base_s: float = 10.0  # backoff after a failure: base * 2^(attempts-1), capped
    retry_max_s: float = 600.0
    lease_s: float = 300.0  # a worker's claim; its heartbeat renews it every third
    plan_lease_s: float = 3600.0  # a planned run's claim: how long it may wait before others take its rows
    orphan_grace_s: float = 60.0  # a run key with no active run this long after planning is an orphan

    @classmethod
    def from_env(cls) -> InboxPolicy:
        return cls(
            max_attempts=config.get("PIPELINE_IMPORT_MAX_ATTEMPTS"),
            retry_base_s=config.get("PIPELINE_IMPORT_RETRY_BASE_S"),
            retry_max_s=config.get("PIPELINE_IMPORT_RETRY_MAX_S"),
            lease_s=config.get("PIPELINE_IMPORT_LEASE_S"),
            plan_lease_s=config.get("PIPELINE_IMPORT_PLAN_LEASE_S"),
            orphan_grace_s=config.get("PIPELINE_IMPORT_ORPHAN_GRACE_S"),
        )


def _cur(conn: psycopg.Connection) -> psycopg.Cursor:
    """A cursor of plain tuples, whatever row factory the caller's connection has."""
    return conn.cursor(row_factory=tuple_row)


@dataclass(frozen=True)
class InboxRow:
    inbox_id: int
    version: ObjectVersion
    partition_key: str | None
    attempts: int
    plans: int
    repair: bool = False


_NAMES = (
    "inbox_id",
    "bucket",
    "object_key",
    "object_version",
    "etag",
    "size",
    "event_name",
    "event_time",
    "sequencer",
    "partition_key",
    "attempts",
    "plans",
    "repair",
)


def _columns(alias: str | None = None) -> sql.Composed:
    parts = []
    for name in _NAMES:
        column = sql.Identifier(alias, name) if alias else sql.Identifier(name)
        parts.append(sql.SQL("{}::text AS {}").format(column, sql.Identifier(name)) if name == "event_time" else column)
    return sql.SQL(", ").join(parts)


_COLUMNS = _columns()


def _row(record: dict) -> InboxRow:
    version = ObjectVersion(
        bucket=record["bucket"],
        key=record["object_key"],
        version=record["object_version"],
        etag=record["etag"],
        size=record["size"],
        event_time=record["event_time"],
        event_name=record["event_name"],
        sequencer=record["sequencer"],
    )
    return InboxRow(
        record["inbox_id"], version, record["partition_key"], record["attempts"], record["plans"], record["repair"]
    )


@dataclass
class Recorded:
    """What recording a batch of object versions did."""

    new: list[InboxRow]  # rows inserted now (claimed by ``claim_for`` when given)
    joined: int = 0  # versions already pending: the delivery joined that row
    live: int = 0  # versions already the key's live load: nothing to do
    dead: int = 0  # versions whose identical write is dead-lettered: stays there until redriven


def live_versions(conn: psycopg.Connection, versions: Iterable[ObjectVersion]) -> dict[tuple[str, str], tuple]:
    """(bucket, key) -> (object_version, etag) of the key's live load, for the keys named."""
    pairs = sorted({(v.bucket, v.key) for v in versions})
    if not pairs:
        return {}
    rows = (
        _cur(conn)
        .execute(
            """SELECT l.bucket, l.object_key, l.object_version, l.etag FROM live_object_versions l
           JOIN unnest(%s::text[], %s::text[]) AS k(bucket, object_key)
             ON l.bucket = k.bucket AND l.object_key = k.object_key""",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        )
        .fetchall()
    )
    return {(b, k): (v, e) for b, k, v, e in rows}


def record(
    conn: psycopg.Connection,
    versions: list[tuple[ObjectVersion, str | None]],
    partition_key_of,
    source: str = "sqs",
    claim_for: str | None = None,
    lease_s: float = 300.0,
    repair: bool = False,
) -> Recorded:
    """Record ``versions`` (each with the id of the message that named it) as pending rows.

    Runs in the caller's transaction. A version that is its key's live load needs nothing
    (removals always get a row: only the importer can tell whether the key is gone); one that
    is pending already is joined; one whose identical write (same sequencer, or event time) is
    dead stays dead; the rest become new rows, claimed by ``claim_for`` when given.
    """
    live = live_versions(conn, [v for v, _ in versions if not v.removed])
    result = Recorded(new=[])
    for version, message_id in versions:
        if not version.removed and not repair:
            current = live.get((version.bucket, version.key))
            if current is not None and version.same_object(*current):
                result.live += 1
                continue
        if _dead_write(conn, version):
            result.dead += 1
            continue
        row = _cur(conn).execute(
            sql.SQL("""INSERT INTO import_inbox AS i (bucket, object_key, object_version, etag, size, event_name,
                      event_time, sequencer, source, message_ids, partition_key, repair,
                      claimed_by, claimed_at, lease_until, plans)
               VALUES (%(bucket)s, %(key)s, %(version)s, %(etag)s, %(size)s, %(event_name)s, %(event_time)s,
                       %(sequencer)s, %(source)s, %(message_ids)s, %(partition_key)s, %(repair)s, %(owner)s,
                       CASE WHEN %(owner)s::text IS NULL THEN NULL ELSE clock_timestamp() END,
                       CASE WHEN %(owner)s::text IS NULL THEN NULL
                            ELSE clock_timestamp() + make_interval(secs => %(lease)s) END,
                       CASE WHEN %(owner)s::text IS NULL THEN 0 ELSE 1 END)
               ON CONFLICT (bucket, object_key, object_version) WHERE state = 'pending'
               DO UPDATE SET deliveries = i.deliveries + 1,
                             message_ids = i.message_ids || EXCLUDED.message_ids,
                             repair = i.repair OR EXCLUDED.repair,
                             sequencer = coalesce(i.sequencer, EXCLUDED.sequencer)
               RETURNING {}, (xmax = 0) AS inserted""").format(_COLUMNS),
            {
                "bucket": version.bucket,
                "key": version.key,
                "version": version.version,
                "etag": version.etag,
                "size": version.size,
                "event_name": version.event_name,
                "event_time": version.event_time,
                "sequencer": version.sequencer,
                "source": source,
                "message_ids": [message_id] if message_id else [],
                "partition_key": partition_key_of(version),
                "repair": repair,
                "owner": claim_for,
                "lease": lease_s,
            },
        )
        record_row = dict(zip([c.name for c in row.description], row.fetchone(), strict=True))
        if record_row.pop("inserted"):
            result.new.append(_row(record_row))
        else:
            result.joined += 1
    return result


def _dead_write(conn: psycopg.Connection, version: ObjectVersion) -> bool:
    """A dead row for the same write: a duplicate delivery of a notification already dead-lettered.

    A new write of the same bytes has another sequencer or event time, and gets a new row.
    """
    row = (
        _cur(conn)
        .execute(
            """SELECT 1 FROM import_inbox WHERE state = 'dead' AND bucket = %s AND object_key = %s
           AND object_version = %s
           AND coalesce(sequencer, event_time::text, '') = coalesce(%s, %s::timestamptz::text, '')
           LIMIT 1""",
            (version.bucket, version.key, version.version, version.sequencer, version.event_time),
        )
        .fetchone()
    )
    return row is not None


def expire_dead(conn: psycopg.Connection, policy: InboxPolicy) -> int:
    """Rows whose claim lapsed after ``max_attempts`` starts that never settled (each one killed
    its importer, say) are dead: no importer takes them again until they are redriven."""
    return (
        _cur(conn)
        .execute(
            """UPDATE import_inbox SET state = 'dead', claimed_by = NULL, lease_until = NULL,
                  last_error = coalesce(last_error || '; ', '') || 'started ' || attempts ||
                               ' time(s) and never settled (its importer died each time)'
           WHERE state = 'pending' AND lease_until < clock_timestamp() AND attempts >= %s
             AND started_at >= claimed_at""",
            (policy.max_attempts,),
        )
        .rowcount
    )


_DUE = sql.SQL("""state = 'pending' AND not_before <= clock_timestamp()
          AND (claimed_by IS NULL OR lease_until < clock_timestamp())""")


def claim(conn: psycopg.Connection, owner: str, limit: int, lease_s: float, policy: InboxPolicy) -> list[InboxRow]:
    """Up to ``limit`` due rows (unclaimed, or whose claim lapsed), claimed for ``owner``."""
    if limit <= 0:
        return []
    with conn.transaction():
        expire_dead(conn, policy)
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(
            sql.SQL("""UPDATE import_inbox i SET claimed_by = %s, claimed_at = clock_timestamp(),
                      lease_until = clock_timestamp() + make_interval(secs => %s), plans = i.plans + 1
               FROM (SELECT inbox_id FROM import_inbox WHERE {}
                     ORDER BY inbox_id LIMIT %s FOR UPDATE SKIP LOCKED) due
               WHERE i.inbox_id = due.inbox_id
               RETURNING {}""").format(_DUE, _columns("i")),
            (owner, lease_s, limit),
        ).fetchall()
    return sorted((_row(r) for r in rows), key=lambda r: r.inbox_id)


def assign(conn: psycopg.Connection, groups: dict[str, list[int]], lease_s: float) -> None:
    """Hand rows claimed during planning to the run keys that will import them."""
    for owner, ids in groups.items():
        _cur(conn).execute(
            """UPDATE import_inbox SET claimed_by = %s, claimed_at = clock_timestamp(),
                      lease_until = clock_timestamp() + make_interval(secs => %s)
               WHERE inbox_id = ANY(%s) AND state = 'pending'""",
            (owner, lease_s, ids),
        )


def start(conn: psycopg.Connection, inbox_id: int) -> str:
    """An importer starts the row: count the attempt. Returns the row's state ('pending' to go on;
    'done' or 'dead': another importer settled it, or it was dead-lettered meanwhile)."""
    row = (
        _cur(conn)
        .execute(
            """UPDATE import_inbox SET attempts = attempts + CASE WHEN state = 'pending' THEN 1 ELSE 0 END,
                  started_at = CASE WHEN state = 'pending' THEN clock_timestamp() ELSE started_at END
           WHERE inbox_id = %s RETURNING state""",
            (inbox_id,),
        )
        .fetchone()
    )
    return row[0] if row else "missing"


def settle(conn_or_cursor, inbox_id: int | None, outcome: str, ledger_id: int | None = None) -> None:
    """The row is done (in the load's own transaction when there is one)."""
    if inbox_id is None:
        return
    conn_or_cursor.execute(
        """UPDATE import_inbox SET state = 'done', outcome = %s, ledger_id = %s, settled_at = clock_timestamp(),
                  lease_until = NULL
           WHERE inbox_id = %s AND state <> 'done'""",
        (outcome, ledger_id, inbox_id),
    )


def fail(conn: psycopg.Connection, inbox_id: int, error: str, policy: InboxPolicy) -> str:
    """A failed attempt: back off and try again, or dead-letter after ``max_attempts``."""
    row = (
        _cur(conn)
        .execute(
            """UPDATE import_inbox SET
                  state = CASE WHEN attempts >= %(max)s THEN 'dead' ELSE 'pending' END,
                  last_error = %(error)s, claimed_by = NULL, lease_until = NULL,
                  not_before = clock_timestamp()
                               + make_interval(secs => least(%(cap)s, %(base)s * 2 ^ greatest(attempts - 1, 0)))
           WHERE inbox_id = %(id)s AND state = 'pending' RETURNING state""",
            {
                "max": policy.max_attempts,
                "error": error[:4000],
                "cap": policy.retry_max_s,
                "base": policy.retry_base_s,
                "id": inbox_id,
            },
        )
        .fetchone()
    )
    return row[0] if row else "settled"


def postpone(conn: psycopg.Connection, inbox_id: int, seconds: float, why: str) -> None:
    """Contention, not failure (the key's lock stayed held past lock_timeout): the start is not
    counted, and the row is due again after ``seconds``. Waiting never dead-letters anything."""
    _cur(conn).execute(
        """UPDATE import_inbox SET attempts = greatest(attempts - 1, 0), claimed_by = NULL, lease_until = NULL,
                  last_error = %s, not_before = clock_timestamp() + make_interval(secs => %s)
           WHERE inbox_id = %s AND state = 'pending'""",
        (why[:4000], seconds, inbox_id),
    )


def release(conn: psycopg.Connection, inbox_ids: list[int], owner: str | None = None) -> int:
    """Give rows back unstarted (SIGTERM, a run that stops early): due again at once."""
    if not inbox_ids:
        return 0
    return (
        _cur(conn)
        .execute(
            """UPDATE import_inbox SET claimed_by = NULL, lease_until = NULL
           WHERE inbox_id = ANY(%s) AND state = 'pending' AND (%s::text IS NULL OR claimed_by = %s)""",
            (inbox_ids, owner, owner),
        )
        .rowcount
    )


def renew(conn: psycopg.Connection, inbox_ids: list[int], owner: str | None, lease_s: float) -> int:
    """The claim heartbeat: rows still held stay held for another ``lease_s``."""
    return (
        _cur(conn)
        .execute(
            """UPDATE import_inbox SET lease_until = clock_timestamp() + make_interval(secs => %s)
           WHERE inbox_id = ANY(%s) AND state = 'pending' AND (%s::text IS NULL OR claimed_by = %s)""",
            (lease_s, inbox_ids, owner, owner),
        )
        .rowcount
    )


def release_orphans(conn: psycopg.Connection, active_owners: set[str], prefix: str, policy: InboxPolicy) -> int:
    """Rows planned for runs (owners starting with ``prefix``) that are no longer queued or
    running, and left them unsettled (the run failed before them, was canceled, or crashed):
    due again, or dead when they were started ``max_attempts`` times."""
    with conn.transaction():
        dead = (
            _cur(conn)
            .execute(
                """UPDATE import_inbox SET state = 'dead', claimed_by = NULL, lease_until = NULL,
                      last_error = coalesce(last_error || '; ', '') || 'its run ' || claimed_by ||
                                   ' ended without settling it, ' || attempts || ' start(s)'
               WHERE state = 'pending' AND starts_with(claimed_by, %s) AND NOT (claimed_by = ANY(%s))
                 AND claimed_at < clock_timestamp() - make_interval(secs => %s)
                 AND attempts >= %s AND started_at >= claimed_at""",
                (prefix, sorted(active_owners), policy.orphan_grace_s, policy.max_attempts),
            )
            .rowcount
        )
        freed = (
            _cur(conn)
            .execute(
                """UPDATE import_inbox SET claimed_by = NULL, lease_until = NULL
               WHERE state = 'pending' AND starts_with(claimed_by, %s) AND NOT (claimed_by = ANY(%s))
                 AND claimed_at < clock_timestamp() - make_interval(secs => %s)""",
                (prefix, sorted(active_owners), policy.orphan_grace_s),
            )
            .rowcount
        )
    return dead + freed


def redrive(conn: psycopg.Connection, bucket: str | None = None, prefix: str = "") -> int:
    """Dead rows back to pending with a fresh set of attempts (after the cause was fixed).

    A dead row whose version got a new pending row meanwhile (the same bytes written again)
    is settled as joined to it instead.
    """
    with conn.transaction():
        joined = (
            _cur(conn)
            .execute(
                """UPDATE import_inbox d
               SET state = 'done', outcome = 'redriven_into_pending', settled_at = clock_timestamp()
               WHERE d.state = 'dead' AND (%(b)s::text IS NULL OR d.bucket = %(b)s) AND starts_with(d.object_key, %(p)s)
                 AND EXISTS (SELECT 1 FROM import_inbox p WHERE p.state = 'pending' AND p.bucket = d.bucket
                             AND p.object_key = d.object_key AND p.object_version = d.object_version)""",
                {"b": bucket, "p": prefix},
            )
            .rowcount
        )
        # One row per version may be pending: of several dead rows of a version, revive the newest.
        revived = (
            _cur(conn)
            .execute(
                """UPDATE import_inbox d SET state = 'pending', attempts = 0, not_before = clock_timestamp(),
                      claimed_by = NULL, lease_until = NULL
               WHERE d.inbox_id IN (SELECT DISTINCT ON (bucket, object_key, object_version) inbox_id
                                    FROM import_inbox WHERE state = 'dead'
                                      AND (%(b)s::text IS NULL OR bucket = %(b)s) AND starts_with(object_key, %(p)s)
                                    ORDER BY bucket, object_key, object_version, inbox_id DESC)""",
                {"b": bucket, "p": prefix},
            )
            .rowcount
        )
        _cur(conn).execute(
            """UPDATE import_inbox SET state = 'done', outcome = 'redriven_into_pending', settled_at = clock_timestamp()
               WHERE state = 'dead' AND (%(b)s::text IS NULL OR bucket = %(b)s) AND starts_with(object_key, %(p)s)""",
            {"b": bucket, "p": prefix},
        )
    return revived + joined


@dataclass(frozen=True)
class InboxCounts:
    pending: int  # not settled: due, waiting out a backoff, or claimed
    claimed: int
    retrying: int  # failed at least once, waiting for the next attempt
    dead: int
    oldest_pending_s: float | None
    # pending rows a worker can take or holds: not those a live lease gives to a Dagster run (or to
    # a sensor planning runs), which run on the runs' own capacity (the worker capacity's backlog)
    for_workers: int = 0

    def as_dict(self) -> dict:
        return {
            "pending": self.pending,
            "claimed": self.claimed,
            "retrying": self.retrying,
            "dead": self.dead,
            "oldest_pending_s": self.oldest_pending_s,
        }


WORKER_OWNER_PREFIX = "worker:"  # pipeline.importer.worker.worker_owner


def counts(conn: psycopg.Connection, bucket: str | None = None, prefix: str = "") -> InboxCounts:
    row = (
        _cur(conn)
        .execute(
            """SELECT count(*) FILTER (WHERE state = 'pending'),
                  count(*) FILTER (WHERE state = 'pending' AND claimed_by IS NOT NULL
                                   AND lease_until >= clock_timestamp()),
                  count(*) FILTER (WHERE state = 'pending' AND last_error IS NOT NULL),
                  count(*) FILTER (WHERE state = 'dead'),
                  extract(epoch FROM clock_timestamp() - min(received_at) FILTER (WHERE state = 'pending')),
                  count(*) FILTER (WHERE state = 'pending' AND (claimed_by IS NULL OR lease_until < clock_timestamp()
                                                                OR starts_with(claimed_by, %s)))
           FROM import_inbox
           WHERE state IN ('pending', 'dead') AND (%s::text IS NULL OR bucket = %s) AND starts_with(object_key, %s)""",
            (WORKER_OWNER_PREFIX, bucket, bucket, prefix),
        )
        .fetchone()
    )
    oldest = round(float(row[4]), 1) if row[4] is not None else None
    return InboxCounts(row[0], row[1], row[2], row[3], oldest, row[5])


def dead_letters(conn: psycopg.Connection, limit: int = 20, bucket: str | None = None, prefix: str = "") -> list[dict]:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT inbox_id, bucket, object_key, object_version, attempts, last_error, received_at
           FROM import_inbox WHERE state = 'dead' AND (%s::text IS NULL OR bucket = %s) AND starts_with(object_key, %s)
           ORDER BY inbox_id DESC LIMIT %s""",
            (bucket, bucket, prefix, limit),
        )
        .fetchall()
    )


def prune_settled(conn: psycopg.Connection, older_than_s: float) -> int:
    """Settled rows are history; the ledger keeps what matters. Keep the inbox small."""
    return (
        _cur(conn)
        .execute(
            "DELETE FROM import_inbox WHERE state = 'done' "
            "AND settled_at < clock_timestamp() - make_interval(secs => %s)",
            (older_than_s,),
        )
        .rowcount
    )
