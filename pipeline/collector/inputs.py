"""Report files as they arrive in mailboxes: XML, .xml.gz, .zip, .eml; checked before parsing.

Checks come first so that a hostile or broken file is rejected with a reason naming it, without
being decompressed into memory: size limits, compression-ratio limits (archive bombs), and
readability. Everything that passes is read by the collector's streaming reader
(pipeline.collector.stream); a shape it does not handle goes to parsedmarc, offline (no DNS,
no network), and is counted.
"""

from __future__ import annotations

import email
import email.policy
import io
import logging
import lzma
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.collector.normalize import NormalizedReport, ReportRefused, normalize
from pipeline.compression import gunzip_chunks

log = logging.getLogger(__name__)

REPORT_SUFFIXES = {".xml", ".gz", ".zip", ".eml", ".msg", ".json"}
_HEADER_LINE = re.compile(rb"^[A-Za-z][A-Za-z0-9-]*:[ \t]")  # an e-mail message starts with a header


@dataclass(frozen=True)
class Limits:
    # A report of 1,000,000 records is about 60 MB of gzip and 700 MB of XML: both fit. The reader
    # streams, so these are archive-bomb guards (with the ratio), not a bound on memory.
    max_file_bytes: int = 100 * 1024 * 1024
    max_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_compression_ratio: float = 300.0
    # A policy, not a memory guard: the streaming reader holds at most SPILL_RECORDS records and
    # writes the rest to the raw object's body on disk as it reads them.
    max_records: int = 5_000_000
    # Report e-mails are a few parts deep (a forwarded report: three levels) and a few parts wide.
    max_mime_depth: int = 8
    max_mime_parts: int = 100
    max_archive_members: int = 16


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
# A record start tag as bytes: any namespace prefix, any whitespace before the attributes, so that
# ``<record\t>``, ``<dmarc:record>`` and every other spelling an XML parser reads as a record count.
_RECORD_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?record[\s/>]")
_TAIL = 64  # bytes kept between chunks: longer than a DTD keyword or a prefixed record tag


class _XmlScanner:
    """Reads a report's bytes as they stream by: refuses a DTD, counts the records.

    Records are counted as start tags in the bytes: never fewer than a parser reads (a tag in a
    comment counts too, which only a report's own sender could use, against itself). An XML
    parser's count beside it (lxml's, as this scanner had) cost a whole second parse of every
    report, a tenth of the collector's time on large ones (issue #23).
    """

    def __init__(self, name: str):
        self.name, self.tail, self.records = name, b"", 0

    def feed(self, chunk: bytes) -> None:
        window = self.tail + chunk
        if _DTD.search(window):
            raise Rejected(
                f"{self.name}: the XML declares a DTD or entities (<!DOCTYPE/<!ENTITY>), which DMARC reports "
                "never do and entity-expansion attacks do; not parsed"
            )
        # a tag that ends inside the kept tail was counted with the chunk before
        self.records += sum(1 for m in _RECORD_TAG.finditer(window) if m.end() > len(self.tail))
        self.tail = window[-_TAIL:]

    def check_records(self, limits: Limits) -> int:
        if self.records > limits.max_records:
            raise Rejected(
                f"{self.name}: {self.records} records, over the collector's limit of {limits.max_records} per "
                "report (--max-records, a policy: the reader streams, memory does not grow with a report); "
                "raise it if such reports are expected"
            )
        return self.records


def _check_gzip(data: bytes, limits: Limits, name: str) -> int:
    total = 0
    scanner = _XmlScanner(name)
    for piece in gunzip_chunks(data):
        scanner.feed(piece)
        total += len(piece)
        if total > limits.max_uncompressed_bytes:
            raise Rejected(f"{name}: gzip expands past {limits.max_uncompressed_bytes} bytes")
    records = scanner.check_records(limits)
    if data and total / len(data) > limits.max_compression_ratio:
        raise Rejected(
            f"{name}: gzip compression ratio {total / len(data):.0f}:1 is over "
            f"{limits.max_compression_ratio:.0f}:1, the mark of an archive bomb"
        )
    return records


