"""The collector's own aggregate-report reader: the XML read as it streams out of its archive.

parsedmarc builds the whole document with xmltodict, then looks up every record's IP in a
database (issue #23: about 29 s for a 50,000-record report). This reader feeds the decompressed
bytes to lxml's pull parser (no DTD, no entities, no network), reads the report metadata and
``policy_published`` as they end (RFC 7489 orders them before the records), and turns each
``<record>`` into a normalized raw record as it ends, then drops it: the parser holds one record.

It gives parsedmarc's answer, read for read (``pipeline_tests/collector/test_stream_differential.py``
runs both over the shared samples, the mail shapes and generated corpora): the same defaults
(adkim/aspf ``r``, sp from p, SPF scope ``mfrom``, DKIM selector ``none``, envelope_from from the
last SPF domain), the same org name (the base domain of a name without spaces) and report id
(``<``/``>`` dropped, up to ``@``), the same records dropped (no source IP, no count, ...), and a
report over more than a day split into per-day records as parsedmarc splits it.

What it does not handle (not XML after unpacking, an e-mail without a report attachment, a
metadata block after the records) raises ``Unhandled``: the caller falls back to parsedmarc, and
counts and logs it.
"""

from __future__ import annotations

import codecs
import datetime as dt
import email
import email.policy
import functools
import gc
import io
import ipaddress
import json
import logging
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.parsers import expat

