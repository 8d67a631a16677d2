"""Intake: S3 notifications from SQS into the inbox, then deleted from SQS.

One transaction records every object version of every received message (and the rejections);
only after it commits are the messages deleted. A message is thus deleted only when every
record it names is durably in the inbox, and no SQS receipt outlives the intake: whatever waits
afterwards (Dagster's run queue, capacity starting from zero, a backoff) waits in PostgreSQL,
where nothing is redelivered or dead-lettered by the clock. A crash between the commit and the
delete redelivers the message, and recording it again joins the rows it made the first time.

Messages that are not S3 event notifications go straight to the dead-letter queue with their
reason; messages that name other buckets or prefixes are refused on record
(``rejected_messages``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg

from pipeline import config
from pipeline.importer import inbox
from pipeline.importer.partitions import partition_key
from pipeline.importer.queue import Delivery, dead_letter, delete, parse_delivery

log = logging.getLogger(__name__)


def intake_visibility_s() -> int:
    """Seconds a received message stays invisible while intake records it (not a run's wait:
    intake deletes it within seconds). PIPELINE_INTAKE_VISIBILITY_S, default 120."""
    return config.get("PIPELINE_INTAKE_VISIBILITY_S")


@dataclass
class IntakeResult:
    messages: int = 0
    new: list[inbox.InboxRow] = field(default_factory=list)
    joined: int = 0
    live: int = 0
    dead: int = 0
    ignored: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def summary(self) -> str:
        return (
            f"messages={self.messages} new={len(self.new)} joined={self.joined} already_live={self.live} "
            f"dead_duplicates={self.dead} ignored={self.ignored} rejected={self.rejected} "
            f"dead_lettered={self.dead_lettered}"
        )


def record_rejection(conn: psycopg.Connection, delivery: Delivery, reason: str) -> None:
    """A message naming something that is not ours: refused, logged, kept for the operator."""
    log.warning("rejected message_id=%s reason=%s", delivery.message_id, reason)
    conn.execute(
        "INSERT INTO rejected_messages (message_id, reason, body_excerpt) VALUES (%s, %s, %s)",
        (delivery.message_id, reason[:1000], delivery.body[:2000]),
    )


def take_in(
    conn: psycopg.Connection,
    sqs,
    settings,
    messages: list[dict],
    claim_for: str | None = None,
    lease_s: float = 300.0,
) -> IntakeResult:
    """Record ``messages`` in the inbox (claimed for ``claim_for`` when given), then delete them.

    ``settings`` names the queues, the enriched bucket and its prefix; ``conn`` is an
    autocommit connection.
    """
    result = IntakeResult(messages=len(messages))
    if not messages:
        return result
    deliveries = [parse_delivery(m, settings.enriched_bucket, settings.enriched_prefix) for m in messages]
    unexpected = [d for d in deliveries if d.error]
    good = [d for d in deliveries if not d.error]
    with conn.transaction():
        for delivery in good:
            for reason in delivery.ignored:
                log.info("ignored message_id=%s reason=%s", delivery.message_id, reason)
                result.ignored += 1
            for reason in delivery.rejected:
                record_rejection(conn, delivery, reason)
                result.rejected += 1
        recorded = inbox.record(
            conn,
            [(v, d.message_id) for d in good for v in d.versions],
            lambda v: partition_key(v.bucket, v.key, settings.enriched_prefix),
            claim_for=claim_for,
            lease_s=lease_s,
        )
    result.new, result.joined, result.live, result.dead = recorded.new, recorded.joined, recorded.live, recorded.dead
    for delivery in unexpected:
        dead_letter(sqs, settings.queue_url, settings.dead_letter_queue_url, delivery, delivery.error)
        result.dead_lettered += 1
    refused = delete(sqs, settings.queue_url, [d.receipt_handle for d in good])
    if refused:  # the receipt expired during intake: the message comes back and joins its rows
        log.warning("intake: %d message(s) could not be deleted and will be delivered again", len(refused))
    return result