def _check_zip(data: bytes, limits: Limits, name: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members) or 1
    if len(members) > limits.max_archive_members:
        raise Rejected(
            f"{name}: zip holds {len(members)} members, over {limits.max_archive_members}: a report archive "
            "holds one report; ask the sender for one report per attachment"
        )
    if total > limits.max_uncompressed_bytes:
        raise Rejected(f"{name}: zip expands to {total} bytes, over {limits.max_uncompressed_bytes}")
    if total / packed > limits.max_compression_ratio:
        raise Rejected(
            f"{name}: zip compression ratio {total / packed:.0f}:1 is over "
            f"{limits.max_compression_ratio:.0f}:1, the mark of an archive bomb"
        )
    records = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            if member.flag_bits & 0x1:
                raise Rejected(
                    f"{name}: zip member {member.filename!r} is encrypted (password protected): a DMARC report "
                    "never is; ask the sender for an unencrypted copy"
                )
            if member.compress_type not in _ZIP_METHODS:
                raise Rejected(
                    f"{name}: zip member {member.filename!r} uses compression method {member.compress_type}, which "
                    "no report archive uses (stored, deflate, bzip2, lzma); ask the sender for a new copy"
                )
            scanner = _XmlScanner(f"{name} ({member.filename})")
            with archive.open(member) as stream:  # reads at most the declared size
                while chunk := stream.read(1024 * 1024):
                    scanner.feed(chunk)
            records = max(records, scanner.check_records(limits))
    return records


_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What a damaged archive raises from the standard library's readers: the report is damaged, not the collector.
_DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, ValueError, NotImplementedError)


def check_payload(data: bytes, limits: Limits, name: str) -> int:
    """Size and archive-bomb checks for one payload (a file, or an e-mail attachment); the
    number of records it holds (start tags counted)."""
    if len(data) > limits.max_file_bytes:
        raise Rejected(
            f"{name}: {len(data)} bytes is over the {limits.max_file_bytes}-byte limit "
            "(raise --max-file-mb if such reports are expected)"
        )
    try:
        if data[:2] == b"\x1f\x8b":
            return _check_gzip(data, limits, name)
        if data[:4] == b"PK\x03\x04":
            return _check_zip(data, limits, name)
        scanner = _XmlScanner(name)
        scanner.feed(data)
        return scanner.check_records(limits)
    except Rejected:
        raise
    except _DAMAGED as exc:
        raise Rejected(f"{name}: damaged archive ({exc}); ask the sender for a new copy") from None


# A MIME container's header, as bytes: counted before the message is parsed, so that a message
# of thousands of nested parts is refused without building its tree.
_CONTAINER = re.compile(rb"(?im)^content-type:\s*(?:multipart|message)/")


def _check_email(data: bytes, limits: Limits, name: str) -> int:
    containers = len(_CONTAINER.findall(data))
    if containers > limits.max_mime_parts:
        raise Rejected(
            f"{name}: an e-mail of {containers} nested MIME containers, over {limits.max_mime_parts}: "
            "no report e-mail is built so; not parsed"
        )
    message = email.message_from_bytes(data, policy=email.policy.default)
    parts, records, stack = 0, 0, [(message, 0)]
    while stack:  # iterative: the depth of a hostile message never reaches Python's stack
        part, depth = stack.pop()
        parts += 1
        if depth > limits.max_mime_depth or parts > limits.max_mime_parts:
            what = f"nested {depth} levels deep" if depth > limits.max_mime_depth else f"of over {parts - 1} parts"
            raise Rejected(
                f"{name}: an e-mail {what}, over the collector's limits ({limits.max_mime_depth} levels, "
                f"{limits.max_mime_parts} parts): no report e-mail is built so; not parsed"
            )
        if part.is_multipart():
            children = part.get_payload()
            stack.extend((child, depth + 1) for child in reversed(children if isinstance(children, list) else []))
            continue
        payload = part.get_payload(decode=True) or b""
        attachment = f"{name} (attachment {part.get_filename() or part.get_content_type()})"
        records = max(records, check_payload(payload, limits, attachment))
    return records


