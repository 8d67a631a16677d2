"""The streaming reader gives parsedmarc's answer (issue #23): both run over every shared sample,
the mail shapes, the hostile corpora and generated reports of every shape the RFCs and mail
gateways produce; report identity, period and every normalized record field by field agree, or
both refuse. parsedmarc is the oracle here and the reader's fallback for what it does not handle."""

from __future__ import annotations

import datetime as dt
import email.message
import gzip
import io
import json
import logging
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest

from pipeline.collector import inputs, stream
from pipeline.collector.generate import generate_reports, mail_shapes
from pipeline.collector.inputs import _HEADER_LINE, Rejected, read_report
from pipeline.collector.normalize import LineEncoder, SharedRecords, normalize
from pipeline_tests.security import hostile
from pipeline_tests.support import SAMPLES

BEGIN = int(dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp())
BOM = b"\xef\xbb\xbf"
# Archives as mail systems make them, which parsedmarc does not read whole (issue #23): the
# reader reads them as parsedmarc reads the report they carry.
CARRIES = {
    "shape/prepended.zip": "shape/rfc7489.xml",
    "shape/appended.zip": "shape/rfc7489.xml",
    "shape/gzip-trailing-bytes.xml.gz": "shape/rfc7489.xml",
    "shape/gzip-members.xml.gz": "shape/rfc7489.xml",
}
# Where the reader is deliberately better than parsedmarc: a byte-order mark before the XML
# declaration (mail_shapes' byte-order-mark.xml, as Windows tools write it) is "not a recognized
# report format" to parsedmarc; the reader reads it as parsedmarc reads the file without it.


def _record(n: int, *, upper: bool = False, optional: bool = True, auth: int = 1, reason: bool = False) -> str:
    word = str.upper if upper else str
    dkim = "".join(
        f"<dkim><domain>d{k}.example</domain>{'<selector>s1</selector>' if optional else ''}"
        f"<result>{word('pass' if k else 'fail')}</result></dkim>"
        for k in range(auth)
    )
    spf = "".join(
        f"<spf><domain>bounce{k}.example</domain>{'<scope>mfrom</scope>' if optional else ''}"
        f"<result>{word('softfail' if k else 'pass')}</result></spf>"
        for k in range(auth)
    )
    why = "<reason><type>forwarded</type><comment>list</comment></reason>" if reason else ""
    return (
        f"<record><row><source_ip>{'2001:db8::' if n % 2 else '198.51.100.'}{n % 250 + 1}</source_ip>"
        f"<count>{n + 1}</count><policy_evaluated><disposition>{word('none')}</disposition>"
        f"<dkim>{word('pass')}</dkim><spf>{word('fail')}</spf>{why}</policy_evaluated></row>"
        f"<identifiers><header_from>{word('Example.COM')}</header_from>"
        + ("<envelope_from>bounce.example</envelope_from><envelope_to>rcpt.example</envelope_to>" if optional else "")
        + f"</identifiers><auth_results>{dkim}{spf}</auth_results></record>"
    )


def _feedback(records: str, *, policy: str = "", metadata: str = "", root: str = "<feedback>", end: int = 86_399):
    policy = policy or "<adkim>s</adkim><aspf>r</aspf><p>quarantine</p><sp>reject</sp><pct>50</pct>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{root}<version>1.0</version><report_metadata>'
        f"<org_name>mail.receiver.example</org_name><email>dmarc@receiver.example</email>"
        f"<report_id>&lt;id-1@receiver.example&gt;</report_id>{metadata}"
        f"<date_range><begin>{BEGIN}</begin><end>{BEGIN + end}</end></date_range></report_metadata>"
        f"<policy_published><domain>example.com</domain>{policy}</policy_published>{records}"
        f"</{root.strip('<>').split()[0]}>"
    ).encode()


