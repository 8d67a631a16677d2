"""The column-wise enrichment agrees with the first, row-wise one (kept as the oracle in
rowwise_transform.py), row for row and column for column: on generated reports, on the real
DMARC samples, and on records that must be rescued. And the model's column-wise category and
score agree with the scalar definitions of docs/MODEL.md on every feature combination."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.collector.generate import generate_reports
from pipeline.collector.inputs import read_report
from pipeline.enrich import model
from pipeline.enrich.transform import OUTPUT_COLUMNS, enrich_frame
from pipeline_tests.enrich import rowwise_transform
from pipeline_tests.support import SAMPLES


def raw_records(tmp_path: Path) -> list[dict]:
    records = []
    for report in generate_reports(tmp_path / "generated", 3, 6, seed=5, records_per_report=(5, 40)):
        records += read_report(Path(report.path), "acme").records
    for path in sorted(SAMPLES.iterdir()):
        try:
            records += read_report(path, "acme").records
        except Exception:  # the malformed samples: the collector rejects them, nothing to enrich
            continue
    hostile = dict(records[0])
    records += [
        {**hostile, "record_index": 900, "customer_id": ""},
        {**hostile, "record_index": 901, "report_org": None},
        {**hostile, "record_index": None},
        {**hostile, "record_index": 903, "source_ip": "not-an-ip"},
        {**hostile, "record_index": 904, "source_ip": None},
        {**hostile, "record_index": 905, "message_count": -3},
        {**hostile, "record_index": 906, "message_count": None},
        {**hostile, "record_index": 907, "report_begin": "yesterday"},
        {**hostile, "record_index": 908, "dkim_auth": None, "spf_auth": "[]"},
        {**hostile, "record_index": 909, "header_from": None, "policy_adkim": "s"},
        {**hostile, "record_index": 910, "source_ip": "2001:4860:4860::8888"},
    ]
    return records


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), None).reset_index(drop=True)


def test_the_vectorized_enrichment_agrees_with_the_row_wise_one(tmp_path):
    raw = pd.DataFrame(raw_records(tmp_path))
    assert len(raw) > 400
    fast = normalized(enrich_frame(raw))
    slow = normalized(rowwise_transform.enrich_frame(raw))
    assert list(fast.columns) == OUTPUT_COLUMNS
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert fast["rescue_reason"].notna().sum() == 8  # the hostile rows that cannot be enriched
    assert set(fast["sender_category"].dropna()) > {"authorized"}


def test_an_empty_batch_enriches_to_an_empty_frame():
    out = enrich_frame(pd.DataFrame(columns=["customer_id"]))
    assert out.empty and list(out.columns) == OUTPUT_COLUMNS


def test_column_wise_model_equals_the_scalar_model_on_every_combination():
    service_types = [None, "Email Provider", "Web Host", "ISP", "Marketing", "IaaS"]
    combos = [
        (*flags, service_type, known)
        for flags in itertools.product([False, True], repeat=6)
        for service_type in service_types
        for known in (False, True)
    ]
    names = ["dmarc_pass", "dkim_aligned", "spf_aligned", "dkim_pass", "spf_pass", "has_auth_results"]
    columns = {name: np.array([c[i] for c in combos]) for i, name in enumerate(names)}
    columns["service_type"] = np.array([c[6] for c in combos], dtype=object)
    columns["known_service"] = np.array([c[7] for c in combos])
    scalar = [model.Features(*c) for c in combos]
    assert list(model.categories(**columns)) == [model.category(f) for f in scalar]
    assert list(model.trust_scores(**columns)) == [model.trust_score(f) for f in scalar]
