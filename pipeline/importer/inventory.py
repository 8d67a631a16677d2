"""What exists in S3 under the enriched prefix, and what the ledger says is loaded."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import psycopg
import pyarrow.parquet as pq


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    size: int


def list_enriched(s3, bucket: str, prefix: str) -> list[StoredObject]:
    paginator = s3.get_paginator("list_objects_v2")
    found = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                found.append(StoredObject(bucket, obj["Key"], obj["ETag"].strip('"'), obj["Size"]))
    return found


def parquet_num_rows(s3, obj: StoredObject) -> int | None:
    """Rows of a Parquet object, from its footer (two ranged reads, not the whole object).

    None when the object is not readable Parquet (a poison object: the importer rejects it too).
    """
    try:
        tail = s3.get_object(Bucket=obj.bucket, Key=obj.key, Range=f"bytes=-{min(obj.size, 8)}")["Body"].read()
        if len(tail) == 8 and tail[4:] == b"PAR1":
            footer_len = struct.unpack("<I", tail[:4])[0]
            length = footer_len + 8
            if length <= obj.size:
                footer = s3.get_object(Bucket=obj.bucket, Key=obj.key, Range=f"bytes=-{length}")["Body"].read()
                return pq.read_metadata(io.BytesIO(b"PAR1" + footer[:footer_len] + tail)).num_rows
    except Exception:
        pass
    body = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
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
    rows = conn.execute(
        """SELECT ledger_id, object_key, object_version, coalesce(rows, 0) FROM live_object_versions
           WHERE bucket = %s AND starts_with(object_key, %s)""",
        (bucket, prefix),
    ).fetchall()
    return {key: LiveLoad(ledger_id, key, version, n) for ledger_id, key, version, n in rows}
