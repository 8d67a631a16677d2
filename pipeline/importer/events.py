"""S3 event notifications, as they arrive on the import queue, turned into object versions.

A message body is an SNS envelope (``{"Type": "Notification", "Message": "<S3 event JSON>"}``),
or the S3 event itself when the subscription uses raw delivery. One S3 event may carry several
records. ``s3:TestEvent`` (sent when notifications are configured) carries none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from urllib.parse import unquote_plus


class UnexpectedMessage(ValueError):
    """A queue message that is not an S3 event notification; the text says what it was."""


@dataclass(frozen=True, order=True)
class ObjectVersion:
    """One version of one S3 object, as an S3 event names it."""

    bucket: str
    key: str
    version: str  # the S3 version id when the bucket is versioned, else the ETag
    etag: str | None = None
    size: int | None = None
    event_time: str | None = None
    event_name: str = "ObjectCreated:Put"
    sequencer: str | None = None

    @property
    def removed(self) -> bool:
        return self.event_name.startswith("ObjectRemoved")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ObjectVersion:
        return cls(**data)


@dataclass(frozen=True)
class ParsedEvent:
    versions: list[ObjectVersion]
    ignored: list[str]  # expected and harmless (s3:TestEvent), one line each, for the tick log
    rejected: list[str] = field(default_factory=list)  # not ours: another bucket / prefix / source


def _unwrap(body: str) -> dict:
    try:
        doc = json.loads(body)
    except (TypeError, json.JSONDecodeError) as exc:
        raise UnexpectedMessage(f"message body is not JSON ({exc}): {body[:200]!r}") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        try:
            doc = json.loads(doc["Message"])
        except (TypeError, json.JSONDecodeError):
            raise UnexpectedMessage(
                f"SNS notification whose Message is not JSON: {str(doc['Message'])[:200]!r}"
            ) from None
    if not isinstance(doc, dict):
        raise UnexpectedMessage(f"message is JSON but not an object: {body[:200]!r}")
    return doc


def parse_s3_event(body: str, bucket: str | None = None, prefix: str = "") -> ParsedEvent:
    """The object versions a message names, keeping only ``bucket``/``prefix`` when given."""
    doc = _unwrap(body)
    if doc.get("Event") == "s3:TestEvent":
        return ParsedEvent([], [f"s3:TestEvent for bucket {doc.get('Bucket')!r}"])
    records = doc.get("Records")
    if not isinstance(records, list):
        raise UnexpectedMessage(f"not an S3 event notification (no Records): {body[:200]!r}")
    versions: list[ObjectVersion] = []
    ignored: list[str] = []
    rejected: list[str] = []
    for record in records:
        try:
            if record.get("eventSource") != "aws:s3":
                rejected.append(f"record from {record.get('eventSource')!r}, not aws:s3")
                continue
            s3 = record["s3"]
            name = s3["bucket"]["name"]
            obj = s3["object"]
            key = unquote_plus(obj["key"])
            event_name = record["eventName"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise UnexpectedMessage(f"S3 event record without {exc}: {str(record)[:200]!r}") from None
        if bucket is not None and name != bucket:
            rejected.append(f"s3://{name}/{key}: bucket is not {bucket}")
            continue
        if not key.startswith(prefix):
            rejected.append(f"s3://{name}/{key}: outside the prefix {prefix!r}")
            continue
        etag = (obj.get("eTag") or obj.get("etag") or "").strip('"') or None
        version = obj.get("versionId") or etag
        if not version:
            if not event_name.startswith("ObjectRemoved"):
                raise UnexpectedMessage(f"s3://{name}/{key}: {event_name} without ETag or versionId")
            version = f"removed@{obj.get('sequencer') or record.get('eventTime')}"
        versions.append(
            ObjectVersion(
                bucket=name,
                key=key,
                version=version,
                etag=etag,
                size=obj.get("size"),
                event_time=record.get("eventTime"),
                event_name=event_name,
                sequencer=obj.get("sequencer"),
            )
        )
    return ParsedEvent(versions, ignored, rejected)
