"""Synthetic, RFC 7489-valid DMARC aggregate reports with a realistic mix of senders.

Each customer owns a domain and sends through real providers; every report (one reporter, one
day, one domain) holds records of these kinds:

* ``authorized``: the customer's own providers (Google Workspace, Microsoft 365, Amazon SES,
  SendGrid): SPF and DKIM pass and align;
* ``forwarder``: mail re-sent by a forwarder (a mailbox provider or an ISP): SPF fails, the DKIM
  signature survives;
* ``misconfigured``: a provider sending for the customer under its own domains: both pass,
  neither aligns;
* ``spoof``: hosting networks claiming the customer's domain: nothing passes.

Source addresses are drawn from each provider's network as the IP data shipped with parsedmarc
(ipinfo lite) records it: candidates from the providers' known mail ranges are kept only when
that database names the expected AS domain. Deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import ipaddress
import json
import random
import zipfile
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

PROVIDERS: dict[str, dict] = {
    # name: AS domain in ipinfo lite, candidate networks, DKIM/SPF domains when not aligned
    "google": {
        "as_domain": "google.com",
        "nets": ["209.85.128.0/17", "74.125.0.0/16", "108.177.8.0/21"],
        "own_domain": "google.com",
    },
    "microsoft": {
        "as_domain": "microsoft.com",
        "nets": ["40.92.0.0/15", "40.107.0.0/16", "52.100.0.0/14"],
        "own_domain": "outlook.com",
    },
    "amazonses": {
        "as_domain": "amazon.com",
        "nets": ["54.240.0.0/18", "23.251.224.0/19"],
        "own_domain": "amazonses.com",
    },
    "sendgrid": {
        "as_domain": "sendgrid.com",
        "nets": ["167.89.0.0/17", "149.72.0.0/16", "50.31.32.0/19"],
        "own_domain": "sendgrid.net",
    },
}
FORWARDERS = {
    "comcast": {"as_domain": "comcast.com", "nets": ["96.114.0.0/16", "69.252.0.0/16"]},
    "google": PROVIDERS["google"],
}
SPOOFERS = {
    "ovh": {"as_domain": "ovhcloud.com", "nets": ["51.68.0.0/16", "54.36.0.0/16"]},
    "digitalocean": {"as_domain": "digitalocean.com", "nets": ["159.65.0.0/16", "167.99.0.0/16"]},
    "hetzner": {"as_domain": "hetzner.de", "nets": ["88.198.0.0/16", "78.46.0.0/15"]},
}
REPORTERS = [
    ("google.com", "noreply-dmarc-support@google.com", "zip"),
    ("Enterprise Outlook", "dmarcreport@microsoft.com", "gz"),
    ("Yahoo", "dmarchelp@yahooinc.com", "xml"),
    ("Mail.Ru", "dmarc_support@corp.mail.ru", "xml"),
]
KINDS = ["authorized", "authorized", "authorized", "forwarder", "misconfigured", "spoof"]


@cache
def _ip_reader():
    import maxminddb
    from parsedmarc.resources import ipinfo

    return maxminddb.open_database(str(Path(ipinfo.__file__).parent / "ipinfo_lite.mmdb"))


def _ip_in(rng: random.Random, spec: dict, tries: int = 64) -> str:
    """A random address of ``spec``'s networks that the shipped IP data attributes to it."""
    reader = _ip_reader()
    for _ in range(tries):
        net = ipaddress.ip_network(rng.choice(spec["nets"]))
        ip = str(net[rng.randrange(1, net.num_addresses - 1)])
        record = reader.get(ip) or {}
        if record.get("as_domain") == spec["as_domain"]:
            return ip
    raise LookupError(f"no address of {spec['nets']} is attributed to {spec['as_domain']} by the IP data")


@dataclass
class ExpectedRecord:
    kind: str
    source_ip: str
    count: int
    disposition: str
    policy_dkim: str
    policy_spf: str
    header_from: str
    envelope_from: str
    dkim: list[dict]
    spf: list[dict]


@dataclass
class GeneratedReport:
    path: str
    customer_id: str
    org_name: str
    report_id: str
    domain: str
    begin: int
    end: int
    policy: str
    records: list[ExpectedRecord] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.records)


