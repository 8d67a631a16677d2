"""The first, row-wise implementation of the enrichment, kept as the oracle the vectorized one in
pipeline/enrich/transform.py must agree with, row for row (pipeline_tests/enrich/test_vectorized.py).

Input: raw telemetry records (pipeline.telemetry.RAW_FIELDS). Output: enriched records
(ENRICHED_FIELDS) plus ``rescue_reason``: rows that do not fit the schema are kept, with the
reason, instead of being dropped.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator

import pandas as pd

from pipeline.enrich import alignment, model, reference
from pipeline.telemetry import ENRICHED_FIELDS, RAW_FIELDS

RESCUE = "rescue_reason"
OUTPUT_COLUMNS = [*ENRICHED_FIELDS, RESCUE]


def event_id(customer_id: str, report_org: str, report_id: str, day: str, record_index: int) -> str:
    """Deterministic identity of one record of one report of one customer (and day)."""
    return hashlib.sha256(f"{customer_id}\n{report_org}\n{report_id}\n{day}\n{record_index}".encode()).hexdigest()[:32]


def _ip_info(ip: str, reader) -> dict:
    info = reader.get(ip) or {}
    asn = str(info.get("asn") or "").upper().removeprefix("AS")
    return {
        "country": info.get("country_code"),
        "continent": info.get("continent_code"),
        "asn": int(asn) if asn.isdigit() else None,
        "as_org": info.get("as_name"),
        "as_domain": (info.get("as_domain") or None),
    }


def _rescue_reason(row) -> str | None:
    for name in ("customer_id", "report_org", "report_id"):
        if not row[name]:
            return f"{name} is empty"
    if pd.isna(row["record_index"]):
        return "record_index is missing"
    try:
        ipaddress.ip_address(str(row["source_ip"]))
    except ValueError:
        return f"source_ip {row['source_ip']!r} is not an IP address"
    if pd.isna(row["message_count"]) or int(row["message_count"]) < 0:
        return f"message_count {row['message_count']!r} is not a count"
    if pd.isna(row["report_begin_ts"]):
        return f"report_begin {row['report_begin']!r} is not a timestamp"
    return None


def enrich_frame(raw: pd.DataFrame, ip_db_path: str | None = None, services: dict | None = None) -> pd.DataFrame:
    frame = raw.reindex(columns=list(RAW_FIELDS)).copy()
    reader = reference.ip_reader(ip_db_path)
    services = services if services is not None else reference.service_map()
    frame["report_begin_ts"] = pd.to_datetime(frame["report_begin"], utc=True, errors="coerce", format="ISO8601")
    frame["report_end_ts"] = pd.to_datetime(frame["report_end"], utc=True, errors="coerce", format="ISO8601")
    frame[RESCUE] = frame.apply(_rescue_reason, axis=1) if len(frame) else pd.Series(dtype=object)
    ok = frame[RESCUE].isna()

    infos = {ip: _ip_info(ip, reader) for ip in frame.loc[ok, "source_ip"].unique()}  # one lookup per address
    for name in ("country", "continent", "asn", "as_org", "as_domain"):
        frame[name] = frame["source_ip"].map(lambda ip, n=name: infos.get(ip, {}).get(n))
    service = frame["as_domain"].map(lambda d: services.get(str(d).lower()) if d else None)
    frame["service_name"] = service.map(lambda s: s[0] if s else None)
    frame["service_type"] = service.map(lambda s: s[1] if s else None)

    frame["dkim_aligned"] = [
        alignment.dkim_aligned(a, h, m)
        for a, h, m in zip(frame["dkim_auth"], frame["header_from"], frame["policy_adkim"])
    ]
    frame["spf_aligned"] = [
        alignment.spf_aligned(a, h, m) for a, h, m in zip(frame["spf_auth"], frame["header_from"], frame["policy_aspf"])
    ]
    frame["dmarc_pass"] = frame["dkim_aligned"] | frame["spf_aligned"]
    features = [
        model.Features(
            dmarc_pass=bool(dp),
            dkim_aligned=bool(da),
            spf_aligned=bool(sa),
            dkim_pass=alignment.any_pass(dk),
            spf_pass=alignment.any_pass(sp),
            has_auth_results=(dk not in (None, "[]")) or (sp not in (None, "[]")),
            service_type=st,
            known_service=sn is not None,
        )
        for dp, da, sa, dk, sp, st, sn in zip(
            frame["dmarc_pass"],
            frame["dkim_aligned"],
            frame["spf_aligned"],
            frame["dkim_auth"],
            frame["spf_auth"],
            frame["service_type"],
            frame["service_name"],
        )
    ]
    frame["sender_category"] = [model.category(f) for f in features]
    frame["trust_score"] = [model.trust_score(f) for f in features]
    frame["model_version"] = model.MODEL_VERSION
    frame["day"] = frame["report_begin_ts"].dt.date
    frame["event_id"] = [
        event_id(c, o, r, d.isoformat() if not pd.isna(d) else "", int(i)) if not pd.isna(i) else None
        for c, o, r, d, i in zip(
            frame["customer_id"], frame["report_org"], frame["report_id"], frame["day"], frame["record_index"]
        )
    ]
    frame["report_begin"] = frame["report_begin_ts"]
    frame["report_end"] = frame["report_end_ts"]
    return frame[OUTPUT_COLUMNS]


def enrich_batches(
    batches: Iterator[pd.DataFrame], ip_db_path: str | None = None, services: dict | None = None
) -> Iterator[pd.DataFrame]:
    """The mapInPandas entry point."""
    for batch in batches:
        yield enrich_frame(batch, ip_db_path, services)