def _encoding_problems(data: bytes) -> list[str]:
    if data[:2] == b"\x1f\x8b" or data[:4] == b"PK\x03\x04":
        return []
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"invalid UTF-8 at byte {exc.start}"]
    return []


def read_report(
    path: Path, customer_id: str, limits: Limits = DEFAULT_LIMITS, spill_dir: Path | None = None
) -> NormalizedReport:
    """Check, parse (offline) and normalize one report file; Rejected with a reason otherwise.

    Every input ends here as a report or a ``Rejected``: a file is attacker-controlled, so an
    exception of any other kind from the checks, the parser or the normalization (a library's
    ``RuntimeError``, a ``RecursionError`` of a deep document, ...) is the file's fault, named,
    logged with its type, and never the end of the collection or the mailbox.
    """
    try:
        return _read(path, customer_id, limits, spill_dir)
    except Rejected:
        raise
    except Exception as exc:  # see above: the input is refused, the collector goes on
        log.warning("collector unreadable input=%s error=%s: %s", path, type(exc).__name__, exc)
        detail = str(exc).strip()[:200] or type(exc).__name__
        raise Rejected(
            f"{path}: unreadable report ({type(exc).__name__}: {detail}); it was set aside, "
            "ask the sender for a new copy"
        ) from None


# How many reports each reader read, in this process (``pipeline.collector.stream`` first;
# parsedmarc for a shape it does not handle). ``collect`` reports the fallbacks too.
READS = {"stream": 0, "parsedmarc": 0}
# parsedmarc builds the whole document in memory: the fallback reads reports up to this many records
# (the collector's memory guard before the streaming reader), whatever --max-records allows.
FALLBACK_MAX_RECORDS = 50_000


def _parsedmarc(data: bytes, name: str, why: str) -> dict:
    import parsedmarc

    READS["parsedmarc"] += 1
    log.info("collector reader=parsedmarc input=%s why=%s", name, why)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parsedmarc.parse_report_file(data, offline=True, always_use_local_files=True)
    except Exception as exc:
        raise Rejected(f"{name}: not a DMARC aggregate report ({str(exc).strip() or type(exc).__name__})") from None
    if parsed.get("report_type") != "aggregate":
        raise Rejected(f"{name}: a {parsed.get('report_type')} report, not an aggregate report; not collected")
    return parsed["report"]


def _read(path: Path, customer_id: str, limits: Limits, spill_dir: Path | None) -> NormalizedReport:
    from pipeline.collector import stream

    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Rejected(f"{name}: cannot be read ({exc.strerror}); check the path and permissions") from None
    if not data.strip():
        raise Rejected(f"{name}: empty file, not a DMARC aggregate report")
    records = check_payload(data, limits, name)
    is_email = path.suffix.lower() in {".eml", ".msg"} or bool(_HEADER_LINE.match(data))
    if is_email:
        records = max(records, _check_email(data, limits, name))
    try:
        try:
            problems = _encoding_problems(data)
            read = stream.read(data, name, customer_id, limits.max_uncompressed_bytes, is_email, problems, spill_dir)
            READS["stream"] += 1
            return read
        except stream.Refused as exc:
            raise Rejected(f"{name}: not a DMARC aggregate report ({exc})") from None
        except stream.Unhandled as exc:
            if records > FALLBACK_MAX_RECORDS:
                raise Rejected(
                    f"{name}: the collector's reader cannot read this shape ({exc}), and at {records} records it "
                    f"is over the {FALLBACK_MAX_RECORDS} that parsedmarc, the fallback, reads in memory; not "
                    "collected: ask the sender for a plain XML, gzip or zip copy"
                ) from None
            report = _parsedmarc(data, name, str(exc))
        return replace(normalize(report, customer_id, _encoding_problems(data)), reader="parsedmarc")
    except ReportRefused as exc:
        raise Rejected(f"{name}: {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise Rejected(f"{name}: aggregate report without the required fields ({exc})") from None
