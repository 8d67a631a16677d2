"""parsedmarc's aggregate report -> raw telemetry records and the report's object key.

Report identity is reporting org + report id (RFC 7489 section 7.2.1.1): the same report
collected twice, from any copy, maps to the same key, so re-sending never duplicates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gzip
import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import config
from pipeline.config import ConfigurationError
from pipeline.telemetry import RAW_FIELDS, SCHEMA_VERSION

CUSTOMER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InvalidCustomer(ConfigurationError, ValueError):
    """A customer id that cannot be used (malformed, or outside this collector's scope): the
    commands print it and exit 2, like any other bad setting."""


def check_customer_id(customer_id: str) -> str:
    if not CUSTOMER_ID.fullmatch(customer_id or ""):
        raise InvalidCustomer(
            f"customer id {customer_id!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (it becomes part of S3 keys and Dagster partition keys)."
        )
    return customer_id


class SpilledRecords(Sequence):
    """A large report's records on disk: the raw object's body itself (gzip NDJSON), written as
    the reader read them (``BodyWriter``), so that memory follows a batch of records, not the
    report. Iterating reads them back one at a time."""

    def __init__(self, path: Path, count: int, messages: int, first: dict):
        self.path, self.count, self.messages, self.first = Path(path), count, messages, first

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict]:
        with gzip.open(self.path, "rt", encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(itertools.islice(iter(self), *index.indices(self.count)))
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.first if index == 0 else next(itertools.islice(iter(self), index, None))


class SharedRecords(Sequence):
    """A report's records as the reader holds them: each record's own fields (``owns``) beside the
    fields every record of the report shares (``common``), merged only when a record is looked
    at (``{**common, **own}``). The body is encoded from the own fields directly
    (``LineEncoder``): a record's forty common fields are neither copied nor compared."""

    def __init__(self, common: dict, owns: list[dict]):
        self.common, self.owns = common, owns

    def __len__(self) -> int:
        return len(self.owns)

    def __iter__(self) -> Iterator[dict]:
        common = self.common
        for own in self.owns:
            yield {**common, **own}

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [{**self.common, **own} for own in self.owns[index]]
        return {**self.common, **self.owns[index]}

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    @property
    def messages(self) -> int:
        return sum(own["message_count"] or 0 for own in self.owns)


# zlib's default level: level 9 took twice the time for a body a fifth smaller (bench flood, W6)
BODY_LEVEL = 6


class LineEncoder:
    """Records as their body's lines, each ``json.dumps(record, sort_keys=True, default=str)``.

    Every record of a report holds the report's ``common`` fields (``report_fields``) and its
    own (``record_fields``): with ``common`` given, the common part of each line is encoded once
    per report and a record's own values are put in a template (a str, an int or None as
    json.dumps writes them; any other value by json.dumps itself), three times faster than
    json.dumps of each record and the same text (``test_stream_differential``). A record with
    other keys than the template's is encoded by json.dumps."""

    def __init__(self, common: dict | None):
        self.common = common
        self._template: tuple[str, tuple[str, ...], frozenset] | None = None
        self._own_template: tuple[str, tuple[str, ...], frozenset] | None = None

    def _compile(self, record: dict, owned: frozenset | None = None) -> tuple[str, tuple[str, ...], frozenset]:
        """(template, the keys whose values it takes, in order, the keys a record must have).
        ``owned``: the keys a record's own fields hold (they win over common ones); by default
        those not in ``common``, and then a record must have them all."""
        common = self.common or {}
        keys = sorted(record)
        own = tuple(k for k in keys if (k in owned if owned is not None else k not in common))
        parts = []
        for key in keys:
            value = "%s" if key in own else json.dumps(common[key], default=str).replace("%", "%%")
            parts.append(f"{json.dumps(key).replace('%', '%%')}: {value}")
        return "{" + ", ".join(parts) + "}\n", own, owned if owned is not None else frozenset(keys)

    def encode(self, records: Sequence[dict]) -> str:
        if isinstance(records, SharedRecords) and records.common is self.common:
            return self.encode_owns(records.owns)
        if self.common is None or not records:
            return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        if self._template is None:
            self._template = self._compile(records[0])
        return _fill(self._template, records, lambda record: json.dumps(record, sort_keys=True, default=str) + "\n")

    def encode_owns(self, owns: Sequence[dict]) -> str:
        """The lines of records given by their own fields only (each merged over ``common``
        gives the record): the same text as ``encode`` of the merged records."""
        if not owns:
            return ""
        common = self.common or {}
        if self._own_template is None:
            self._own_template = self._compile({**common, **owns[0]}, frozenset(owns[0]))
        # one not of the first record's shape: merged, and encoded as any record
        return _fill(self._own_template, owns, lambda own: self.encode([{**common, **own}]))


def _fill(compiled: tuple[str, tuple[str, ...], frozenset], items: Sequence[dict], otherwise) -> str:
    """Each item's line from the template, its values (in ``order``) as json.dumps writes them;
    an item without exactly the template's keys is ``otherwise(item)``."""
    template, order, keys = compiled
    text, lines = _json_str, []
    for item in items:
        if item.keys() != keys:
            lines.append(otherwise(item))
            continue
        values = [
            text(v) if v.__class__ is str else "null" if v is None else _json_value(v)
            for v in map(item.__getitem__, order)
        ]
        lines.append(template % tuple(values))
    return "".join(lines)


def _json_value(value) -> str:
    return int.__repr__(value) if value.__class__ is int else json.dumps(value, default=str)


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)


