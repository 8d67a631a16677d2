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

    @property
    def version_id(self) -> str | None:
        """The S3 version id the event named (a versioned bucket), or None: the version is its ETag."""
        if self.removed or self.version == self.etag or self.version == "null":
            return None
        return self.version

    def same_object(self, object_version: str, etag: str | None) -> bool:
        """Whether a load recorded as (``object_version``, ``etag``) is this version.

        Identity is the version id where the event names one. An event without one (an
        unversioned bucket, or a notifier that leaves it out) matches only a load identified
        by that ETag: on a versioned bucket, X written again is a new version with X's ETag,
        and only the importer's read (under the key's lock) can tell which version it is.
        """
        if self.version_id is not None:
            return object_version == self.version_id
        return self.etag is not None and object_version == self.etag

    def is_current(self, object_version: str, etag: str | None) -> bool:
        """Whether S3's current object (``object_version``, ``etag`` from a HEAD) is what this
        event names: its version id, or for an event without one, its bytes (the ETag)."""
        if self.version_id is not None:
            return object_version == self.version_id
        return self.etag is not None and etag == self.etag

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
        version_id = obj.get("versionId")
        version = version_id if version_id and version_id != "null" else etag
        if event_name.startswith("ObjectRemoved"):
            # A removal names no version that could be loaded: it is identified by its event, so
            # duplicates of one delete are one, and two deletes of a key are two.
            version = f"removed@{obj.get('sequencer') or record.get('eventTime') or version}"
        elif not version:
            raise UnexpectedMessage(f"s3://{name}/{key}: {event_name} without ETag or versionId")
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


def version_identity(version_id: str | None, etag: str | None) -> str:
    """What the ledger records as ``object_version``: the version id, or the ETag where S3 has
    none (an unversioned bucket answers no version id; a suspended one answers ``null``)."""
    if version_id and version_id != "null":
        return version_id
    if not etag:
        raise ValueError("an object version needs a version id or an ETag")
    return etag


def compare_sequencers(a: str, b: str) -> int:
    """-1, 0 or 1 as S3 event ``a`` happened before, with or after ``b`` (same key only).

    S3's sequencers are hexadecimal strings of varying length: right-pad the shorter with zeros,
    then compare as strings (Amazon S3 User Guide, "Event message structure").
    """
    width = max(len(a), len(b))
    left, right = a.upper().ljust(width, "0"), b.upper().ljust(width, "0")
    return (left > right) - (left < right)