def _record(rng: random.Random, kind: str, domain: str, policy: str) -> ExpectedRecord:
    count = max(1, int(rng.lognormvariate(3, 1.2)))
    if kind == "authorized":
        name = rng.choice(list(PROVIDERS))
        ip = _ip_in(rng, PROVIDERS[name])
        env = f"bounce.{domain}" if name in {"amazonses", "sendgrid"} else domain
        dkim = [{"domain": domain, "selector": f"{name}1", "result": "pass"}]
        spf = [{"domain": env, "scope": "mfrom", "result": "pass"}]
        return ExpectedRecord(kind, ip, count, "none", "pass", "pass", domain, env, dkim, spf)
    if kind == "forwarder":
        name = rng.choice(list(FORWARDERS))
        ip = _ip_in(rng, FORWARDERS[name])
        dkim = [{"domain": domain, "selector": "google1", "result": "pass"}]
        spf = [{"domain": domain, "scope": "mfrom", "result": rng.choice(["fail", "softfail"])}]
        return ExpectedRecord(kind, ip, count, "none", "pass", "fail", domain, domain, dkim, spf)
    if kind == "misconfigured":
        name = rng.choice(["sendgrid", "amazonses"])
        own = PROVIDERS[name]["own_domain"]
        ip = _ip_in(rng, PROVIDERS[name])
        dkim = [{"domain": own, "selector": "s1", "result": "pass"}]
        spf = [{"domain": own, "scope": "mfrom", "result": "pass"}]
        disposition = "none" if policy == "none" else policy
        return ExpectedRecord(kind, ip, count, disposition, "fail", "fail", domain, own, dkim, spf)
    name = rng.choice(list(SPOOFERS))
    ip = _ip_in(rng, SPOOFERS[name])
    spf = [{"domain": domain, "scope": "mfrom", "result": rng.choice(["fail", "softfail", "none"])}]
    dkim = [] if rng.random() < 0.7 else [{"domain": domain, "selector": "x", "result": "fail"}]
    disposition = "none" if policy == "none" else policy
    return ExpectedRecord(kind, ip, count, disposition, "fail", "fail", domain, domain, dkim, spf)


def report_xml(report: GeneratedReport, email: str) -> str:
    records = []
    for r in report.records:
        dkim = "".join(
            f"<dkim><domain>{escape(d['domain'])}</domain><selector>{escape(d['selector'])}</selector>"
            f"<result>{d['result']}</result></dkim>"
            for d in r.dkim
        )
        spf = "".join(
            f"<spf><domain>{escape(s['domain'])}</domain><scope>{s['scope']}</scope>"
            f"<result>{s['result']}</result></spf>"
            for s in r.spf
        )
        records.append(
            f"<record><row><source_ip>{r.source_ip}</source_ip><count>{r.count}</count>"
            f"<policy_evaluated><disposition>{r.disposition}</disposition><dkim>{r.policy_dkim}</dkim>"
            f"<spf>{r.policy_spf}</spf></policy_evaluated></row>"
            f"<identifiers><header_from>{escape(r.header_from)}</header_from>"
            f"<envelope_from>{escape(r.envelope_from)}</envelope_from></identifiers>"
            f"<auth_results>{dkim}{spf}</auth_results></record>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<feedback><version>1.0</version>'
        f"<report_metadata><org_name>{escape(report.org_name)}</org_name><email>{escape(email)}</email>"
        f"<report_id>{escape(report.report_id)}</report_id>"
        f"<date_range><begin>{report.begin}</begin><end>{report.end}</end></date_range></report_metadata>"
        f"<policy_published><domain>{escape(report.domain)}</domain><adkim>r</adkim><aspf>r</aspf>"
        f"<p>{report.policy}</p><sp>{report.policy}</sp><pct>100</pct></policy_published>"
        + "".join(records)
        + "</feedback>\n"
    )


