"""Report files as they arrive in mailboxes: XML, .xml.gz, .zip, .eml; checked before parsing.

Checks come first so that a hostile or broken file is rejected with a reason naming it, without
being decompressed into memory: size limits, compression-ratio limits (archive bombs), and
readability. Everything that passes goes to parsedmarc, offline (no DNS, no network).
"""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import logging
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.collector.normalize import NormalizedReport, normalize

log = logging.getLogger(__name__)

REPORT_SUFFIXES = {".xml", ".gz", ".zip", ".eml", ".msg", ".json"}
_HEADER_LINE = re.compile(rb"^[A-Za-z][A-Za-z0-9-]*:[ \t]")  # an e-mail message starts with a header


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 25 * 1024 * 1024
    max_uncompressed_bytes: int = 200 * 1024 * 1024
    max_compression_ratio: float = 300.0
    # parsedmarc holds a whole report in memory, about 7 MB per 1,000 records here (a 50,000-record
    # report peaks near 420 MB): larger reports are refused, counted while the bytes stream by
    max_records: int = 50_000


MB_PER_1000_RECORDS = 7


DEFAULT_LIMITS = Limits()


class Rejected(ValueError):
    """This input cannot be collected; the message says why and what to do."""


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named on the command line, and report-looking files inside named folders."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                # A broken link is listed too, so that it is reported rather than silently skipped.
                if (child.is_file() or child.is_symlink()) and child.suffix.lower() in REPORT_SUFFIXES:
                    yield child
        else:
            yield path


# DMARC aggregate reports never carry a DTD. A document type declaration is how entity-expansion
# attacks ("billion laughs") and external entities (XXE) get in, so it is refused before any XML
# parser sees the document, whatever the parser's own defences.
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class _DtdScanner:
    """Reads a report's bytes as they stream by: refuses a DTD, counts the records."""

    _RECORD = (b"<record>", b"<record ")

    def __init__(self, name: str):
        self.name, self.tail, self.records = name, b"", 0

    def feed(self, chunk: bytes) -> None:
        window = self.tail + chunk
        if _DTD.search(window):
            raise Rejected(
                f"{self.name}: the XML declares a DTD or entities (<!DOCTYPE/<!ENTITY>), which DMARC reports "
                "never do and entity-expansion attacks do; not parsed"
            )
        # the tail is shorter than a record tag, so no tag is counted twice
        self.records += sum(window.count(tag) for tag in self._RECORD)
        self.tail = window[-7:]

    def check_records(self, limits: Limits) -> None:
        if self.records > limits.max_records:
            raise Rejected(
                f"{self.name}: {self.records} records, over the collector's limit of {limits.max_records} per "
                f"report: a report is parsed in memory (about {MB_PER_1000_RECORDS} MB per 1,000 records); raise "
                "--max-records on a machine with that memory, or ask the reporter for daily reports"
            )


def _check_gzip(data: bytes, limits: Limits, name: str) -> None:
    total = 0
    scanner = _DtdScanner(name)
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        while chunk := stream.read(1024 * 1024):
            scanner.feed(chunk)
            total += len(chunk)
            if total > limits.max_uncompressed_bytes:
                raise Rejected(f"{name}: gzip expands past {limits.max_uncompressed_bytes} bytes")
    scanner.check_records(limits)
    if data and total / len(data) > limits.max_compression_ratio:
        raise Rejected(
            f"{name}: gzip compression ratio {total / len(data):.0f}:1 is over "
            f"{limits.max_compression_ratio:.0f}:1, the mark of an archive bomb"
        )


def _check_zip(data: bytes, limits: Limits, name: str) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members) or 1
    if total > limits.max_uncompressed_bytes:
        raise Rejected(f"{name}: zip expands to {total} bytes, over {limits.max_uncompressed_bytes}")
    if total / packed > limits.max_compression_ratio:
        raise Rejected(
            f"{name}: zip compression ratio {total / packed:.0f}:1 is over "
            f"{limits.max_compression_ratio:.0f}:1, the mark of an archive bomb"
        )
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            scanner = _DtdScanner(f"{name} ({member.filename})")
            with archive.open(member) as stream:  # reads at most the declared size
                while chunk := stream.read(1024 * 1024):
                    scanner.feed(chunk)
            scanner.check_records(limits)


def check_payload(data: bytes, limits: Limits, name: str) -> None:
    """Size and archive-bomb checks for one payload (a file, or an e-mail attachment)."""
    if len(data) > limits.max_file_bytes:
        raise Rejected(
            f"{name}: {len(data)} bytes is over the {limits.max_file_bytes}-byte limit "
            "(raise --max-file-mb if such reports are expected)"
        )
    try:
        if data[:2] == b"\x1f\x8b":
            _check_gzip(data, limits, name)
        elif data[:4] == b"PK\x03\x04":
            _check_zip(data, limits, name)
        else:
            scanner = _DtdScanner(name)
            scanner.feed(data)
            scanner.check_records(limits)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise Rejected(f"{name}: damaged archive ({exc}); ask the sender for a new copy") from None


def _check_email(data: bytes, limits: Limits, name: str) -> None:
    message = email.message_from_bytes(data, policy=email.policy.default)
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        check_payload(payload, limits, f"{name} (attachment {part.get_filename() or part.get_content_type()})")


def _encoding_problems(data: bytes) -> list[str]:
    if data[:2] == b"\x1f\x8b" or data[:4] == b"PK\x03\x04":
        return []
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"invalid UTF-8 at byte {exc.start}"]
    return []


def read_report(path: Path, customer_id: str, limits: Limits = DEFAULT_LIMITS) -> NormalizedReport:
    """Check, parse (offline) and normalize one report file; Rejected with a reason otherwise."""
    import parsedmarc

    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Rejected(f"{name}: cannot be read ({exc.strerror}); check the path and permissions") from None
    if not data.strip():
        raise Rejected(f"{name}: empty file, not a DMARC aggregate report")
    check_payload(data, limits, name)
    if path.suffix.lower() in {".eml", ".msg"} or _HEADER_LINE.match(data):
        _check_email(data, limits, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parsedmarc.parse_report_file(data, offline=True, always_use_local_files=True)
    except Exception as exc:
        raise Rejected(f"{name}: not a DMARC aggregate report ({str(exc).strip() or type(exc).__name__})") from None
    if parsed.get("report_type") != "aggregate":
        raise Rejected(f"{name}: a {parsed.get('report_type')} report, not an aggregate report; not collected")
    try:
        return normalize(parsed["report"], customer_id, _encoding_problems(data))
    except (KeyError, ValueError, TypeError) as exc:
        raise Rejected(f"{name}: aggregate report without the required fields ({exc})") from None
