"""``pipeline importer``: the Dagster-free importer loop over the same core.

Receives deliveries, dead-letters messages that are not S3 events, deletes messages that only
name ignored objects or versions already in the ledger, imports the rest (``import_items``)
and acknowledges after each commit. On SIGTERM it finishes the object in hand, gives the
messages it has not started back to the queue (visibility 0) and exits. With a ``protection``
(``--worker-id``), it holds scale-in protection while it has messages in hand.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from pipeline.aws import client
from pipeline.importer.batch import IMPORT_STREAMS, ImportItem, connect, import_items
from pipeline.importer.load import already_loaded
from pipeline.importer.queue import Delivery, dead_letter, delete, parse_delivery, receive
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    messages: int = 0
    objects_loaded: int = 0
    rows_loaded: int = 0
    duplicates: int = 0
    failures: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def record_rejection(conn, delivery: Delivery, reason: str) -> None:
    """A message naming something that is not ours: refused, logged, kept for the operator."""
    log.warning("rejected message_id=%s reason=%s", delivery.message_id, reason)
    conn.execute(
        "INSERT INTO rejected_messages (message_id, reason, body_excerpt) VALUES (%s, %s, %s)",
        (delivery.message_id, reason[:1000], delivery.body[:2000]),
    )
    conn.commit()


def triage(
    database_url: str, sqs, settings: Settings, deliveries: list[Delivery]
) -> tuple[list[ImportItem], int, int, int]:
    """Split deliveries into items to import; settle the rest. Returns (items, ignored, dups, dead)."""
    items: list[ImportItem] = []
    settle: list[str] = []
    ignored = duplicates = dead = 0
    with connect(database_url) as conn:
        for delivery in deliveries:
            if delivery.error:
                dead_letter(sqs, settings.queue_url, settings.dead_letter_queue_url, delivery, delivery.error)
                dead += 1
                continue
            for reason in delivery.ignored:
                log.info("ignored message_id=%s reason=%s", delivery.message_id, reason)
            for reason in delivery.rejected:
                record_rejection(conn, delivery, reason)
            fresh = [v for v in delivery.versions if v.removed or not already_loaded(conn, v)]
            duplicates += len(delivery.versions) - len(fresh)
            if not fresh:
                ignored += not delivery.versions
                settle.append(delivery.receipt_handle)
                continue
            items.extend(
                ImportItem(v, None, delivery.receipt_handle, delivery.message_id, delivery.receive_count) for v in fresh
            )
    if settle:
        delete(sqs, settings.queue_url, settle)
    return items, ignored, duplicates, dead


def run_worker(
    settings: Settings,
    batch: int = 10,
    drain: bool = False,
    idle_polls: int = 2,
    visibility: int = 300,
    stop: threading.Event | None = None,
    max_seconds: float | None = None,
    protection=None,
    streams: int = IMPORT_STREAMS,
) -> WorkerStats:
    """Import until stopped (SIGTERM/SIGINT, ``stop``), or with ``drain`` until the queue is empty."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    sqs, s3 = client(settings, "sqs"), client(settings, "s3")
    stats = WorkerStats()
    empty = 0
    while not stop.is_set():
        if max_seconds and stats.seconds > max_seconds:
            break
        messages = receive(
            sqs, settings.queue_url, max_messages=batch, wait_seconds=1 if drain else 10, visibility=visibility
        )
        if not messages:
            empty += 1
            if drain and empty >= idle_polls:
                break
            continue
        empty = 0
        stats.messages += len(messages)
        deliveries = [parse_delivery(m, settings.enriched_bucket, settings.enriched_prefix) for m in messages]
        items, ignored, duplicates, dead = triage(settings.database_url, sqs, settings, deliveries)
        stats.ignored += ignored
        stats.duplicates += duplicates
        stats.dead_lettered += dead
        if stop.is_set():
            release(sqs, settings.queue_url, [i.receipt_handle for i in items])
            break
        if protection is not None and items:
            protection.hold()
        outcomes = import_items(
            settings.database_url,
            s3,
            items,
            sqs,
            settings.queue_url,
            worker="importer",
            visibility=visibility,
            stop=stop,
            streams=streams,
        )
        if len(outcomes) < len(items):  # SIGTERM mid-batch: hand back what was not started, now
            done = {id(o.item) for o in outcomes}
            left = [i.receipt_handle for i in items if id(i) not in done]
            release(sqs, settings.queue_url, left)
            log.info("importer stopping: released %d message(s) not started", len(set(left)))
        for outcome in outcomes:
            if not outcome.ok:
                stats.failures += 1
            elif outcome.result.outcome == "loaded":
                stats.objects_loaded += 1
                stats.rows_loaded += outcome.result.rows
            elif outcome.result.outcome == "duplicate":
                stats.duplicates += 1
        if protection is not None:
            protection.release()  # idle between batches: fair game for scale-in
    if protection is not None:
        protection.release()
    log.info(
        "importer stopped messages=%d loaded=%d rows=%d duplicates=%d failures=%d dead_lettered=%d seconds=%.1f",
        stats.messages,
        stats.objects_loaded,
        stats.rows_loaded,
        stats.duplicates,
        stats.failures,
        stats.dead_lettered,
        stats.seconds,
    )
    return stats


def release(sqs, queue_url: str, receipt_handles: list[str]) -> None:
    """Hand messages back to the queue at once (visibility 0) for another importer."""
    handles = list(dict.fromkeys(h for h in receipt_handles if h))
    for start in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start : start + 10])
            ],
        )
