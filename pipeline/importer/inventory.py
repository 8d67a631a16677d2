"""What exists in S3 under the enriched prefix, and what the ledger says is loaded."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import psycopg
import pyarrow.parquet as pq

from pipeline.importer.events import version_identity


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None = None

    @property
    def version(self) -> str:
        """The identity the ledger records for this object (version id, else ETag)."""
        return version_identity(self.version_id, self.etag)


def bucket_is_versioned(s3, bucket: str) -> bool:
    """Versioning Enabled or Suspended: objects may carry version ids, listings must say which."""
    return s3.get_bucket_versioning(Bucket=bucket).get("Status") in {"Enabled", "Suspended"}


def list_enriched(s3, bucket: str, prefix: str) -> list[StoredObject]:
    """The enriched objects S3 holds now, with the identity the ledger uses for each: on a
    versioned bucket the current version's id (from ListObjectVersions), else the ETag."""
    found = []
    if bucket_is_versioned(s3, bucket):
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Versions", []):
                if obj.get("IsLatest") and obj["Key"].endswith(".parquet"):
                    version_id = obj.get("VersionId")
                    found.append(
                        StoredObject(
                            bucket,
                            obj["Key"],
                            obj["ETag"].strip('"'),
                            obj["Size"],
                            version_id if version_id != "null" else None,
                        )
                    )
        return found
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                found.append(StoredObject(bucket, obj["Key"], obj["ETag"].strip('"'), obj["Size"]))
    return found


class RangedObject(io.RawIOBase):
    """An S3 object version as a seekable file, each read one ranged GET: a Parquet reader given
    it fetches the footer and the column chunks it needs, not the object."""

    def __init__(self, s3, obj: StoredObject):
        self._s3, self._size, self._pos = s3, obj.size, 0
        version = {"VersionId": obj.version_id} if obj.version_id else {}
        self._which = {"Bucket": obj.bucket, "Key": obj.key, **version}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._size or not len(buffer):
            return 0
        end = min(self._pos + len(buffer), self._size) - 1
        data = self._s3.get_object(**self._which, Range=f"bytes={self._pos}-{end}")["Body"].read()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def parquet_rows_of(s3, obj: StoredObject, customer_id: str) -> int | None:
    """Rows of one customer in a Parquet object: its footer and ``customer_id`` column chunks
    only, by ranged reads (a batch object holds every tenant of its day: verify --customer
    must not download them). None when the object is not readable Parquet."""
    import pyarrow.compute as pc

    if obj.size < 12:
        return None
    try:
        with RangedObject(s3, obj) as ranged:
            column = pq.ParquetFile(ranged).read(columns=["customer_id"]).column("customer_id")
    except (OSError, ValueError, KeyError):
        return None
    return pc.sum(pc.equal(column, customer_id)).as_py() or 0


def parquet_num_rows(s3, obj: StoredObject) -> int | None:
    """Rows of a Parquet object, from its footer (two ranged reads, not the whole object).

    None when the object is not readable Parquet (a poison object: the importer rejects it too).
    """
    which = {"Bucket": obj.bucket, "Key": obj.key, **({"VersionId": obj.version_id} if obj.version_id else {})}
    try:
        tail = s3.get_object(**which, Range=f"bytes=-{min(obj.size, 8)}")["Body"].read()
        if len(tail) == 8 and tail[4:] == b"PAR1":
            footer_len = struct.unpack("<I", tail[:4])[0]
            length = footer_len + 8
            if length <= obj.size:
                footer = s3.get_object(**which, Range=f"bytes=-{length}")["Body"].read()
                return pq.read_metadata(io.BytesIO(b"PAR1" + footer[:footer_len] + tail)).num_rows
    except Exception:
        pass
    body = s3.get_object(**which)["Body"].read()
    try:
        return pq.read_metadata(io.BytesIO(body)).num_rows
    except (OSError, ValueError):  # ArrowInvalid is a ValueError: not Parquet
        return None


@dataclass(frozen=True)
class LiveLoad:
    ledger_id: int
    key: str
    version: str
    rows: int


def live_loads(conn: psycopg.Connection, bucket: str, prefix: str) -> dict[str, LiveLoad]:
    """The live load of each key (the newest, should a key ever have two: ``doubly_live`` says)."""
    rows = conn.execute(
        """SELECT ledger_id, object_key, object_version, coalesce(rows, 0) FROM live_object_versions
           WHERE bucket = %s AND starts_with(object_key, %s) ORDER BY ledger_id""",
        (bucket, prefix),
    ).fetchall()
    return {key: LiveLoad(ledger_id, key, version, n) for ledger_id, key, version, n in rows}


def doubly_live(conn: psycopg.Connection, bucket: str, prefix: str) -> list[str]:
    """Keys with more than one live load (never by design: each load ends the key's others)."""
    rows = conn.execute(
        """SELECT object_key FROM live_object_versions WHERE bucket = %s AND starts_with(object_key, %s)
           GROUP BY object_key HAVING count(*) > 1""",
        (bucket, prefix),
    ).fetchall()
    return [r[0] for r in rows]


def rows_per_load(conn: psycopg.Connection, ledger_ids: list[int]) -> dict[int, int]:
    if not ledger_ids:
        return {}
    return dict(
        conn.execute(
            "SELECT ledger_id, count(*) FROM telemetry_events WHERE ledger_id = ANY(%s) GROUP BY ledger_id",
            (ledger_ids,),
        ).fetchall()
    )


def ended_loads_with_rows(conn: psycopg.Connection, bucket: str, prefix: str) -> list[int]:
    """Loads that were superseded or tombstoned but still have rows (stray rows)."""
    rows = conn.execute(
        """SELECT DISTINCT l.refers_to FROM load_ledger l
           WHERE l.refers_to IS NOT NULL AND l.bucket = %s AND starts_with(l.object_key, %s)
             AND EXISTS (SELECT 1 FROM telemetry_events e WHERE e.ledger_id = l.refers_to)""",
        (bucket, prefix),
    ).fetchall()
    return [r[0] for r in rows]
