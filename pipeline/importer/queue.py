"""The SQS side of importing: receive deliveries, delete them after intake, dead letters, redrive."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.importer.events import ObjectVersion, UnexpectedMessage, parse_s3_event

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One received SQS message and the object versions it names."""

    message_id: str
    receipt_handle: str
    receive_count: int
    sent_at: float | None
    versions: list[ObjectVersion] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    error: str | None = None
    body: str = ""


def parse_delivery(message: dict, bucket: str | None, prefix: str) -> Delivery:
    attrs = message.get("Attributes", {})
    delivery = Delivery(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
        sent_at=int(attrs["SentTimestamp"]) / 1000 if "SentTimestamp" in attrs else None,
        body=message.get("Body", ""),
    )
    try:
        parsed = parse_s3_event(delivery.body, bucket, prefix)
    except UnexpectedMessage as exc:
        delivery.error = str(exc)
        return delivery
    delivery.versions, delivery.ignored, delivery.rejected = parsed.versions, parsed.ignored, parsed.rejected
    return delivery


def receive(
    sqs,
    queue_url: str,
    max_messages: int = 10,
    wait_seconds: int = 1,
    visibility: int | None = None,
    deadline: float | None = None,
) -> list[dict]:
    """Up to ``max_messages`` messages, in batches of 10, stopping at the first empty batch."""
    messages: list[dict] = []
    while len(messages) < max_messages and (deadline is None or time.monotonic() < deadline):
        kwargs = {
            "QueueUrl": queue_url,
            "MaxNumberOfMessages": min(10, max_messages - len(messages)),
            "WaitTimeSeconds": wait_seconds if not messages else 0,
            "AttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if visibility is not None:
            kwargs["VisibilityTimeout"] = visibility
        batch = sqs.receive_message(**kwargs).get("Messages", [])
        if not batch:
            break
        messages.extend(batch)
    return messages


def delete(sqs, queue_url: str, receipt_handles: Iterable[str]) -> list[str]:
    """Delete in batches of 10; returns the handles SQS refused (e.g. expired after redelivery)."""
    handles = list(dict.fromkeys(receipt_handles))
    failed: list[str] = []
    for start in range(0, len(handles), 10):
        chunk = handles[start : start + 10]
        response = sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)],
        )
        failed.extend(chunk[int(f["Id"])] for f in response.get("Failed", []))
    if failed:
        log.warning("sqs delete refused count=%d (messages were redelivered meanwhile)", len(failed))
    return failed


def dead_letter(sqs, queue_url: str, dead_letter_url: str, delivery: Delivery, reason: str) -> None:
    """Move a message that can never be imported straight to the dead-letter queue."""
    sqs.send_message(
        QueueUrl=dead_letter_url,
        MessageBody=delivery.body or "{}",
        MessageAttributes={"rejected-reason": {"DataType": "String", "StringValue": reason[:1000]}},
    )
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=delivery.receipt_handle)
    log.error("sqs message dead-lettered message_id=%s reason=%s", delivery.message_id, reason)


def redrive(sqs, dead_letter_url: str, queue_url: str, limit: int = 10_000) -> int:
    """Move up to ``limit`` messages from the dead-letter queue back to the import queue."""
    moved = 0
    while moved < limit:
        batch = receive(sqs, dead_letter_url, max_messages=min(10, limit - moved), wait_seconds=0, visibility=60)
        if not batch:
            break
        for message in batch:
            sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=dead_letter_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    log.info("redrive moved=%d from=%s to=%s", moved, dead_letter_url, queue_url)
    return moved


def queue_depth(sqs, queue_url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])
