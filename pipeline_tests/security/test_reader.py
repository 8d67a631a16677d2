"""Every input ends as a report or a ``Rejected``: the collector's reader over hostile archives,
e-mails, field values and dates, and over what hypothesis makes of random bytes, mutated real
samples and generated archive and MIME trees (issue #21, high 1; medium 3 and 7)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collector.inputs import DEFAULT_LIMITS, Limits, Rejected, read_report
from pipeline.collector.normalize import NormalizedReport, normalize
from pipeline_tests.security import hostile
from pipeline_tests.support import SAMPLES

NOW = dt.datetime.now(dt.UTC)
SAMPLE_BYTES = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.is_file() and p.name != "NOTICE"}


def read(data: bytes, name: str = "input.xml", limits: Limits = DEFAULT_LIMITS) -> NormalizedReport | Rejected:
    """read_report over ``data`` as a file called ``name``: the report, or the Rejected it raised.
    Any other exception fails the test (that is the property)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return read_report(path, "acme", limits)
        except Rejected as exc:
            assert str(path) in str(exc), f"the reason does not name the input: {exc}"
            return exc


# -- the shapes the review found, and their families -------------------------------------------

EXPECTED_REASON = {
    "encrypted-member.zip": "is encrypted",
    "unsupported-method.zip": "compression method 99",
    "bad-crc.zip": "damaged archive",
    "many-members.zip": "members, over",
    "gzip-bomb.xml.gz": "archive bomb",
    "zip-bomb.zip": "archive bomb",
    "encrypted-zip.eml": "is encrypted",
    "unsupported-zip.eml": "compression method 99",
    "report-plus-encrypted.eml": "is encrypted",
    "deep-multipart.eml": "levels deep",
    "deep-rfc822.eml": "levels deep",
    "very-deep-multipart.eml": "nested MIME containers",
    "wide.eml": "parts, over",
    "bomb.eml": "archive bomb",
}


@pytest.mark.parametrize("name", sorted({**hostile.archive_shapes(), **hostile.mime_shapes()}))
def test_every_hostile_shape_ends_in_a_report_or_a_rejection(name):
    data = {**hostile.archive_shapes(), **hostile.mime_shapes()}[name]
    outcome = read(data, name)
    if name in EXPECTED_REASON:
        assert isinstance(outcome, Rejected), f"{name} was collected"
        assert EXPECTED_REASON[name] in str(outcome)


@pytest.mark.parametrize("name", sorted(hostile.field_cases()))
def test_hostile_field_values_are_collected_as_text_or_refused(name):
    outcome = read(hostile.field_cases()[name], name)
    if isinstance(outcome, NormalizedReport):
        for record in outcome.records:
            for value in record.values():
                assert not (isinstance(value, str) and "\x00" in value)


def test_nul_and_lone_surrogates_never_reach_the_warehouse():
    """parsedmarc's XML reading drops NUL today; the normalization does not rely on it."""
    report = {
        "report_metadata": {"org_name": "Evil\x00Org", "report_id": "nul\ud800-1", "begin_date": "2026-11-02 00:00:00"},
        "policy_published": {"domain": "victim.example"},
        "records": [{"source": {"ip_address": "192.0.2.1"}, "count": 1, "identifiers": {"header_from": "a\x00b"}}],
    }
    normalized = normalize(report, "acme", now=NOW)
    assert normalized.report_org == "Evil\ufffdOrg" and normalized.report_id == "nul\ufffd-1"
    assert normalized.records[0]["header_from"] == "a\ufffdb"
    normalized.body()  # its raw object can be written


# -- record limits: counted as the parser sees them (medium 7) -----------------------------------


@pytest.mark.parametrize(
    "spelling",
    [b"<record>", b"<record\t>", b"<record\n>", b'<record id="1">', b"<dmarc:record>", b"<record  >"],
)
def test_the_record_limit_counts_records_however_the_tag_is_spelled(spelling):
    xml = hostile.report_xml(records=6, report_id="spelled")
    close = b"</dmarc:record>" if b"dmarc:" in spelling else b"</record>"
    xml = xml.replace(b"<record>", spelling).replace(b"</record>", close)
    if b"dmarc:" in spelling:
        xml = xml.replace(b"<feedback>", b'<feedback xmlns:dmarc="urn:ietf:params:xml:ns:dmarc-2.0">')
    for packed, name in ((xml, "r.xml"), (gzip.compress(xml), "r.xml.gz"), (hostile.zip_of({"r.xml": xml}), "r.zip")):
        outcome = read(packed, name, Limits(max_records=5))
        assert isinstance(outcome, Rejected) and "6 records, over" in str(outcome), (spelling, name, outcome)
        assert not isinstance(read(packed, name, Limits(max_records=6)), Rejected) or spelling == b"<dmarc:record>"


# -- dates (medium 3) ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(hostile.date_cases(NOW)))
def test_forged_and_impossible_periods_are_refused(case):
    begin, end, accepted = hostile.date_cases(NOW)[case]
    outcome = read(hostile.report_xml(begin=begin, end=end, report_id=f"date-{case}"))
    if accepted:
        assert isinstance(outcome, NormalizedReport), outcome
    else:
        assert isinstance(outcome, Rejected) and "period" in str(outcome), outcome


