"""``pipeline collect``: report files -> raw telemetry objects in S3, through a durable spool.

1. Every input is checked and parsed (offline); rejects are listed with their reasons and the
   rest of the batch goes on.
2. Inputs are grouped by report identity. Of several copies of one report the least damaged is
   kept (fewest problems, then the smallest body hash, so the choice does not depend on order);
   the others are duplicates.
3. Each report goes to the spool, then to S3 with retries. A key already in S3 is a duplicate,
   unless the stored copy is more damaged than this one (then this one replaces it).
4. Whatever S3 did not take stays in the spool for the next run or ``pipeline collect --flush``.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from tqdm import tqdm

from pipeline import config
from pipeline.aws import client
from pipeline.collector.inputs import DEFAULT_LIMITS, Limits, Rejected, discover, read_report
from pipeline.collector.normalize import InvalidCustomer, NormalizedReport, check_customer_id
from pipeline.collector.spool import PendingObject, Spool
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# The collector does its own backoff so that it can give up on an unreachable S3 quickly and
# keep everything in the spool, instead of retrying every object inside botocore.
COLLECTOR_CLIENT = Config(
    retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=30, max_pool_connections=16
)
_PERMANENT = {
    "PreconditionFailed",  # a conditional PUT refused: an answer, not a failure to retry
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}


@dataclass
class CollectSummary:
    files: int = 0
    reports: int = 0
    records: int = 0
    messages: int = 0
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    objects_written: list[str] = field(default_factory=list)
    objects_replaced: list[str] = field(default_factory=list)
    already_in_s3: list[str] = field(default_factory=list)
    upload_errors: list[str] = field(default_factory=list)
    pending_in_spool: int = 0
    parsedmarc_fallbacks: int = 0  # reports the streaming reader handed to parsedmarc (logged each)

    @property
    def exit_code(self) -> int:
        if self.pending_in_spool:
            return 3
        return 1 if self.rejected else 0

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "reports": self.reports,
            "records": self.records,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "objects_written": self.objects_written,
            "objects_replaced": self.objects_replaced,
            "already_in_s3": self.already_in_s3,
            "upload_errors": self.upload_errors,
            "pending_in_spool": self.pending_in_spool,
            "parsedmarc_fallbacks": self.parsedmarc_fallbacks,
            "exit_code": self.exit_code,
        }


def _metadata(report: NormalizedReport, source: Path) -> dict[str, str]:
    # S3 user metadata must be ASCII: quote what a reporter may spell in any script.
    return {
        "report-org": quote(report.report_org, safe=""),
        "report-id": quote(report.report_id, safe=""),
        "customer": report.customer_id,
        "records": str(len(report.records)),
        "messages": str(report.messages),
        "problems": str(len(report.problems)),
        "schema-version": str(report.records[0]["schema_version"]) if report.records else "1",
        "source-file": quote(source.name, safe="")[:200],
    }


IN_MEMORY_BODY_BYTES = 8 * 1024 * 1024  # bodies up to this are PUT from memory (x UPLOAD_THREADS at most)
MULTIPART_FROM_BYTES = 64 * 1024 * 1024  # larger bodies go in parts (S3: one PUT takes at most 5 GB)
MULTIPART_PART_BYTES = 16 * 1024 * 1024  # S3: at least 5 MiB a part, at most 10,000 parts


class Uploader:
    """Puts spooled objects into S3 with backoff; stops early when S3 is unreachable."""

    def __init__(
        self,
        s3,
        bucket: str,
        attempts: int = 4,
        base_delay: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.s3, self.bucket, self.attempts, self.base_delay, self.sleep = (
            s3,
            bucket,
            attempts,
            base_delay,
            sleep,
        )
        self.unreachable: str | None = None

    def stored_problems(self, key: str) -> int | None:
        """Problems of the copy already in S3 under ``key``; None when there is none."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head.get("Metadata", {}).get("problems", "0"))

    def _retrying(self, action: Callable[[], object], what: str) -> object:
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in _PERMANENT or attempt == self.attempts:
                    raise
                log.warning("collector upload retry what=%s attempt=%d error=%s", what, attempt, code)
            except (EndpointConnectionError, BotoCoreError) as exc:
                if attempt == self.attempts:
                    self.unreachable = str(exc)
                    raise
                log.warning("collector upload retry what=%s attempt=%d error=%s", what, attempt, exc)
            self.sleep(self.base_delay * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _put(self, item: PendingObject, only_if_new: bool) -> bool:
        """PUT the object; with ``only_if_new`` S3 refuses it when the key exists (False). A large
        body is streamed from the spool file (never in memory); a small one is sent as bytes:
        botocore sends any file body with ``Expect: 100-continue`` and reads it through its
        file handling, a third of a small PUT's client time."""
        extra = {"IfNoneMatch": "*"} if only_if_new else {}
        if item.body_path.stat().st_size > MULTIPART_FROM_BYTES:
            return self._put_multipart(item, extra)

        def put() -> None:
            with open(item.body_path, "rb") as body:
                small = os.fstat(body.fileno()).st_size <= IN_MEMORY_BODY_BYTES
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=item.key,
                    Body=body.read() if small else body,
                    Metadata=item.metadata,
                    ContentType="application/x-ndjson",
                    ContentEncoding="gzip",
                    **extra,
                )

        try:
            self._retrying(put, item.key)
        except ClientError as exc:
            if only_if_new and exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False
            raise
        return True

    def _put_multipart(self, item: PendingObject, extra: dict) -> bool:
        """A large body in parts of MULTIPART_PART_BYTES, read from the spool file one part at a
        time (memory: one part), each part retried on its own, so a dropped connection costs a
        part and not the whole report. The condition (``If-None-Match``) is checked when the
        upload completes, as S3 does: a key written meanwhile is an answer (False), and the parts
        are discarded. Any failure aborts the upload; the raw bucket's lifecycle rule removes
        what a collector that died mid-upload left (deploy/cloudformation/pipeline.yaml)."""
        upload_id = self._retrying(
            lambda: self.s3.create_multipart_upload(
                Bucket=self.bucket,
                Key=item.key,
                Metadata=item.metadata,
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
            )["UploadId"],
            item.key,
        )
        try:
            parts = []
            with open(item.body_path, "rb") as body:
                while chunk := body.read(MULTIPART_PART_BYTES):
                    number = len(parts) + 1

                    def part(chunk=chunk, number=number) -> str:
                        return self.s3.upload_part(
                            Bucket=self.bucket, Key=item.key, UploadId=upload_id, PartNumber=number, Body=chunk
                        )["ETag"]

                    parts.append({"PartNumber": number, "ETag": self._retrying(part, f"{item.key} part {number}")})
            self._retrying(
                lambda: self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=item.key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra
                ),
                item.key,
            )
        except BaseException as exc:
            with suppress(ClientError, BotoCoreError):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=item.key, UploadId=upload_id)
            refused = isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in {
                "PreconditionFailed",
                "412",
            }
            if extra and refused:
                return False
            raise
        return True

    def upload(self, item: PendingObject) -> str:
        """'written', 'replaced' or 'exists'. Raises when S3 did not take it.

        A conditional PUT (If-None-Match) writes a new key in one request; only when the key
        exists is the stored copy looked at, and replaced when this one has fewer problems.
        """
        if self._put(item, only_if_new=True):
            return "written"
        stored = self._retrying(lambda: self.stored_problems(item.key), item.key)
        ours = int(item.metadata.get("problems", "0"))
        if stored is not None and stored <= ours:
            return "exists"
        self._put(item, only_if_new=False)
        return "written" if stored is None else "replaced"


