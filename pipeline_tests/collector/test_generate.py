"""The synthetic report generator writes what it means to write."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pipeline.collector.generate import PROVIDERS, SPOOFERS, _ip_reader, generate_reports
from pipeline.collector.inputs import read_report


def test_generated_reports_parse_back_to_the_manifest(tmp_path):
    generated = generate_reports(tmp_path, customers=2, reports=6, seed=7, start=dt.date(2026, 10, 1))
    assert len(generated) == 12
    assert {Path(r.path).suffix for r in generated} == {".zip", ".gz", ".xml"}
    for meant in generated:
        got = read_report(Path(meant.path), meant.customer_id)
        assert got.problems == []
        # parsedmarc lower-cases org names that look like domains ("Mail.Ru" -> "mail.ru").
        assert (got.report_org.lower(), got.report_id) == (meant.org_name.lower(), meant.report_id)
        assert int(got.begin.timestamp()) == meant.begin
        assert len(got.records) == len(meant.records)
        for record, expected in zip(got.records, meant.records, strict=True):
            assert record["source_ip"] == expected.source_ip
            assert record["message_count"] == expected.count
            assert record["disposition"] == expected.disposition
            assert (record["policy_dkim"], record["policy_spf"]) == (expected.policy_dkim, expected.policy_spf)
            assert json.loads(record["dkim_auth"]) == expected.dkim
            assert [{k: v for k, v in s.items()} for s in json.loads(record["spf_auth"])] == expected.spf
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["report_id"] for m in manifest] == [r.report_id for r in generated]


def test_same_seed_same_reports(tmp_path):
    a = generate_reports(tmp_path / "a", 1, 4, seed=3)
    b = generate_reports(tmp_path / "b", 1, 4, seed=3)
    assert [Path(r.path).read_bytes() for r in a] == [Path(r.path).read_bytes() for r in b]
    c = generate_reports(tmp_path / "c", 1, 4, seed=4)
    assert [r.report_id for r in a] != [r.report_id for r in c]


def test_sources_come_from_the_providers_networks(tmp_path):
    generated = generate_reports(tmp_path, 3, 8, seed=11)
    reader = _ip_reader()
    as_domains = {s["as_domain"] for s in [*PROVIDERS.values(), *SPOOFERS.values()]} | {"comcast.com"}
    kinds = set()
    for report in generated:
        for record in report.records:
            kinds.add(record.kind)
            assert reader.get(record.source_ip)["as_domain"] in as_domains
    assert kinds == {"authorized", "forwarder", "misconfigured", "spoof"}