# -- properties ----------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".xml", ".xml.gz", ".zip", ".eml", ".msg", ".json", ""]


@PROPERTY
@given(
    data=st.binary(max_size=4096),
    suffix=st.sampled_from(SUFFIXES),
    magic=st.sampled_from([b"", b"\x1f\x8b", b"PK\x03\x04", b"From: a@b\n"]),
)
def test_random_bytes_end_in_a_report_or_a_rejection(data, suffix, magic):
    read(magic + data, "random" + suffix)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        at = where % len(out)
        if kind == 0:
            out[at] ^= 1 << (value % 8)  # a bit flip
        elif kind == 1:
            del out[at:]  # truncation
        elif kind == 2:
            out[at:at] = bytes([value % 256]) * (1 + value % 7)  # an insertion
        else:
            del out[at : at + 1 + value % 64]  # a deletion
    return bytes(out)


@PROPERTY
@given(
    sample=st.sampled_from(sorted(SAMPLE_BYTES)),
    packing=st.sampled_from(["as-is", "gzip", "zip", "eml"]),
    edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.integers(0, 255)), max_size=6),
)
def test_mutated_real_samples_end_in_a_report_or_a_rejection(sample, packing, edits):
    data = SAMPLE_BYTES[sample]
    if packing == "gzip":
        data = gzip.compress(data, mtime=0)
    elif packing == "zip":
        data = hostile.zip_of({"report.xml": data})
    elif packing == "eml":
        data = hostile.email_of(hostile.attachment(gzip.compress(data, mtime=0)))
    read(_mutate(data, edits), sample + {"as-is": "", "gzip": ".gz", "zip": ".zip", "eml": ".eml"}[packing])


# A generated tree: leaves are reports, broken reports or bytes; inner nodes gzip, zip, a MIME
# multipart, a forwarded message/rfc822 or a transfer encoding. Rendered as an e-mail or a file.
GOOD = hostile.report_xml(report_id="tree")
leaves = st.one_of(
    st.just(("xml", GOOD)),
    st.just(("xml", GOOD[: len(GOOD) // 2])),
    st.binary(max_size=256).map(lambda b: ("bin", b)),
    st.sampled_from(sorted(hostile.archive_shapes(GOOD))).map(lambda n: ("bin", hostile.archive_shapes(GOOD)[n])),
)


def _as_part(node: tuple[str, object]) -> str:
    kind, value = node
    if kind == "mime":
        return value
    if kind == "message":
        return "Content-Type: message/rfc822\n\n" + hostile.HEAD + value
    return hostile.attachment(value, "report.bin", "application/octet-stream")


def _extend(children):
    def gz(node):
        return ("bin", gzip.compress(_bytes(node), mtime=0))

    def zp(nodes):
        return ("bin", hostile.zip_of({f"m{i}.xml": _bytes(n) for i, n in enumerate(nodes)}))

    def mixed(nodes):
        return ("mime", hostile.multipart(*[_as_part(n) for n in nodes], boundary=f"b{len(nodes)}x{id(nodes) % 997}"))

    def forwarded(node):
        return ("message", _as_part(node))

    def quoted(node):
        raw = _bytes(node)
        return (
            "mime",
            "Content-Type: application/gzip\nContent-Transfer-Encoding: base64\n\n" + base64.b64encode(raw).decode(),
        )

    return st.one_of(
        children.map(gz),
        st.lists(children, min_size=1, max_size=3).map(zp),
        st.lists(children, min_size=1, max_size=4).map(mixed),
        children.map(forwarded),
        children.map(quoted),
    )


def _bytes(node) -> bytes:
    kind, value = node
    if kind in {"mime", "message"}:
        return (hostile.HEAD + _as_part(node)).encode("utf-8", errors="surrogateescape")
    return value


trees = st.recursive(leaves, _extend, max_leaves=12)


@PROPERTY
@given(tree=trees)
def test_generated_archive_and_mime_trees_end_in_a_report_or_a_rejection(tree):
    kind = tree[0]
    data = _bytes(tree)
    name = "tree.eml" if kind in {"mime", "message"} else "tree.bin"
    read(data, name)
    if kind in {"mime", "message"}:
        read(data, "tree.xml")  # an e-mail under a report's name: the headers still make it one


def test_a_zip_holding_a_directory_and_a_report_is_still_read():
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.xml", GOOD)
    outcome = read(packed.getvalue(), "ok.zip")
    assert isinstance(outcome, NormalizedReport) and len(outcome.records) == 1


@pytest.mark.parametrize("trailer", [b"\x00garbage after the stream", b"\x00" * 512, b"\r\n--boundary--\r\n"])
def test_bytes_after_a_gzip_stream_are_tolerated_as_parsedmarc_tolerates_them(trailer):
    """A real report e-mail's gzip attachment may carry bytes after the end of its stream (issue
    #23): the checks read the stream and stop there, as parsedmarc does, instead of calling the
    archive damaged."""
    packed = gzip.compress(GOOD, mtime=0) + trailer
    for data, name in ((packed, "r.xml.gz"), (hostile.email_of(hostile.attachment(packed)), "r.eml")):
        outcome = read(data, name)
        assert isinstance(outcome, NormalizedReport) and len(outcome.records) == 1, outcome