def shapes() -> dict[str, bytes]:
    """Generated reports of the shapes the RFCs and the receivers produce."""
    many = "".join(_record(n) for n in range(40))
    out = {
        "rfc7489.xml": _feedback(many),
        "upper-case-values.xml": _feedback("".join(_record(n, upper=True) for n in range(5))),
        "missing-optional-fields.xml": _feedback(
            "".join(_record(n, optional=False) for n in range(5)), policy="<p>none</p>"
        ),
        "several-auth-results.xml": _feedback("".join(_record(n, auth=3) for n in range(5))),
        "override-reasons.xml": _feedback("".join(_record(n, reason=True) for n in range(5))),
        "no-auth-results.xml": _feedback(_record(1).replace("<auth_results>", "<auth_results><x/>")),
        "dmarcbis-rfc9990.xml": _feedback(
            many,
            policy="<p>reject</p><np>reject</np><testing>n</testing><discovery_method>treewalk</discovery_method>",
            metadata="<generator>receiver 2.0</generator>",
            root='<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">',
        ),
        "error-element.xml": _feedback(many, metadata="<error>a record was truncated</error>"),
        "three-day-span.xml": _feedback("".join(_record(n) for n in range(4)), end=3 * 86_400 - 1),
        "latin-1-declared.xml": _feedback(_record(3))
        .replace(b"UTF-8", b"ISO-8859-1")
        .replace(b"mail.receiver.example", b"R\xe9cepteur Mail"),
        "bad-records-among-good.xml": _feedback(
            _record(1) + _record(2).replace("198.51.100.3", "") + _record(4).replace("<count>5</count>", "")
        ),
        "comments-and-pis.xml": _feedback(many).replace(b"<record>", b"<!-- r --><?pi x?><record>", 3),
        "one-bad-record.xml": _feedback(_record(1).replace("<count>2</count>", "<count>x</count>")),
        "no-records.xml": _feedback(""),
        "not-feedback.xml": b"<?xml version='1.0'?><html><body>hello</body></html>",
    }
    doc = out["rfc7489.xml"].decode()
    meta = doc[doc.index("<report_metadata>") : doc.index("</report_metadata>") + len("</report_metadata>")]
    out["metadata-after-records.xml"] = doc.replace(meta, "").replace("</feedback>", meta + "</feedback>").encode()
    for name in list(out):
        out[name.replace(".xml", ".xml.gz")] = gzip.compress(out[name], mtime=0)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.xml", out["rfc7489.xml"])
    out["prepended.zip"] = b"MZ self-extractor stub " * 40 + zipped.getvalue()
    out["appended.zip"] = zipped.getvalue() + b"\r\n-- trailing bytes a gateway added --\r\n"
    out["gzip-trailing-bytes.xml.gz"] = gzip.compress(out["rfc7489.xml"], mtime=0) + b"\x00\x00garbage\n"
    half = len(out["rfc7489.xml"]) // 2
    out["gzip-members.xml.gz"] = gzip.compress(out["rfc7489.xml"][:half], mtime=0) + gzip.compress(
        out["rfc7489.xml"][half:], mtime=0
    )
    return out


def corpus(tmp: Path) -> dict[str, bytes]:
    cases = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.is_file() and p.name != "NOTICE"}
    for sample in ("example.net!example.com!1529366400!1529452799.xml", "rfc9990-sample.xml"):
        shaped = mail_shapes((SAMPLES / sample).read_bytes())
        cases.update({f"mail/{sample[:12]}/{n}": d for n, d in shaped.items()})
    cases.update(hostile.field_cases())
    cases.update({f"archive/{n}": d for n, d in hostile.archive_shapes().items()})
    cases.update({f"mime/{n}": d for n, d in hostile.mime_shapes().items()})
    cases.update({f"shape/{n}": d for n, d in shapes().items()})
    for report in generate_reports(tmp / "generated", 2, 12, seed=23, records_per_report=(1, 60)):
        path = Path(report.path)
        cases[f"generated/{path.name}"] = path.read_bytes()
    return cases


def theirs(data: bytes):
    import parsedmarc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parsedmarc.parse_report_file(data, offline=True, always_use_local_files=True)
        if parsed.get("report_type") != "aggregate":
            return None
        return normalize(parsed["report"], "acme")
    except Exception:
        return None


def ours(data: bytes, name: str):
    """The reader's own answer: a report, None (refused), or "unhandled" (parsedmarc's to read)."""
    is_email = name.endswith((".eml", ".msg")) or bool(_HEADER_LINE.match(data))
    try:
        return stream.read(data, name, "acme", 200 * 1024 * 1024, is_email)
    except stream.Unhandled:
        return "unhandled"
    except Exception:
        return None


def _lines(report) -> str:
    return gzip.decompress(report.body()).decode()


def _reference_lines(records) -> str:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)