def _write(path: Path, xml: str, packaging: str) -> Path:
    data = xml.encode()
    if packaging == "gz":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    elif packaging == "zip":
        path = path.with_suffix(".zip")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            info = zipfile.ZipInfo(path.with_suffix(".xml").name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(data)
    return path


def generate_reports(
    out_dir: Path,
    customers: int,
    reports: int,
    seed: int = 0,
    start: dt.date | None = None,
    records_per_report: tuple[int, int] = (3, 12),
    per_day: int | None = None,
) -> list[GeneratedReport]:
    """Write ``reports`` reports for each of ``customers`` customers; return what was meant.
    ``start``: the first reports' day (default: so that the last ones are of yesterday, as a
    mailbox holds them; the collector refuses reports dated after tomorrow). ``per_day``: reports
    of one customer a day (default: one per reporter)."""
    rng = random.Random(seed)
    per_day = per_day or len(REPORTERS)
    if start is None:
        days = -(-reports // per_day)
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    generated: list[GeneratedReport] = []
    for c in range(customers):
        customer_id = f"customer-{c + 1:03d}"
        domain = f"{customer_id}.example"
        policy = rng.choice(["none", "quarantine", "reject"])
        folder = out_dir / customer_id
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(reports):
            org, email, packaging = REPORTERS[n % len(REPORTERS)]
            day = start + dt.timedelta(days=n // per_day)
            begin = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
            report_id = f"{rng.getrandbits(64):016x}"
            report = GeneratedReport("", customer_id, org, report_id, domain, begin, begin + 86399, policy)
            for _ in range(rng.randint(*records_per_report)):
                report.records.append(_record(rng, rng.choice(KINDS), domain, policy))
            stem = f"{org.split()[0].lower()}!{domain}!{begin}!{begin + 86399}!{report_id}.xml"
            report.path = str(_write(folder / stem, report_xml(report, email), packaging))
            generated.append(report)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps([asdict(r) for r in generated], indent=1))
    return generated


def mail_shapes(xml: bytes, sender: str = "noreply-dmarc-support@google.com") -> dict[str, bytes]:
    """One report as the shapes mail systems deliver it: file name -> bytes. Single-part e-mails
    whose body is the attachment, zip named .gz and gzip named .zip, application/octet-stream
    parts, a report inside a forwarded message/rfc822, several reports in one e-mail, CRLF and
    LF line ends, a byte-order mark, upper-case extensions."""
    import base64

    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.xml", xml)
    gz, zp = gzip.compress(xml, mtime=0), packed.getvalue()

    def b64(data: bytes) -> str:
        return base64.encodebytes(data).decode()

    head = (
        f"From: {sender}\nTo: dmarc-rua@example.com\nSubject: Report Domain: example.com\n"
        "Date: Mon, 01 Oct 2018 00:00:00 +0000\nMessage-ID: <report@example.net>\nMIME-Version: 1.0\n"
    )

    def part(content_type: str, data: bytes, filename: str) -> str:
        return (
            f'Content-Type: {content_type}; name="{filename}"\nContent-Transfer-Encoding: base64\n'
            f'Content-Disposition: attachment; filename="{filename}"\n\n{b64(data)}'
        )

    def multipart(*parts: str) -> str:
        return 'Content-Type: multipart/mixed; boundary="b1"\n\n' + "".join(f"--b1\n{p}" for p in parts) + "--b1--\n"

    text = "Content-Type: text/plain\n\nThis is an aggregate report.\n"
    single_gz = head + part("application/gzip", gz, "example.com!report.xml.gz")
    forwarded = head + multipart(text, "Content-Type: message/rfc822\n\n" + single_gz)
    mails = {
        "single-part-gzip.eml": single_gz,
        "single-part-zip.eml": head + part("application/zip", zp, "example.com!report.zip"),
        "octet-stream.eml": head + multipart(text, part("application/octet-stream", gz, "report.xml.gz")),
        "forwarded.eml": forwarded,
        "two-reports.eml": head
        + multipart(part("application/gzip", gz, "a.xml.gz"), part("application/zip", zp, "b.zip")),
        "crlf.eml": single_gz.replace("\n", "\r\n"),
    }
    shapes = {name: body.encode() for name, body in mails.items()}
    shapes.update(
        {
            "zip-named.xml.gz": zp,
            "gzip-named.zip": gz,
            "UPPER-CASE.XML.GZ": gz,
            "crlf.xml": xml.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
            "byte-order-mark.xml": b"\xef\xbb\xbf" + xml,
        }
    )
    return shapes