from pipeline.collector.normalize import (
    BodyWriter,
    NormalizedReport,
    SharedRecords,
    auth_fields,
    check_period,
    cleaned,
    report_fields,
    report_identity,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_GZIP = b"\x1f\x8b"
_ZIP_LOCAL = b"PK\x03\x04"
_XML_HEADER = re.compile(r"^<\?xml .*?>", re.MULTILINE)  # parsedmarc's: replaced, an odd encoding ignored
_XS_SCHEMA = re.compile(r"</?xs:schema[^<>]*>")


class Unhandled(Exception):
    """A shape this reader does not read: the caller asks parsedmarc."""


class Refused(ValueError):
    """Not an aggregate report this reader (and parsedmarc) would collect; the message says why."""


# -- unpacking ---------------------------------------------------------------------------------


def gunzip_members(data: bytes, max_bytes: int) -> Iterator[bytes]:
    """Every gzip member of ``data`` in turn (mail systems concatenate them); bytes after the
    last member are ignored, as gzip(1) and parsedmarc ignore them. Stops past ``max_bytes``."""
    total, rest = 0, data
    while rest[:2] == _GZIP:
        inflater = zlib.decompressobj(31)
        view = memoryview(rest)
        offset = 0
        while not inflater.eof and offset < len(view):
            piece = inflater.decompress(view[offset : offset + CHUNK], CHUNK)
            offset += CHUNK
            while piece:
                total += len(piece)
                if total > max_bytes:
                    raise Refused(f"gzip expands past {max_bytes} bytes")
                yield piece
                if inflater.eof:
                    break
                piece = inflater.decompress(inflater.unconsumed_tail, CHUNK)
        if not inflater.eof:
            if total:  # a truncated last member: what it held is read, as parsedmarc reads it
                return
            raise Refused("damaged gzip stream")
        rest = inflater.unused_data


def _zip_xml(data: bytes, max_bytes: int) -> Iterator[bytes]:
    """The first member of a zip, as a stream (data before or after the archive is fine:
    zipfile finds the central directory from the end)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Unhandled(f"zip not read ({exc})") from None
    if not members:
        raise Refused("zip holds no file")
    total = 0
    with archive, archive.open(members[0]) as stream:
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise Refused(f"zip expands past {max_bytes} bytes")
            yield chunk


def payload_stream(data: bytes, max_bytes: int) -> Iterator[bytes]:
    """The report XML inside ``data`` (gzip, zip, or XML itself), chunk by chunk."""
    if data[:2] == _GZIP:
        return gunzip_members(data, max_bytes)
    if _ZIP_LOCAL in data[:1024] or data[:4] == _ZIP_LOCAL:
        return _zip_xml(data, max_bytes)
    return iter([data])


def email_payloads(data: bytes) -> list[bytes]:
    """The parts of a report e-mail that can hold a report, in order (attachments first)."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    found, stack = [], [message]
    while stack:
        part = stack.pop(0)
        if part.is_multipart():
            stack[:0] = list(part.iter_parts())
            continue
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            stack[:0] = inner if isinstance(inner, list) else []
            continue
        payload = part.get_payload(decode=True) or b""
        if payload[:2] == _GZIP or payload[:4] == _ZIP_LOCAL or b"<feedback" in payload[:4096]:
            found.append(payload)
    return found


# -- XML ---------------------------------------------------------------------------------------


def _local(tag) -> str:
    if not isinstance(tag, str):  # a comment or processing instruction
        return ""
    return tag[tag.index("}") + 1 :] if tag[:1] == "{" else tag


_LISTED = frozenset({"dkim", "spf", "reason"})


def _kids(element) -> tuple[dict, dict]:
    """An element's children by local name in one pass: the first of each name, and every one of
    the names a record repeats (dkim, spf, reason). (The reader's inner loop: ``_local`` inlined.)"""
    first: dict = {}
    listed: dict = {}
    for child in element:
        name = child.tag
        if name.__class__ is not str:  # an entity reference: no name
            continue
        if name[0] == "{":
            name = name[name.index("}") + 1 :]
        if name not in first:
            first[name] = child
        if name in _LISTED:
            if name in listed:
                listed[name].append(child)
            else:
                listed[name] = [child]
    return first, listed


def _named(element) -> dict:
    """An element's children by local name, the first of each (``_kids`` without the lists)."""
    first: dict = {}
    for child in element:
        name = child.tag
        if name.__class__ is not str:
            continue
        if name[0] == "{":
            name = name[name.index("}") + 1 :]
        if name not in first:
            first[name] = child
    return first


def _values(element) -> dict:
    """An element's children by local name, the first of each, as their ``_text`` values, in one
    pass (``_named`` and a ``_text`` of each: an identifiers block, an auth result)."""
    values: dict = {}
    for child in element:
        name = child.tag
        if name.__class__ is not str:
            continue
        if name[0] == "{":
            name = name[name.index("}") + 1 :]
        if name not in values:
            if len(child):
                values[name] = None
            else:
                text = child.text
                values[name] = (text.strip() or None) if text else None
    return values


def _text(element) -> str | None:
    """An element's value as xmltodict gives it to parsedmarc: its stripped text, None if blank
    (or if it holds elements: a mapping to xmltodict, which no field of a report is)."""
    if element is None or len(element):
        return None
    text = (element.text or "").strip()
    return text or None


def _mixed_text(element) -> str | None:
    """xmltodict's ``#text`` of an element holding elements too (its own text and the tails),
    which parsedmarc unwraps for the reporter's e-mail address."""
    if element is None:
        return None
    if not len(element):
        return _text(element)
    text = ((element.text or "") + "".join(child.tail or "" for child in element)).strip()
    return text or None


def _child(element, name: str):
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _children(element, name: str) -> list:
    return [child for child in element if _local(child.tag) == name]


def _has(element, name: str) -> bool:
    return _child(element, name) is not None


def _metadata(element) -> dict:
    """report_metadata as parsedmarc renders it (org name, id, dates, errors)."""
    org = _text(_child(element, "org_name"))
    mail = _mixed_text(_child(element, "email"))
    if org is None and mail is not None:
        org = mail.split("@")[-1]
    if org is not None and " " not in org:
        org = _base_domain(org) or org
    if not org:
        raise Refused("Organization name is missing")
    if not _has(element, "report_id"):
        raise Refused("Missing field: 'report_id'")
    report_id = _text(_child(element, "report_id"))
    if report_id is None:
        raise Refused("Report missing required section")
    report_id = report_id.replace("<", "").replace(">", "").split("@")[0]
    dates = _child(element, "date_range")
    if dates is None or not _has(dates, "begin") or not _has(dates, "end"):
        raise Refused("Missing field: 'date_range'")
    try:
        begin = int((_text(_child(dates, "begin")) or "").split(".")[0])
        end = int((_text(_child(dates, "end")) or "").split(".")[0])
    except ValueError as exc:
        raise Refused(f"Unexpected error: {exc}") from None
    errors = [e for e in (_text(x) for x in _children(element, "error")) if e]
    return {
        "org_name": org,
        "org_email": mail,
        "report_id": report_id,
        "begin_ts": begin,
        "end_ts": end,
        "begin_date": _human(begin),
        "end_date": _human(end),
        "errors": errors,
    }


@functools.cache
def _suffixes() -> tuple:
    """The public suffix list and parsedmarc's PSL overrides (its bundled file, which
    ``parsedmarc.utils`` loads at import), read without importing parsedmarc."""
    import importlib.util

    import publicsuffixlist

    package = importlib.util.find_spec("parsedmarc").submodule_search_locations[0]
    listed = (Path(package) / "resources" / "maps" / "psl_overrides.txt").read_text(encoding="utf-8")
    overrides = tuple(line.strip() for line in listed.splitlines() if line.strip())
    return publicsuffixlist.PublicSuffixList(), overrides


def _base_domain(name: str) -> str | None:
    """parsedmarc's ``get_base_domain``: an override's own name when the domain ends with one,
    else the private suffix. Without importing parsedmarc (half a second), which a read needs
    only for a shape it hands over (``test_base_domains_are_parsedmarcs``)."""
    suffixes, overrides = _suffixes()
    domain = name.lower()
    if domain.endswith(overrides):
        for override in overrides:
            if domain.endswith(override):
                return override.strip(".").strip("-")
    return suffixes.privatesuffix(domain)


def _human(ts: int) -> str:
    """parsedmarc's timestamp_to_human: local wall time (normalize turns it back into UTC)."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _policy(element) -> dict:
    def value(name: str, default=None):
        found = _text(_child(element, name))
        return default if found is None else found

    if not _has(element, "domain"):
        raise Refused("Missing field: 'domain'")
    if not _has(element, "p"):
        raise Refused("Missing field: 'p'")
    p = _text(_child(element, "p"))
    return {
        "domain": _text(_child(element, "domain")),
        "adkim": value("adkim", "r"),
        "aspf": value("aspf", "r"),
        "p": p,
        "sp": value("sp", p),
        "pct": value("pct"),
    }


# exactly what ipaddress.IPv4Address accepts: four ASCII decimal octets to 255, no leading zeros
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


class _Dropped(Exception):
    """A record parsedmarc drops (with a warning) and so does this reader."""


def _low(text: str | None) -> str | None:
    """``normalize._lower`` of a value ``_text`` gave (stripped already, never blank)."""
    return None if text is None else text.lower()


def _auth(results, kind: str, middle: str, default: str) -> list[dict]:
    """A record's <dkim> or <spf> auth results as record_fields writes them: those with a domain,
    ``middle`` (selector, scope) defaulted as parsedmarc does, results lower-cased ("none" if
    missing); an empty element drops the record (parsedmarc's ``"domain" in None`` fails), one
    of text alone is skipped."""
    found = []
    for result in results:
        if not len(result):
            if _text(result) is None:
                raise _Dropped(kind)
            continue
        fields = _values(result)
        domain = fields.get("domain")
        if domain is not None:
            value = fields.get(middle) or default
            verdict = fields.get("result")
            found.append(
                {
                    "domain": domain.lower(),
                    middle: value if kind == "dkim" else value.lower(),  # parsedmarc keeps a selector's case
                    "result": verdict.lower() if verdict else "none",
                }
            )
    return found


def _own(element, clean: bool = True) -> tuple[int, dict]:
    """One <record>: its message count, and its own fields exactly as ``normalize.record_fields``
    writes them from parsedmarc's rendering of it (``_parse_report_record``'s defaults and drops),
    built in one pass without the rendering between (the reader's inner loop; the differential
    test holds the two equal). The caller adds ``record_index`` and ``message_count``."""
    kids = _named(element)
    row = kids.get("row")
    if row is None:
        raise _Dropped("'row'")
    cells = _named(row)
    source_ip = _text(cells.get("source_ip"))
    if source_ip is None:
        raise _Dropped("Source IP address is empty")
    if _IPV4.fullmatch(source_ip) is None:  # the common case at a regex's cost; anything else as parsedmarc
        try:
            ipaddress.ip_address(source_ip)  # parsedmarc's lookup of the address refuses anything else
        except ValueError:
            raise _Dropped(f"{source_ip[:60]!r} does not appear to be an IPv4 or IPv6 address") from None
    try:
        count = int(_text(cells.get("count")) or "x")
    except ValueError:
        raise _Dropped("count") from None
    evaluated = cells.get("policy_evaluated")
    if evaluated is None or not len(evaluated):  # absent, empty or text alone: parsedmarc's .copy() fails
        raise _Dropped("'policy_evaluated'")
    verdict, repeated = _kids(evaluated)
    if "spf" not in verdict or "dkim" not in verdict:
        raise _Dropped("'spf'")
    reasons = []
    for reason in repeated.get("reason", ()):
        if len(reason) == 0:
            raise _Dropped("reason")  # a reason of text alone: parsedmarc's reason.get fails
        entry: dict = {}
        for child in reason:
            name = _local(child.tag)
            if name and name not in entry:
                entry[name] = _text(child)
        entry["comment"] = entry.get("comment")
        if entry.get("type"):
            reasons.append(entry)
    ids = kids.get("identities")
    if ids is None:
        ids = kids.get("identifiers")
    if ids is None or not len(ids):
        raise _Dropped("'identifiers'")
    named = _values(ids)
    envelope_from = _low(named.get("envelope_from"))
    auth = kids.get("auth_results")
    if auth is None:
        raise _Dropped("'auth_results'")
    _, results = _kids(auth)
    dkim = _auth(results.get("dkim", ()), "dkim", "selector", "none")
    raw_spf = results.get("spf", ())
    spf = _auth(raw_spf, "spf", "scope", "mfrom")
    # parsedmarc's backfill: the last SPF result's domain, when the identifiers have no envelope_from
    if envelope_from is None and raw_spf and len(raw_spf[-1]):
        last_spf = _values(raw_spf[-1])
        if "domain" in last_spf:
            envelope_from = _low(last_spf["domain"])
    own = {
        "source_ip": source_ip,
        "disposition": _low(_text(verdict["disposition"])) if "disposition" in verdict else "none",
        "policy_dkim": _low(_text(verdict["dkim"])),
        "policy_spf": _low(_text(verdict["spf"])),
        "override_reasons": json.dumps(reasons) if reasons else None,
        "header_from": _low(named.get("header_from")),
        "envelope_from": envelope_from,
        "envelope_to": _low(named.get("envelope_to")),
        **auth_fields(dkim, spf),
    }
    # a strict parse yields XML characters only (no NUL, no lone surrogate): nothing to clean
    return count, cleaned(own) if clean else own


def _decoded(chunks: Iterator[bytes]) -> Iterator[tuple[str, str]]:
    """(as decoded, as prepared) pieces of a document: UTF-8 with bad bytes dropped, then the XML
    header replaced and xs:schema tags removed, as parsedmarc prepares a document for its second
    parse (so an odd declared encoding reads as it reads it; its first, strict parse sees the
    text as decoded). Each piece ends before a ``<``, so no tag is split between two pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    first, carry = True, ""
    for chunk in chunks:
        text = carry + decoder.decode(chunk)
        if first:
            text = text.lstrip("\ufeff")
            if len(text) < 4096 and text.lstrip().startswith("<?") and "?>" not in text:
                carry = text
                continue
        cut = text.rfind("<")
        if cut == -1 or len(text) - cut > 4096:
            cut = len(text)
        body, carry = text[:cut], text[cut:]
        if body:
            yield body, _prepared(body, first)
            first = False
    tail = carry + decoder.decode(b"", final=True)
    if first:
        tail = tail.lstrip("\ufeff")
    if tail:
        yield tail, _prepared(tail, first)


def _prepared(text: str, first: bool) -> str:
    if first:
        text = _XML_HEADER.sub('<?xml version="1.0"?>', text, count=1)
    return _XS_SCHEMA.sub("", text) if "xs:schema" in text else text


# Records held in memory at most: past this many a report's records go to its raw object's body
# on disk as they are read (normalize.BodyWriter), so memory follows this batch, not the report.
SPILL_RECORDS = 10_000


class _NotWellFormed(Exception):
    """The strict parse met what is not well-formed XML: the document is read again, recovering."""


def read_xml(
    chunks: Callable[[], Iterator[bytes]],
    name: str,
    customer_id: str,
    problems: list[str],
    now: dt.datetime | None = None,
    spill_dir: Path | None = None,
) -> NormalizedReport:
    """Stream-parse one aggregate report's XML (``chunks()`` gives its bytes, from the start, each
    time it is called) into a normalized report (its records spilled to ``spill_dir`` past
    ``SPILL_RECORDS``).

    The document is parsed strictly first, by lxml alone: nearly every report is well-formed, and
    is read once. One that is not (or whose preparation changed it) is read again from its start
    as before, lxml recovering as parsedmarc's second parse does, expat beside it saying whether
    the copy is damaged (``_parse``)."""
    collecting = gc.isenabled()
    gc.disable()  # a read allocates acyclic records and elements by the thousand: nothing to collect
    try:
        try:
            return _attempt(chunks(), name, customer_id, problems, now, spill_dir, strict=True)
        except _NotWellFormed:
            return _attempt(chunks(), name, customer_id, problems, now, spill_dir, strict=False)
    finally:
        if collecting:
            gc.enable()


def _attempt(chunks, name, customer_id, problems, now, spill_dir, strict: bool) -> NormalizedReport:
    opened: list[BodyWriter] = []
    try:
        return _read_xml(chunks, name, customer_id, problems, now, spill_dir, opened, strict)
    except BaseException:
        for writer in opened:  # a report refused (or read again) half way: nothing of it stays on disk
            writer.discard()
        raise


def _read_xml(chunks, name, customer_id, problems, now, spill_dir, opened: list, strict: bool) -> NormalizedReport:
    meta = policy = common = None
    split = None  # (begin, end) of a report over more than a day: parsedmarc's per-day records
    pending: list[tuple] = []  # records read before the metadata or the policy (out of RFC order)
    records: list[dict] = []
    dropped = seen = index = 0
    writer = None

    def start_records() -> None:
        nonlocal common, split
        org, report_id, begin, end = report_identity(meta)
        check_period(begin, end, now)  # before any record: a refused report costs no more than its metadata
        common = report_fields(customer_id, org, report_id, meta, policy, begin, end)
        if meta["end_ts"] - meta["begin_ts"] > 24 * 3600:
            split = (
                dt.datetime.fromtimestamp(meta["begin_ts"], dt.UTC),
                dt.datetime.fromtimestamp(meta["end_ts"], dt.UTC),
            )

    def take(read: tuple[int, dict]) -> None:  # records holds each record's own fields (SharedRecords)
        nonlocal index, writer
        count, own = read
        if split is None:
            own["record_index"], own["message_count"] = index, count
            records.append(own)
            index += 1
        else:  # a report over more than a day: parsedmarc's own split
            from parsedmarc import _bucket_interval_by_day

            for bucket in _bucket_interval_by_day(*split, count):
                records.append({**own, "record_index": index, "message_count": bucket["count"]})
                index += 1
        if len(records) >= SPILL_RECORDS:
            if writer is None:
                writer = BodyWriter(spill_dir, common)
                opened.append(writer)
            writer.write(records)
            records.clear()

    def handle(element) -> None:
        nonlocal meta, policy, seen, dropped
        local = _local(element.tag)
        if local == "report_metadata" and meta is None:
            meta = _metadata(element)
        elif local == "policy_published" and policy is None:
            policy = _policy(element)
        elif local == "record":
            seen += 1
            try:
                args = _own(element, not strict)
            except _Dropped:
                dropped += 1
                return
            if common is None:
                pending.append(args)
            else:
                take(args)
            return
        if common is None and meta is not None and policy is not None:
            start_records()
            for early in pending:
                take(early)
            pending.clear()

    damaged: list[str] = []
    _parse(chunks, handle, damaged, strict)
    if meta is None:
        raise Refused("Missing field: 'report_metadata'")
    if policy is None:
        raise Refused("Missing field: 'policy_published'")
    if not seen:
        raise Refused("Missing field: 'record'")
    if seen == 1 and dropped:  # parsedmarc drops a bad record of many, but refuses a report of one
        raise Refused("Unexpected error: its one record has no source IP, count or results")
    if dropped:
        log.warning(
            "collector input=%s: %d record(s) dropped (no source IP, count or results), as parsedmarc", name, dropped
        )
    begin = dt.datetime.fromisoformat(common["report_begin"])
    kept = SharedRecords(common, records)
    if writer is not None:
        writer.write(records)
        kept = writer.close()
    return NormalizedReport(
        customer_id,
        common["report_org"],
        common["report_id"],
        begin,
        kept,
        problems + damaged + meta["errors"],
        common=common,
    )


# an XML declaration as well-formed documents write it: replacing it changes nothing a strict parse sees
_PLAIN_HEADER = re.compile(
    r"""^<\?xml version=(["'])1\.[0-9]\1(?: encoding=(["'])[A-Za-z][A-Za-z0-9._-]*\2)?"""
    r"""(?: standalone=(["'])(?:yes|no)\3)? ?\?>"""
)


def _parse(chunks: Iterator[bytes], handle, damaged: list[str], strict: bool) -> None:
    """Call ``handle`` with each ended child of the root, as lxml's pull parser reads the prepared
    text (parsedmarc's preparation for its second parse).

    ``strict``: lxml alone, not recovering; ``_NotWellFormed`` at the first error, or when the
    preparation changed more than a plain XML declaration (what it removed could have made the
    text as decoded ill-formed). Otherwise lxml's recovering parser reads the prepared text and
    expat, strict as parsedmarc's first parse, the text as decoded beside it, to say (in
    ``damaged``) that the copy is not well-formed.

    (A one-pass expat reader with Python callbacks, tried for speed, was slower: twenty callbacks
    a record cost more than lxml's C tree and the ``_named`` walk of it. The expat parse beside
    lxml's costs a tenth of a read: a well-formed report, nearly all of them, is read once.)"""
    from lxml import etree

    parser = etree.XMLPullParser(
        events=("end",),
        tag=("{*}report_metadata", "{*}policy_published", "{*}record"),
        recover=not strict,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    checker = None if strict else expat.ParserCreate("utf-8")  # the text is decoded already

    def check(text: str, final: bool = False) -> None:
        if checker is None or damaged:
            return
        try:
            checker.Parse(text, final)
        except expat.ExpatError as exc:
            damaged.append(f"Invalid XML: {exc}")

    def feed(decoded: str, text: str) -> list:
        if strict and text is not decoded and _PLAIN_HEADER.sub('<?xml version="1.0"?>', decoded, count=1) != text:
            raise _NotWellFormed("the preparation changed the text")
        check(decoded)
        try:
            parser.feed(text)
        except etree.XMLSyntaxError as exc:
            if strict:
                raise _NotWellFormed(str(exc)) from None
        return list(parser.read_events())

    root = None
    for decoded, text in _decoded(chunks):
        for _, element in feed(decoded, text):
            parent = element.getparent()
            if parent is None or parent.getparent() is not None:  # not a child of the root
                continue
            if root is None:
                root = parent
                if _local(root.tag) != "feedback":
                    raise Refused(f"the document is <{_local(root.tag)}>, not an aggregate report's <feedback>")
            # lxml's recovery can end an element without its end event: take up what came before
            if element.getprevious() is not None:
                for earlier in [*element.itersiblings(preceding=True)][::-1]:
                    handle(earlier)
                    root.remove(earlier)
            handle(element)
            root.remove(element)  # ended: the parser holds nothing of it any more
    check("", final=True)
    try:
        closed = parser.close()
    except etree.XMLSyntaxError as exc:
        if strict:
            raise _NotWellFormed(str(exc)) from None
        closed = None
    if root is None:
        root = closed
    if root is None:
        raise Unhandled("no XML document")
    if _local(root.tag) != "feedback":
        raise Refused(f"the document is <{_local(root.tag)}>, not an aggregate report's <feedback>")
    for rest in list(root):  # what ended without an end event at the close
        handle(rest)


def read(
    data: bytes,
    name: str,
    customer_id: str,
    max_bytes: int,
    is_email: bool,
    problems: list[str] | None = None,
    spill_dir: Path | None = None,
) -> NormalizedReport:
    """The aggregate report in ``data`` (XML, gzip, zip, or an e-mail carrying one of them)."""
    problems = list(problems or [])
    if not is_email:
        return read_xml(lambda: payload_stream(data, max_bytes), name, customer_id, problems, spill_dir=spill_dir)
    payloads = email_payloads(data)
    if not payloads:
        raise Unhandled("no report attachment found in the e-mail")
    last: Exception | None = None
    for payload in payloads:
        try:
            return read_xml(
                lambda payload=payload: payload_stream(payload, max_bytes),
                name,
                customer_id,
                problems,
                spill_dir=spill_dir,
            )
        except (Refused, Unhandled) as exc:
            last = exc
    raise Unhandled(f"no attachment of the e-mail was read ({last})")
