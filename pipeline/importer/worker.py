"""``pipeline importer``: the Dagster-free importer loop over the same core.

Each round it claims due inbox rows (retries, a dead worker's rows, the reconciler's finds),
takes new notifications in from SQS (``intake``: recorded in the inbox, claimed for itself, then
deleted from SQS), and imports what it holds (``import_items``), renewing its claims while it
works. On SIGTERM it finishes the object in hand, gives the rows it has not started back to the
inbox and exits. With a ``protection`` (``--worker-id``), it holds scale-in protection while it
has work in hand.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from pipeline.aws import client
from pipeline.importer import inbox
from pipeline.importer.batch import ImportItem, connect, import_items
from pipeline.importer.inbox import InboxPolicy
from pipeline.importer.intake import intake_visibility_s, take_in
from pipeline.importer.queue import receive
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    messages: int = 0
    objects_loaded: int = 0
    rows_loaded: int = 0
    duplicates: int = 0
    stale: int = 0
    expired: int = 0  # past the retention horizon: not loaded
    failures: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def worker_owner(worker_id: str | None = None) -> str:
    """The name a worker claims inbox rows under."""
    return f"worker:{worker_id or os.uname().nodename}:{os.getpid()}:{threading.get_ident() % 100000}"


def run_worker(
    settings: Settings,
    batch: int = 10,
    drain: bool = False,
    idle_polls: int = 2,
    lease_s: float | None = None,
    stop: threading.Event | None = None,
    max_seconds: float | None = None,
    protection=None,
    streams: int | None = None,
    worker_id: str | None = None,
) -> WorkerStats:
    """Import until stopped (SIGTERM/SIGINT, ``stop``), or with ``drain`` until nothing is left
    to take: the queue is empty and no inbox row is due."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    policy = InboxPolicy.from_env()
    lease_s = lease_s or policy.lease_s
    owner = worker_owner(worker_id)
    sqs, s3 = client(settings, "sqs"), client(settings, "s3")
    stats = WorkerStats()
    empty = 0
    while not stop.is_set():
        if max_seconds and stats.seconds > max_seconds:
            break
        with connect(settings.database_url) as conn:
            rows = inbox.claim(conn, owner, batch, lease_s, policy)
            wait = 0 if rows else (1 if drain else 10)
            messages = receive(
                sqs, settings.queue_url, max_messages=batch, wait_seconds=wait, visibility=intake_visibility_s()
            )
            intake = take_in(conn, sqs, settings, messages, claim_for=owner, lease_s=lease_s)
        rows += intake.new
        stats.messages += intake.messages
        stats.ignored += intake.ignored
        stats.duplicates += intake.live + intake.joined
        stats.dead_lettered += intake.dead_lettered
        if not rows:
            empty += 1
            if drain and empty >= idle_polls:
                break
            continue
        empty = 0
        items = [ImportItem.from_inbox(r) for r in rows]
        if stop.is_set():
            _give_back(settings, items, owner)
            break
        if protection is not None:
            protection.hold()
        outcomes = import_items(
            settings.database_url,
            s3,
            items,
            worker="importer",
            owner=owner,
            lease_s=lease_s,
            stop=stop,
            streams=streams,
        )
        if len(outcomes) < len(items):  # SIGTERM mid-batch: hand back what was not started, now
            done = {id(o.item) for o in outcomes}
            _give_back(settings, [i for i in items if id(i) not in done], owner)
        for outcome in outcomes:
            if not outcome.ok:
                stats.failures += 1
            elif outcome.result.outcome == "loaded":
                stats.objects_loaded += 1
                stats.rows_loaded += outcome.result.rows
            elif outcome.result.outcome == "duplicate":
                stats.duplicates += 1
            elif outcome.result.outcome == "stale":
                stats.stale += 1
            elif outcome.result.outcome == "expired":
                stats.expired += 1
        if protection is not None:
            protection.release()  # idle between batches: fair game for scale-in
    if protection is not None:
        protection.release()
    log.info(
        "importer stopped messages=%d loaded=%d rows=%d duplicates=%d stale=%d expired=%d failures=%d dead_lettered=%d "
        "seconds=%.1f",
        stats.messages,
        stats.objects_loaded,
        stats.rows_loaded,
        stats.duplicates,
        stats.stale,
        stats.expired,
        stats.failures,
        stats.dead_lettered,
        stats.seconds,
    )
    return stats


def _give_back(settings: Settings, items: list[ImportItem], owner: str) -> None:
    """Unstarted rows go back to the inbox, due at once for another importer."""
    ids = [i.inbox_id for i in items if i.inbox_id is not None]
    with connect(settings.database_url) as conn:
        released = inbox.release(conn, ids, owner)
    log.info("importer stopping: gave back %d object(s) not started", released)
