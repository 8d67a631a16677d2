"""What the collector has written: raw telemetry objects listed from S3, newest last."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

RAW_KEY = re.compile(r"customer=(?P<customer>[^/]+)/dt=(?P<day>\d{4}-\d{2}-\d{2})/[^/]+\.jsonl\.gz$")


@dataclass(frozen=True, order=True)
class RawObject:
    last_modified: dt.datetime
    key: str
    size: int
    customer_id: str
    day: str


def list_raw_objects(s3, bucket: str, prefix: str = "raw/") -> Iterator[RawObject]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            match = RAW_KEY.search(obj["Key"])
            if match:
                yield RawObject(obj["LastModified"], obj["Key"], obj["Size"], match["customer"], match["day"])


@dataclass(frozen=True)
class RawObjectStats:
    records: int
    messages: int
    report_org: str
    report_id: str


def raw_object_stats(s3, bucket: str, key: str) -> RawObjectStats:
    """Counts the collector recorded in the object's metadata (no download)."""
    meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    return RawObjectStats(
        int(meta.get("records", 0)),
        int(meta.get("messages", 0)),
        unquote(meta.get("report-org", "")),
        unquote(meta.get("report-id", "")),
    )
