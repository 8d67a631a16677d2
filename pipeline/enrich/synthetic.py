"""Synthetic enriched telemetry: Parquet objects shaped exactly like enrichment's output.

For the benchmarks' workloads (DESIGN.md section 7), the foundation demo and tests of the import
path that must not wait for Spark. Deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.telemetry import ENRICHED_FIELDS, SCHEMA_VERSION, arrow_schema

ENRICHED_ARROW_SCHEMA = arrow_schema()

_ORGS = ["google.com", "Yahoo", "Microsoft Corporation", "Mail.Ru", "comcast.net"]
# (service, type, AS domain, ASN, country, first octet, P(SPF pass), P(DKIM pass)): the known
# services mostly authenticate; the hosting networks mostly do not (spoofing, misconfiguration).
_SERVICES = [
    ("Google", "Email Provider", "google.com", 15169, "US", 66, 0.8, 0.75),
    ("Microsoft", "Email Provider", "microsoft.com", 8075, "US", 40, 0.8, 0.75),
    ("Amazon SES", "Email Provider", "amazon.com", 16509, "US", 54, 0.8, 0.75),
    (None, None, "ovh.net", 16276, "FR", 51, 0.15, 0.1),
    (None, None, "hetzner.com", 24940, "DE", 88, 0.15, 0.1),
]
DISAGREEMENT_RATE = 0.01  # records whose receiver verdict differs from the recomputed alignment
_CATEGORIES = ["authorized", "forwarder", "misconfigured", "suspicious", "spoof", "unknown"]


def synthetic_enriched_table(
    rows: int,
    seed: int = 0,
    customer_id: str = "demo",
    day: dt.date | None = None,
    report_id: str | None = None,
) -> pa.Table:
    rng = random.Random(seed)
    day = day or dt.date(2026, 11, 1)
    begin = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    report_id = report_id or f"synthetic-{seed}"
    org = _ORGS[seed % len(_ORGS)]
    columns: dict[str, list] = {name: [] for name in ENRICHED_FIELDS}
    for index in range(rows):
        service, service_type, as_domain, asn, country, octet, p_spf, p_dkim = rng.choice(_SERVICES)
        spf = rng.random() < p_spf
        dkim = rng.random() < p_dkim
        receiver = (spf or dkim) != (rng.random() < DISAGREEMENT_RATE)
        values = {
            "schema_version": SCHEMA_VERSION,
            "customer_id": customer_id,
            "report_org": org,
            "report_id": report_id,
            "report_email": f"noreply-dmarc@{org.lower().replace(' ', '')}",
            "report_begin": begin,
            "report_end": begin + dt.timedelta(days=1, seconds=-1),
            "policy_domain": f"{customer_id}.example",
            "policy_adkim": "r",
            "policy_aspf": "r",
            "policy_p": "quarantine",
            "policy_sp": "quarantine",
            "policy_pct": 100,
            "record_index": index,
            "source_ip": f"{octet}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "message_count": rng.randint(1, 500),
            "disposition": "none" if receiver else "quarantine",
            "policy_dkim": "pass" if receiver and (dkim or not spf) else "fail",
            "policy_spf": "pass" if spf and receiver else "fail",
            "override_reasons": None,
            "header_from": f"{customer_id}.example",
            "envelope_from": f"bounce.{customer_id}.example",
            "envelope_to": None,
            "dkim_domain": f"{customer_id}.example",
            "dkim_selector": "s1",
            "dkim_result": "pass" if dkim else "fail",
            "spf_domain": f"bounce.{customer_id}.example",
            "spf_scope": "mfrom",
            "spf_result": "pass" if spf else "fail",
            "dkim_auth": json.dumps([{"domain": f"{customer_id}.example", "result": "pass" if dkim else "fail"}]),
            "spf_auth": json.dumps([{"domain": f"bounce.{customer_id}.example", "result": "pass" if spf else "fail"}]),
            "day": day,
            "country": country,
            "continent": "EU" if country in {"FR", "DE"} else "NA",
            "asn": asn,
            "as_org": as_domain.split(".")[0].title(),
            "as_domain": as_domain,
            "service_name": service,
            "service_type": service_type,
            "dkim_aligned": dkim,
            "spf_aligned": spf,
            "dmarc_pass": spf or dkim,
            "sender_category": rng.choice(_CATEGORIES),
            "trust_score": round(rng.random(), 4),
            "model_version": "synthetic",
            "event_id": hashlib.sha256(f"{customer_id}|{org}|{report_id}|{index}".encode()).hexdigest()[:32],
        }
        for name in ENRICHED_FIELDS:
            columns[name].append(values[name])
    return pa.table(columns, schema=ENRICHED_ARROW_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