def test_the_line_encoder_writes_what_json_dumps_writes():
    """The body's template encoder against json.dumps, on values a hostile report can carry and
    on records of another shape than the report's."""
    common = {"customer_id": "acme", "report_org": 'o"r%g\\', "report_begin": dt.datetime(2020, 1, 1), "pct": 50}
    odd = ["%s", "%(x)s", '"', "\\", "é日本", "\ud800", "\x00", "", " a ", "\u2028", "%%"]
    records = []
    for n, text in enumerate(odd):
        own = {"record_index": n, "source_ip": text, "header_from": None, "message_count": n * 7, "x%s": text}
        records.append({**common, **own})
    records.append(
        {
            **common,
            "record_index": 99,
            "source_ip": True,
            "header_from": 1.5,
            "message_count": [1, {"a": None}],
            "x%s": {},
        }
    )
    records.append(
        {**common, "record_index": 1, "source_ip": "a", "header_from": None, "message_count": 1}
    )  # a key short
    records.append({**records[0], "extra": "e"})  # a key more
    records.append({k: v for k, v in records[0].items() if k != "pct"} | {"other": 50})  # a common key swapped
    encoder = LineEncoder(common)
    assert encoder.encode(records) == _reference_lines(records)
    assert encoder.encode(records[::-1]) == _reference_lines(records[::-1])  # the template from another record
    assert LineEncoder(None).encode(records) == _reference_lines(records)
    assert LineEncoder(common).encode([]) == ""
    # the reader's records: own fields beside the common ones, merged only when looked at
    owns = [{k: v for k, v in r.items() if k not in common or k == "pct"} for r in records]
    shared = SharedRecords(common, owns)
    assert list(shared) == [{**common, **own} for own in owns] and len(shared) == len(records)
    assert LineEncoder(common).encode(shared) == _reference_lines(list(shared))
    assert LineEncoder(common).encode(SharedRecords(common, owns[::-1])) == _reference_lines(list(shared)[::-1])
    assert LineEncoder(common).encode(SharedRecords(common, [])) == ""


def test_the_reader_and_parsedmarc_agree_field_by_field(tmp_path):
    logging.disable(logging.WARNING)
    try:
        cases = corpus(tmp_path)
        mismatches, read, fallbacks = [], 0, []
        for name, data in cases.items():
            expected, got = theirs(cases[CARRIES[name]] if name in CARRIES else data), ours(data, name)
            if data.startswith(BOM):
                assert expected is None, f"{name}: parsedmarc reads a byte-order mark now"
                expected = theirs(data[len(BOM) :])
            if got == "unhandled":
                fallbacks.append(name)
                continue
            if (expected is None) != (got is None):
                mismatches.append(f"{name}: parsedmarc {'refused' if expected is None else 'read'} it, the reader not")
                continue
            if expected is None:
                continue
            read += 1
            for attribute in ("report_org", "report_id", "begin"):
                a, b = getattr(expected, attribute), getattr(got, attribute)
                if a != b:
                    mismatches.append(f"{name}: {attribute} {a!r} != {b!r}")
            if len(expected.records) != len(got.records):
                mismatches.append(f"{name}: {len(expected.records)} records != {len(got.records)}")
            if _lines(got) != _reference_lines(got.records) or _lines(expected) != _reference_lines(expected.records):
                mismatches.append(f"{name}: the body's lines are not json.dumps of its records")
            for index, (a, b) in enumerate(zip(expected.records, got.records, strict=False)):
                if a.keys() != b.keys():
                    mismatches.append(f"{name} record {index}: keys {sorted(a.keys() ^ b.keys())} differ")
                for key in a:
                    if a[key] != b[key]:
                        mismatches.append(f"{name} record {index} {key}: {a[key]!r} != {b[key]!r}")
            if bool(expected.problems) != bool(got.problems):
                mismatches.append(f"{name}: problems {expected.problems} != {got.problems}")
    finally:
        logging.disable(logging.NOTSET)
    assert not mismatches, "\n".join(mismatches[:40])
    assert read >= 300  # the corpus is read, not refused wholesale
    # What the reader hands to parsedmarc: no real sample (but the empty one), no generated shape,
    # no mail shape; only broken archives and e-mails, which parsedmarc refuses too.
    samples = {p.name for p in SAMPLES.iterdir()} - {"empty.xml"}
    assert not [n for n in fallbacks if n.startswith(("generated/", "shape/", "mail/")) or n in samples], fallbacks


@pytest.mark.parametrize("name", ["gzip-trailing-bytes.xml.gz", "gzip-members.xml.gz", "prepended.zip", "appended.zip"])
def test_archives_as_mail_systems_make_them_are_read_whole(name):
    data = shapes()[name]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        report = read_report(path, "acme")
    assert len(report.records) == 40 and report.reader == "stream"
    assert report.messages == sum(range(1, 41))


