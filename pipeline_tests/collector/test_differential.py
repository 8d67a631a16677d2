"""The collector accepts what parsedmarc accepts: parsedmarc itself and `pipeline collect`'s reader
over one corpus (the shared samples and the shapes mail systems deliver), the same reports,
records and messages for every file, except the files the collector's safety checks refuse,
each listed here with its reason, and a byte-order mark, which parsedmarc refuses and the
collector reads. (Field by field, over a larger corpus: test_stream_differential.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.collector.generate import mail_shapes
from pipeline.collector.inputs import Rejected, read_report
from pipeline_tests.support import SAMPLES, parsedmarc_aggregate

# File -> why the collector refuses what parsedmarc reads. Empty today: every refusal of the
# safety checks (size, ratio, DTD) is tested on hostile files in test_collect.py.
SAFETY_REJECTIONS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def every_sample(monkeypatch):
    """Reading is compared, not policy: the calendar from 1970 (rfc9990-sample.xml is of 1979)."""
    monkeypatch.setenv("PIPELINE_FIRST_DAY", "1970-01-01")


SHAPE_SOURCE = "usssa.com!example.com!1538784000!1538870399.xml"  # two records, real


def corpus(folder: Path) -> list[Path]:
    files = [p for p in sorted(SAMPLES.iterdir()) if p.name != "NOTICE"]
    for name, data in mail_shapes((SAMPLES / SHAPE_SOURCE).read_bytes()).items():
        (folder / name).write_bytes(data)
        files.append(folder / name)
    return files


def parsedmarc_reads(path: Path):
    """(report id, records, messages), or None where parsedmarc finds no aggregate report."""
    parsed = parsedmarc_aggregate(path)
    if parsed is None:
        return None
    report = parsed["report"]
    records = report.get("records") or []
    return str(report["report_metadata"]["report_id"]), len(records), sum(r.get("count") or 0 for r in records)


def test_the_collector_reads_what_parsedmarc_reads(tmp_path):
    files = corpus(tmp_path)
    assert len(files) >= 25 and any(p.suffix == ".eml" for p in files)
    disagreements = []
    for path in files:
        theirs = parsedmarc_reads(path)
        if path.read_bytes().startswith(b"\xef\xbb\xbf"):  # parsedmarc refuses a byte-order mark ...
            assert theirs is None
            bare = tmp_path / f"bare-{path.name}"
            bare.write_bytes(path.read_bytes()[3:])
            theirs = parsedmarc_reads(bare)  # ... the collector reads the report as it reads it without one
        try:
            report = read_report(path, "differential")
            ours = (report.report_id, len(report.records), report.messages)
        except Rejected as exc:
            assert str(path) in str(exc), f"a rejection must name its file: {exc}"
            ours = None
            if path.name in SAFETY_REJECTIONS:
                continue
        if ours != theirs:
            disagreements.append(f"{path.name}: collector {ours}, parsedmarc {theirs}")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("name", ["single-part-gzip.eml", "forwarded.eml", "zip-named.xml.gz", "crlf.eml"])
def test_each_mail_shape_is_collected(tmp_path, name):
    """The shapes alone, so that a regression names its shape."""
    data = mail_shapes((SAMPLES / SHAPE_SOURCE).read_bytes())[name]
    path = tmp_path / name
    path.write_bytes(data)
    report = read_report(path, "shape")
    assert (len(report.records), report.messages) == (2, parsedmarc_reads(path)[2])
