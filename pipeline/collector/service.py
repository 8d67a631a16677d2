"""The collector as a service on the customer's site: `pipeline collect --maildir DIR --watch S`
(or `--imap --watch S`).

Every ``S`` seconds it sends what the spool holds (S3 retried with backoff by the uploader;
while S3 is unreachable reports keep going to the spool and their messages to .Archive), then
collects the Maildir's new messages. SIGTERM or SIGINT ends it after the cycle in hand: the
message being read is finished, none is left half-moved. What it did is in a status file
(``$PIPELINE_HOME/collector-status.json``), which `pipeline collect --status` prints.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.collector.collect import COLLECTOR_CLIENT, CollectSummary, Uploader, flush
from pipeline.collector.inputs import DEFAULT_LIMITS, Limits
from pipeline.collector.maildir import MaildirSummary, collect_maildir
from pipeline.collector.spool import Spool
from pipeline.settings import Settings, pipeline_home

log = logging.getLogger(__name__)


def status_path() -> Path:
    return pipeline_home() / "collector-status.json"


@dataclass
class CollectorStatus:
    customer: str
    source: str
    state: str = "starting"  # running | stopped
    cycles: int = 0
    collected_reports: int = 0
    archived_messages: int = 0
    invalid_messages: int = 0
    uploaded_objects: int = 0
    pending_in_spool: int = 0
    last_success: str | None = None  # the last cycle in which nothing was left in the spool
    last_error: str | None = None
    updated_at: str | None = None

    def write(self, path: Path) -> None:
        self.updated_at = _now()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # a reader never sees half a file


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_status(path: Path | None = None) -> dict | None:
    path = path or status_path()
    return json.loads(path.read_text()) if path.exists() else None


def watch(
    collect_once: Callable[[Any], MaildirSummary],
    source: str,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    interval_s: float,
    stop: threading.Event | None = None,
    status_file: Path | None = None,
    s3=None,
) -> CollectorStatus:
    """Run ``collect_once(s3)`` every ``interval_s`` seconds until ``stop`` (SIGTERM/SIGINT) is set."""
    from pipeline.aws import client

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    status_file = status_file or status_path()
    status = CollectorStatus(customer_id, source)
    s3 = s3 or client(settings, "s3", COLLECTOR_CLIENT)
    while not stop.is_set():
        status.state = "running"
        try:
            sent = CollectSummary()
            with spool.locked():
                flush(spool, Uploader(s3, settings.raw_bucket), sent)  # what an outage left behind
            result = collect_once(s3)
            status.cycles += 1
            status.collected_reports += result.collect.reports
            status.archived_messages += len(result.archived)
            status.invalid_messages += len(result.invalid)
            status.uploaded_objects += len(sent.objects_written) + len(result.collect.objects_written)
            status.pending_in_spool = len(spool)
            if status.pending_in_spool:
                status.last_error = "; ".join(result.collect.upload_errors or sent.upload_errors)[-500:] or None
            else:
                status.last_success, status.last_error = _now(), None
        except Exception as exc:  # a cycle's failure is reported and retried, not the end of the service
            status.cycles += 1
            status.last_error = f"{type(exc).__name__}: {exc}"[-500:]
            log.exception("collector cycle failed source=%s", source)
        status.write(status_file)
        stop.wait(interval_s)
    status.state = "stopped"
    status.write(status_file)
    log.info("collector stopped cycles=%d reports=%d", status.cycles, status.collected_reports)
    return status


def watch_maildir(
    root: Path,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    interval_s: float,
    limits: Limits = DEFAULT_LIMITS,
    stop: threading.Event | None = None,
    status_file: Path | None = None,
    s3=None,
) -> CollectorStatus:
    """Collect the Maildir ``root`` every ``interval_s`` seconds until SIGTERM."""

    def once(client_s3):
        return collect_maildir(root, customer_id, settings, spool, limits, s3=client_s3)

    return watch(once, f"maildir:{root}", customer_id, settings, spool, interval_s, stop, status_file, s3)


def watch_imap(
    mailbox,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    interval_s: float,
    limits: Limits = DEFAULT_LIMITS,
    stop: threading.Event | None = None,
    status_file: Path | None = None,
) -> CollectorStatus:
    """Collect the IMAP folder every ``interval_s`` seconds (a new session each time) until SIGTERM."""
    from pipeline.collector.imap import collect_imap

    def once(client_s3):
        return collect_imap(mailbox, customer_id, settings, spool, limits, s3=client_s3)

    return watch(once, mailbox.where(), customer_id, settings, spool, interval_s, stop, status_file)