UPLOAD_THREADS = 8  # concurrent uploads: many small reports are round trips, not bandwidth


def flush(
    spool: Spool,
    uploader: Uploader,
    summary: CollectSummary,
    progress: bool = False,
    threads: int = UPLOAD_THREADS,
    items: Iterable[PendingObject] | None = None,
    total: int | None = None,
) -> None:
    """Upload what the spool holds, ``threads`` objects at a time (bounded: S3 is not flooded, a
    slow link is not oversubscribed); the caller holds ``spool.locked()``. An object leaves the
    spool only once S3 has it; when S3 is unreachable, no new upload starts and the rest stays
    spooled for the next run. ``items`` (default: what the spool holds now) may be a generator
    that spools as it goes: each object's upload starts as soon as it is spooled, so writing the
    spool and uploading overlap."""
    pending: Iterable[PendingObject] = list(spool.pending()) if items is None else items
    if total is None and isinstance(pending, list):
        total = len(pending)
    lock = threading.Lock()
    lists = {"written": summary.objects_written, "replaced": summary.objects_replaced, "exists": summary.already_in_s3}

    def one(item) -> None:
        if uploader.unreachable:
            return
        try:
            outcome = uploader.upload(item)
        except (ClientError, BotoCoreError) as exc:
            with lock:
                summary.upload_errors.append(f"s3://{uploader.bucket}/{item.key}: {exc}")
            log.error("collector upload failed key=%s error=%s (kept in spool %s)", item.key, exc, spool.root)
            return
        spool.remove(item)
        with lock:
            lists[outcome].append(item.key)

    with (
        ThreadPoolExecutor(max(1, threads), thread_name_prefix="upload") as pool,
        tqdm(total=total, desc="upload", unit="obj", disable=not progress or not total) as bar,
    ):
        for _ in as_completed([pool.submit(one, item) for item in pending]):
            bar.update(1)
    for keys in (*lists.values(), summary.upload_errors):
        keys.sort()
    summary.pending_in_spool = len(spool)


