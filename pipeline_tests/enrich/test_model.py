"""Alignment (RFC 7489) and the sender model on labelled cases: pure functions, no stack."""

from __future__ import annotations

import json

import pytest

from pipeline.enrich import alignment, model


@pytest.mark.parametrize(
    ("identifier", "header_from", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "s", False),
        ("bounce.example.co.uk", "news.other.co.uk", "r", False),  # co.uk is a public suffix
        ("a.example.co.uk", "b.example.co.uk", "r", True),
        ("sendgrid.net", "acme.example", "r", False),
        (None, "example.com", "r", False),
    ],
)
def test_alignment(identifier, header_from, mode, expected):
    assert alignment.aligned(identifier, header_from, mode) is expected


def test_dkim_alignment_needs_a_passing_aligned_signature():
    sigs = [{"domain": "sendgrid.net", "result": "pass"}, {"domain": "acme.example", "result": "fail"}]
    assert not alignment.dkim_aligned(json.dumps(sigs), "acme.example", "r")
    sigs.append({"domain": "mail.acme.example", "result": "pass"})
    assert alignment.dkim_aligned(json.dumps(sigs), "acme.example", "r")
    assert not alignment.dkim_aligned(json.dumps(sigs), "acme.example", "s")


def features(**kw) -> model.Features:
    base = dict(
        dmarc_pass=False,
        dkim_aligned=False,
        spf_aligned=False,
        dkim_pass=False,
        spf_pass=False,
        has_auth_results=True,
        service_type=None,
        known_service=False,
    )
    return model.Features(**{**base, **kw})


LABELLED = [
    (
        "authorized",
        features(
            dmarc_pass=True,
            dkim_aligned=True,
            spf_aligned=True,
            dkim_pass=True,
            spf_pass=True,
            service_type="Email Provider",
            known_service=True,
        ),
    ),
    ("authorized", features(dmarc_pass=True, spf_aligned=True, spf_pass=True, service_type="SaaS", known_service=True)),
    ("forwarder", features(dmarc_pass=True, dkim_aligned=True, dkim_pass=True, service_type="ISP", known_service=True)),
    ("misconfigured", features(dkim_pass=True, spf_pass=True, service_type="Marketing", known_service=True)),
    ("spoof", features(service_type="Web Host", known_service=True)),
    ("spoof", features()),
    ("suspicious", features(service_type="ISP", known_service=True)),
    ("unknown", features(has_auth_results=False)),
]


@pytest.mark.parametrize(("label", "f"), LABELLED)
def test_categories_on_labelled_cases(label, f):
    assert model.category(f) == label


def test_trust_orders_the_categories():
    score: dict[str, float] = {}
    for label, f in LABELLED:
        score[label] = min(score.get(label, 1.0), model.trust_score(f))
    assert score["authorized"] > score["forwarder"] > score["misconfigured"] > score["suspicious"] > score["spoof"]
    assert all(0.0 <= s <= 1.0 for s in score.values())
    assert model.MODEL_VERSION == "sender-v1"