def test_a_shape_the_reader_does_not_handle_falls_back_to_parsedmarc_counted(tmp_path, caplog):
    """An SMTP TLS report (JSON) is no XML: parsedmarc reads it and says what it is."""
    path = tmp_path / "tls.json"
    path.write_text('{"organization-name": "r", "date-range": {}, "report-id": "x", "policies": []}')
    before = inputs.READS["parsedmarc"]
    with caplog.at_level(logging.INFO, logger="pipeline.collector.inputs"), pytest.raises(Rejected):
        read_report(path, "acme")
    assert inputs.READS["parsedmarc"] == before + 1
    assert any("reader=parsedmarc" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_the_fallback_reads_no_more_records_than_parsedmarc_holds_in_memory(tmp_path, monkeypatch):
    """parsedmarc builds the whole document: a shape only it reads (here an e-mail whose XML
    attachment opens with a long comment, past where the reader looks for a report) is read by it
    up to FALLBACK_MAX_RECORDS, and refused by name past that, whatever --max-records allows."""
    xml = hostile.report_xml(records=6, report_id="late-feedback")
    xml = xml.replace(b"<feedback>", b"<!--" + b" " * 5000 + b"--><feedback>", 1)
    message = email.message.EmailMessage()
    message["From"], message["To"], message["Subject"] = "r@example.org", "dmarc@acme.example", "Report"
    message.set_content("report attached")
    message.add_attachment(xml, maintype="text", subtype="xml", filename="report.xml")
    path = tmp_path / "late.eml"
    path.write_bytes(message.as_bytes())
    monkeypatch.setattr(inputs, "FALLBACK_MAX_RECORDS", 5)
    before = inputs.READS["parsedmarc"]
    with pytest.raises(Rejected, match=r"at 6 records it is over the 5 that parsedmarc"):
        read_report(path, "acme")
    assert inputs.READS["parsedmarc"] == before  # parsedmarc never saw it
    monkeypatch.setattr(inputs, "FALLBACK_MAX_RECORDS", 6)
    report = read_report(path, "acme")
    assert report.reader == "parsedmarc" and len(report.records) == 6
    assert inputs.READS["parsedmarc"] == before + 1


def test_a_spilled_report_is_the_same_report_and_a_refused_one_leaves_nothing(tmp_path, monkeypatch):
    """Past SPILL_RECORDS the records go to disk as they are read: the same records, count,
    messages and body bytes as in memory; a report refused half way leaves no file behind."""
    data = shapes()["rfc7489.xml.gz"]
    kept = stream.read(data, "kept", "acme", 1 << 30, False, spill_dir=tmp_path)
    monkeypatch.setattr(stream, "SPILL_RECORDS", 7)
    spilled = stream.read(data, "spilled", "acme", 1 << 30, False, spill_dir=tmp_path)
    assert kept.spilled is None and spilled.spilled is not None and spilled.spilled.parent == tmp_path
    assert len(spilled.records) == len(kept.records) == 40 and spilled.messages == kept.messages
    assert list(spilled.records) == kept.records and spilled.records[0] == kept.records[0]
    assert spilled.records[39] == kept.records[39] and spilled.records[-1] == kept.records[-1]
    assert spilled.body() == kept.body() and spilled.body_digest() == kept.body_digest()
    spilled.discard()
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(stream, "CHUNK", 256)  # the refusal comes after records were spilled
    with pytest.raises(stream.Refused, match="expands past"):
        stream.read(data, "bomb", "acme", len(gzip.decompress(data)) - 100, False, spill_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_well_formed_report_is_read_once_and_a_damaged_one_again_recovering(tmp_path, monkeypatch):
    """A well-formed report is parsed once, by lxml alone; a damaged copy (here truncated after
    records were spilled) is read again from its start, lxml recovering and expat saying it is
    damaged, and the first attempt's spilled body is gone."""
    strict_expat = []
    real = stream.expat.ParserCreate
    monkeypatch.setattr(stream.expat, "ParserCreate", lambda *a: strict_expat.append(a) or real(*a))
    data = gzip.decompress(shapes()["rfc7489.xml.gz"])
    whole = stream.read(data, "whole", "acme", 1 << 30, False)
    assert not strict_expat and not whole.problems and len(whole.records) == 40

    monkeypatch.setattr(stream, "SPILL_RECORDS", 7)
    cut = data[: data.rindex(b"<record>")]  # the last record and the closing tags lost
    damaged = stream.read(cut, "cut", "acme", 1 << 30, False, spill_dir=tmp_path)
    assert len(strict_expat) == 1 and damaged.problems and damaged.problems[0].startswith("Invalid XML")
    assert list(damaged.records) == list(whole.records)[:-1]
    assert list(tmp_path.iterdir()) == [damaged.spilled]  # the strict attempt's body was discarded


def test_base_domains_are_parsedmarcs():
    """The reader's org names without importing parsedmarc: its get_base_domain's answer, the
    PSL overrides included, on names of every kind."""
    from parsedmarc.utils import get_base_domain, psl_overrides

    names = [
        "google.com",
        "Mail.Google.COM",
        "example.co.uk",
        "a.b.example.co.uk",
        "localhost",
        "com",
        "",
        "x.123hjemmeside.dk",
        "123hjemmeside.dk",
        "host-applefibernet.com",
        "applefibernet.com",
        "user.github.io",
        "xn--bcher-kva.example",
        "receiver.",
        "a..b",
        "日本.jp",
    ]
    names += [f"mail{o}" for o in psl_overrides[::25]] + [o.strip(".-") for o in psl_overrides[::40]]
    for name in names:
        assert stream._base_domain(name) == get_base_domain(name), name