# Worker processes pay for themselves only on real parsing work: each one starts an interpreter
# and imports parsedmarc (about 2 s here), while a small report parses in about 2 ms. So the
# batch's size decides, not its file count: below this many bytes it is parsed in this process.
PARSE_IN_PROCESSES_FROM_BYTES = 16 * 1024 * 1024


def _parse_one(job: tuple[Path, str, Limits, Path | None]) -> tuple[Path, NormalizedReport | None, str | None]:
    path, customer_id, limits, spill_dir = job
    try:
        return path, read_report(path, customer_id, limits, spill_dir), None
    except Rejected as exc:
        return path, None, str(exc)


def _total_bytes(files: list[Path]) -> int:
    total = 0
    for path in files:
        with suppress(OSError):  # unreadable: its reader says why
            total += path.stat().st_size
        if total >= PARSE_IN_PROCESSES_FROM_BYTES:
            break
    return total


def parse_files(
    files: list[Path], customer_id: str, limits: Limits, workers: int | None = None, spill_dir: Path | None = None
):
    """(path, report or None, reason) per file, in the files' order. Parsing is CPU-bound Python:
    a large batch is spread over worker processes (PIPELINE_COLLECT_WORKERS, default the CPUs).
    A large report's records are written to ``spill_dir`` as they are read (its raw body)."""
    jobs = [(path, customer_id, limits, spill_dir) for path in files]
    workers = workers or config.get("PIPELINE_COLLECT_WORKERS") or os.cpu_count() or 1
    if workers <= 1 or len(files) < 2 or _total_bytes(files) < PARSE_IN_PROCESSES_FROM_BYTES:
        yield from map(_parse_one, jobs)
        return
    context = multiprocessing.get_context("spawn")  # no inherited threads or sockets
    done = 0
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(_parse_one, jobs, chunksize=16):
                done += 1
                yield result
    except BrokenProcessPool as exc:  # a worker could not start (an unusual host): parse here instead
        log.warning("collector parse workers failed (%s); parsing the remaining files in this process", exc)
        yield from map(_parse_one, jobs[done:])


