"""What the collector has written, as the pipeline reads it: raw object keys, their recorded counts, prefixes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

RAW_KEY = re.compile(r"customer=(?P<customer>[^/]+)/dt=(?P<day>\d{4}-\d{2}-\d{2})/[^/]+\.jsonl\.gz$")


@dataclass(frozen=True)
class RawObjectStats:
    records: int
    messages: int
    report_org: str
    report_id: str


def raw_object_stats(s3, bucket: str, key: str) -> RawObjectStats | None:
    """Counts the collector recorded in the object's metadata (no download); None when the
    object is gone since its notification (deleted or replaced: nothing to report of it)."""
    from botocore.exceptions import ClientError

    try:
        meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise

    def count(name: str) -> int:  # metadata is written by a collector: a number, or nothing
        value = str(meta.get(name, "0"))
        return int(value) if value.isdigit() else 0

    return RawObjectStats(
        count("records"),
        count("messages"),
        unquote(meta.get("report-org", "")),
        unquote(meta.get("report-id", "")),
    )


def after(prefix: str) -> str:
    """A StartAfter that skips every key under ``prefix`` (which ends in "/"): the listing then
    starts at the next prefix, without rolling this one up again ("0" sorts right after "/")."""
    return prefix[:-1] + "0"


def list_prefixes(s3, bucket: str, prefix: str, start_after: str | None, limit: int) -> list[str]:
    """Up to ``limit`` common prefixes ("folders") directly under ``prefix``, after ``start_after``."""
    kwargs = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": max(1, min(limit, 1000))}
    if start_after:
        kwargs["StartAfter"] = start_after
    found: list[str] = []
    while len(found) < limit:
        page = s3.list_objects_v2(**kwargs)
        found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    return found[:limit]
