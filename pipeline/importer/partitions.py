"""Dagster partition keys for S3 objects: safe, bounded, readable, and mapped back to the object.

A key is the object's key below the enriched prefix, with anything outside ``[A-Za-z0-9=._/-]``
replaced by ``_``, cut to its last 80 characters, plus ``~`` and 12 hex digits of the full
bucket/key hash. So it has no commas, no ``...``, no control characters, is at most 93
characters, and stays readable; ``object_partitions`` maps it back exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import psycopg

READABLE_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9=._/-]")


def partition_key(bucket: str, key: str, prefix: str = "") -> str:
    relative = key[len(prefix) :] if prefix and key.startswith(prefix) else key
    readable = _UNSAFE.sub("_", relative)[-READABLE_CHARS:]
    readable = readable.replace("..", "._")  # Dagster refuses "..." in partition keys
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:12]
    return f"{readable}~{digest}"


def record_partitions(conn: psycopg.Connection, rows: Iterable[tuple[str, str, str]]) -> set[str]:
    """Remember (partition_key, bucket, object_key); return the keys seen for the first time
    (or again after pruning). One round trip, whatever the number of partitions that exist."""
    rows = sorted(set(rows))
    if not rows:
        return set()
    keys = [r[0] for r in rows]
    known = {
        k
        for (k,) in conn.execute(
            "SELECT partition_key FROM object_partitions WHERE partition_key = ANY(%s) AND pruned_at IS NULL",
            (keys,),
        ).fetchall()
    }
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO object_partitions (partition_key, bucket, object_key) VALUES (%s, %s, %s)
               ON CONFLICT (partition_key) DO UPDATE SET pruned_at = NULL""",
            [r for r in rows if r[0] not in known],
        )
    return set(keys) - known


def objects_for(conn: psycopg.Connection, partition_keys: list[str]) -> dict[str, tuple[str, str]]:
    """partition key -> (bucket, object key), for the keys known."""
    rows = conn.execute(
        "SELECT partition_key, bucket, object_key FROM object_partitions WHERE partition_key = ANY(%s)",
        (partition_keys,),
    ).fetchall()
    return {pk: (bucket, key) for pk, bucket, key in rows}


def prunable(conn: psycopg.Connection, older_than_seconds: float, limit: int = 5000) -> list[str]:
    """Partition keys whose object is settled (loaded or tombstoned, no open failure) and old."""
    rows = conn.execute(
        """SELECT p.partition_key FROM object_partitions p
           WHERE p.pruned_at IS NULL AND p.added_at < now() - make_interval(secs => %s)
             AND EXISTS (SELECT 1 FROM load_ledger l WHERE l.bucket = p.bucket AND l.object_key = p.object_key)
             AND NOT EXISTS (
                 SELECT 1 FROM import_failures f WHERE f.bucket = p.bucket AND f.object_key = p.object_key
                   AND NOT EXISTS (SELECT 1 FROM load_ledger l WHERE l.bucket = f.bucket
                                   AND l.object_key = f.object_key AND l.recorded_at > f.failed_at))
           ORDER BY p.added_at LIMIT %s""",
        (older_than_seconds, limit),
    ).fetchall()
    return [row[0] for row in rows]


def mark_pruned(conn: psycopg.Connection, keys: list[str]) -> None:
    conn.execute("UPDATE object_partitions SET pruned_at = now() WHERE partition_key = ANY(%s)", (keys,))