def check_scope(customer_id: str) -> None:
    """Refuse a customer that this collector's credentials cannot write (PIPELINE_COLLECTOR_CUSTOMER,
    the scope the deployment gave them), before anything is read or sent: S3 would answer 403 for
    each object, and the reports would sit in the spool for ever."""
    scope = config.get("PIPELINE_COLLECTOR_CUSTOMER")
    if scope and scope != customer_id:
        raise InvalidCustomer(
            f"--customer {customer_id!r} is not the customer this collector's credentials are scoped to "
            f"({scope!r}, PIPELINE_COLLECTOR_CUSTOMER): collect that customer's reports with its own collector."
        )


def collect(
    paths: Iterable[Path],
    customer_id: str,
    settings: Settings,
    spool: Spool,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    s3=None,
) -> CollectSummary:
    check_customer_id(customer_id)
    check_scope(customer_id)
    summary = CollectSummary()
    files = list(discover(paths))
    summary.files = len(files)
    chosen: dict[str, tuple[NormalizedReport, Path, tuple]] = {}
    incoming = spool.incoming()  # large reports' bodies, written as they are read; the spool adopts them
    for path, report, reason in tqdm(
        parse_files(files, customer_id, limits, spill_dir=incoming),
        total=len(files),
        desc="parse",
        unit="file",
        disable=not progress,
    ):
        if report is None:
            summary.rejected.append({"input": str(path), "reason": reason})
            log.warning("collector rejected input=%s reason=%s", path, reason)
            continue
        if report.reader == "parsedmarc":
            summary.parsedmarc_fallbacks += 1
        try:  # a report's own values become its key and body: one that cannot is that report's fault
            rank = (len(report.problems), report.body_digest())
            key = report.key(settings.raw_prefix)
        except Exception as exc:
            report.discard()
            reason = f"{path}: its records cannot be written as raw telemetry ({type(exc).__name__}: {exc})"
            summary.rejected.append({"input": str(path), "reason": reason})
            log.warning("collector rejected input=%s reason=%s", path, reason)
            continue
        if key in chosen:
            keep, drop = (report, path), chosen[key][:2]
            if rank > chosen[key][2]:
                keep, drop = chosen[key][:2], (report, path)
            summary.duplicates.append(str(drop[1]))
            drop[0].discard()
            chosen[key] = (*keep, min(rank, chosen[key][2]))
        else:
            chosen[key] = (report, path, rank)
    s3 = s3 or client(settings, "s3", COLLECTOR_CLIENT)
    with spool.locked():  # another collector on this spool spools and uploads before or after us
        # What an earlier run left (a key spooled again now is overwritten: it goes once), then
        # this run's reports, each uploaded as soon as it is spooled.
        leftovers = [item for item in spool.pending() if item.key not in chosen]

        def spooled() -> Iterable[PendingObject]:
            for key, (report, path, _) in chosen.items():
                summary.reports += 1
                summary.records += len(report.records)
                summary.messages += report.messages
                if report.spilled is not None:
                    yield spool.adopt(key, report.spilled, _metadata(report, path))
                else:
                    yield spool.put(key, report.body(), _metadata(report, path))

        items = itertools.chain(leftovers, spooled())
        flush(
            spool, Uploader(s3, settings.raw_bucket), summary, progress, items=items, total=len(leftovers) + len(chosen)
        )
        if summary.pending_in_spool:  # what S3 did not take must outlive a power loss: the caller archives its mail
            spool.sync()
    summary.duplicates.extend(
        f"{chosen[key][1]} (already in S3 as {key})" for key in summary.already_in_s3 if key in chosen
    )
    log.info(
        "collector done files=%d reports=%d records=%d messages=%d duplicates=%d rejected=%d "
        "written=%d replaced=%d pending=%d parsedmarc_fallbacks=%d",
        summary.files,
        summary.reports,
        summary.records,
        summary.messages,
        len(summary.duplicates),
        len(summary.rejected),
        len(summary.objects_written),
        len(summary.objects_replaced),
        summary.pending_in_spool,
        summary.parsedmarc_fallbacks,
    )
    return summary