class BodyWriter:
    """Writes a raw object's body record by record: the same bytes as ``NormalizedReport.body``
    of the same records (gzip without a timestamp, the same deflate stream)."""

    def __init__(self, folder: Path | None, common: dict | None = None):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="report-", suffix=".jsonl.gz", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(handle, "wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._file, mtime=0, compresslevel=BODY_LEVEL)
        self._lines = LineEncoder(common)
        self.count = self.messages = 0
        self.first: dict | None = None

    def write(self, owns: list[dict]) -> None:
        """Records given by their own fields (each merged over the writer's ``common`` is the record)."""
        if owns and self.first is None:
            self.first = {**(self._lines.common or {}), **owns[0]}
        self._gzip.write(self._lines.encode_owns(owns).encode())
        self.count += len(owns)
        self.messages += sum(own["message_count"] or 0 for own in owns)

    def close(self) -> SpilledRecords:
        self._gzip.close()
        self._file.seek(9)
        self._file.write(b"\x03")  # the OS byte gzip.compress writes (GzipFile writes 255)
        self._file.close()
        return SpilledRecords(self.path, self.count, self.messages, self.first or {})

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._gzip.close()
            self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class NormalizedReport:
    customer_id: str
    report_org: str
    report_id: str
    begin: dt.datetime
    records: list[dict] | SharedRecords | SpilledRecords  # spilled to disk past a batch (pipeline.collector.stream)
    problems: list[str]  # what was damaged in this copy (parse errors, bad bytes)
    reader: str = "stream"  # which reader read it: pipeline.collector.stream, or parsedmarc (a fallback)
    common: dict | None = field(default=None, compare=False, repr=False)  # the fields all its records share

    @property
    def identity(self) -> str:
        return f"{self.report_org}\n{self.report_id}"

    @property
    def identity_hash(self) -> str:
        return hashlib.sha256(self.identity.encode()).hexdigest()[:24]

    @property
    def messages(self) -> int:
        if isinstance(self.records, SpilledRecords | SharedRecords):
            return self.records.messages
        return sum(record["message_count"] or 0 for record in self.records)

    def key(self, raw_prefix: str = "raw/") -> str:
        org = re.sub(r"[^a-z0-9.-]+", "-", self.report_org.lower()).strip("-.")[:60] or "unknown"
        day = self.begin.date().isoformat()
        return f"{raw_prefix}customer={self.customer_id}/dt={day}/{org}_{self.identity_hash}.jsonl.gz"

    def body(self) -> bytes:
        """Newline-delimited JSON, gzip without a timestamp: the same report gives the same bytes."""
        if isinstance(self.records, SpilledRecords):
            return self.records.path.read_bytes()
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:
        """Encoded once: the spool writes it, the digest ranks copies by it, the upload sends it."""
        lines = LineEncoder(self.common).encode(self.records)
        return gzip.compress(lines.encode(), compresslevel=BODY_LEVEL, mtime=0)

    def body_digest(self) -> str:
        """sha256 of ``body()``, read from disk a piece at a time for a spilled report."""
        if not isinstance(self.records, SpilledRecords):
            return hashlib.sha256(self.body()).hexdigest()
        digest = hashlib.sha256()
        with open(self.records.path, "rb") as body:
            while piece := body.read(1 << 20):
                digest.update(piece)
        return digest.hexdigest()

    @property
    def spilled(self) -> Path | None:
        """The body's file of a spilled report (the spool takes it over), else None."""
        return self.records.path if isinstance(self.records, SpilledRecords) else None

    def discard(self) -> None:
        """Remove a spilled body that will not be spooled (a duplicate, a refused report)."""
        if self.spilled is not None:
            self.spilled.unlink(missing_ok=True)


def _utc(human: str | None) -> dt.datetime | None:
    """parsedmarc renders epoch seconds as local wall time; turn them back into UTC."""
    if not human:
        return None
    naive = dt.datetime.strptime(str(human), "%Y-%m-%d %H:%M:%S")
    return naive.astimezone(dt.UTC)


def _lower(value) -> str | None:
    if value is None or value == "":
        return None
    return (value if value.__class__ is str else str(value)).strip().lower()


def _pick(results: list[dict]) -> dict:
    """The result that speaks for the record: the first pass, else the first one."""
    for result in results:
        if _lower(result.get("result")) == "pass":
            return result
    return results[0] if results else {}


class ReportRefused(ValueError):
    """The report parses but cannot be collected (its dates are forged or impossible)."""


# A report's period (RFC 7489 section 7.2: usually a day). Anyone can mail a report, so a period
# that begins in the future, ends before it begins, or spans more than this, is refused: the alert
# windows and digests must not follow a forged date.
MAX_SPAN_DAYS = 7
MAX_IDENTITY_CHARS = 256  # a report's org name and id: real ones are under 100
FUTURE_SKEW = dt.timedelta(days=1)


def check_period(begin: dt.datetime, end: dt.datetime | None, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    first = config.get("PIPELINE_FIRST_DAY")
    if begin.date() < first:
        raise ReportRefused(
            f"the report's period begins {begin:%Y-%m-%d}, before the first day of the telemetry calendar "
            f"({first}, PIPELINE_FIRST_DAY): set PIPELINE_FIRST_DAY earlier to collect reports that old"
        )
    if begin > now + FUTURE_SKEW:
        raise ReportRefused(
            f"the report's period begins {begin:%Y-%m-%d %H:%M} UTC, after tomorrow: a forged or mis-dated "
            "report (check the reporter's clock); not collected"
        )
    if end is not None and end < begin:
        raise ReportRefused(
            f"the report's period ends ({end:%Y-%m-%d %H:%M}) before it begins ({begin:%Y-%m-%d %H:%M}); not collected"
        )
    if end is not None and end - begin > dt.timedelta(days=MAX_SPAN_DAYS):
        raise ReportRefused(
            f"the report's period spans {(end - begin).days} days ({begin:%Y-%m-%d} to {end:%Y-%m-%d}), over "
            f"{MAX_SPAN_DAYS}: aggregate reports cover a day; not collected"
        )


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: no PostgreSQL text holds them


def clean_text(value):
    """A string as the warehouse can hold it: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str) and _UNSTORABLE.search(value):
        return _UNSTORABLE.sub("\ufffd", value)
    return value


def report_fields(customer_id: str, org: str, report_id: str, meta: dict, policy: dict, begin, end) -> dict:
    """The fields every record of a report shares, cleaned once per report."""
    pct = policy.get("pct")
    common = {
        "schema_version": SCHEMA_VERSION,
        "customer_id": customer_id,
        "report_org": org,
        "report_id": report_id,
        "report_email": meta.get("org_email"),
        "report_begin": begin.isoformat() if begin else None,
        "report_end": end.isoformat() if end else None,
        "policy_domain": _lower(policy.get("domain")),
        "policy_adkim": _lower(policy.get("adkim")),
        "policy_aspf": _lower(policy.get("aspf")),
        "policy_p": _lower(policy.get("p")),
        "policy_sp": _lower(policy.get("sp")),
        "policy_pct": int(pct) if str(pct or "").isdigit() else None,
    }
    return {name: clean_text(value) for name, value in common.items()}


def record_fields(
    common: dict,
    index: int,
    source_ip,
    count,
    evaluated: dict,
    reasons: list,
    ids: dict,
    dkim: list[dict],
    spf: list[dict],
) -> dict:
    """One raw record: the report's ``common`` fields and this record's (as parsedmarc renders a
    record: ``evaluated`` disposition/dkim/spf, ``ids`` header_from/envelope_from/envelope_to,
    ``dkim``/``spf`` its auth results), cleaned. The collector's reader and parsedmarc's output
    both end here."""
    dkim = [
        {"domain": _lower(d.get("domain")), "selector": d.get("selector"), "result": _lower(d.get("result"))}
        for d in dkim
    ]
    spf = [
        {"domain": _lower(x.get("domain")), "scope": _lower(x.get("scope")), "result": _lower(x.get("result"))}
        for x in spf
    ]
    reasons = [r for r in reasons if r.get("type")]
    own = {
        "record_index": index,
        "source_ip": source_ip,
        "message_count": int(count or 0),
        "disposition": _lower(evaluated.get("disposition")),
        "policy_dkim": _lower(evaluated.get("dkim")),
        "policy_spf": _lower(evaluated.get("spf")),
        "override_reasons": json.dumps(reasons) if reasons else None,
        "header_from": _lower(ids.get("header_from")),
        "envelope_from": _lower(ids.get("envelope_from")),
        "envelope_to": _lower(ids.get("envelope_to")),
        **auth_fields(dkim, spf),
    }
    return {**common, **cleaned(own)}


def auth_fields(dkim: list[dict], spf: list[dict]) -> dict:
    """A record's auth-result fields from its normalized DKIM and SPF results: the one that
    speaks for each (``_pick``) and both lists as JSON. The reader and parsedmarc's path share it."""
    dkim_main, spf_main = _pick(dkim), _pick(spf)
    return {
        "dkim_domain": dkim_main.get("domain"),
        "dkim_selector": dkim_main.get("selector"),
        "dkim_result": dkim_main.get("result"),
        "spf_domain": spf_main.get("domain"),
        "spf_scope": spf_main.get("scope"),
        "spf_result": spf_main.get("result"),
        "dkim_auth": _results_json(dkim, "selector"),
        "spf_auth": _results_json(spf, "scope"),
    }


def cleaned(own: dict) -> dict:
    """A record's own fields as the warehouse can hold them (NUL and lone surrogates become
    U+FFFD), with one search over them all when, as nearly always, there is nothing to clean."""
    if _UNSTORABLE.search("".join([v for v in own.values() if isinstance(v, str)])):
        for name, value in own.items():
            if isinstance(value, str) and _UNSTORABLE.search(value):
                own[name] = _UNSTORABLE.sub("\ufffd", value)
    return own


def _results_json(results: list[dict], middle: str) -> str:
    """``json.dumps(results)`` of auth results (domain, ``middle``, result: str or None each),
    written directly: two of them a record, json.dumps was a tenth of the reader's time."""
    if not results:
        return "[]"
    parts, text = [], _json_str
    for result in results:
        domain, second, verdict = result["domain"], result[middle], result["result"]
        if domain.__class__ is str and second.__class__ is str and verdict.__class__ is str:
            parts.append(f'{{"domain": {text(domain)}, "{middle}": {text(second)}, "result": {text(verdict)}}}')
        else:  # a None (parsedmarc's rendering) or another type: json.dumps's own text
            return json.dumps(results)
    return "[" + ", ".join(parts) + "]"


def report_identity(meta: dict) -> tuple[str, str, dt.datetime | None, dt.datetime | None]:
    """(org, report id, begin, end) of parsedmarc's report_metadata; refused when it has none."""
    org = clean_text(str(meta.get("org_name") or "").strip())
    report_id = clean_text(str(meta.get("report_id") or "").strip())
    if not org or not report_id:
        raise ValueError("the report has no reporting org or no report id, so it has no identity")
    if len(org) > MAX_IDENTITY_CHARS or len(report_id) > MAX_IDENTITY_CHARS:
        raise ReportRefused(
            f"the report's org name ({len(org)} characters) or id ({len(report_id)}) is over {MAX_IDENTITY_CHARS} "
            "characters: no receiver names a report so; not collected"
        )
    return org, report_id, _utc(meta.get("begin_date")), _utc(meta.get("end_date"))


def normalize(
    report: dict, customer_id: str, problems: list[str] | None = None, now: dt.datetime | None = None
) -> NormalizedReport:
    meta = report["report_metadata"]
    policy = report.get("policy_published") or {}
    org, report_id, begin, end = report_identity(meta)
    problems = list(problems or []) + [str(e) for e in meta.get("errors") or []]
    common = report_fields(customer_id, org, report_id, meta, policy, begin, end)
    records = []
    for index, rec in enumerate(report.get("records") or []):
        auth = rec.get("auth_results") or {}
        record = record_fields(
            common,
            index,
            (rec.get("source") or {}).get("ip_address"),
            rec.get("count"),
            rec.get("policy_evaluated") or {},
            (rec.get("policy_evaluated") or {}).get("policy_override_reasons") or [],
            rec.get("identifiers") or {},
            auth.get("dkim") or [],
            auth.get("spf") or [],
        )
        records.append(record)
    if records:
        assert records[0].keys() == RAW_FIELDS.keys()
    if begin is None:
        raise ValueError("the report has no date range")
    check_period(begin, end, now)
    return NormalizedReport(customer_id, org, report_id, begin, records, problems, common=common)


def read_raw_object(body: bytes) -> list[dict]:
    """The records of a raw telemetry object (gzip NDJSON)."""
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines() if line.strip()]
