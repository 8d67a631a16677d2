"""The telemetry record: one row per DMARC ``<record>``, raw and enriched (DESIGN.md section 4).

One definition serves the collector (raw NDJSON), the enrichment (Spark/Parquet schema) and the
importer (warehouse columns), so that the three cannot drift apart.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# name -> logical type. Types: str, int, float, bool, date, timestamp.
RAW_FIELDS: dict[str, str] = {
    "schema_version": "int",
    "customer_id": "str",
    "report_org": "str",
    "report_id": "str",
    "report_email": "str",
    "report_begin": "timestamp",
    "report_end": "timestamp",
    "policy_domain": "str",
    "policy_adkim": "str",
    "policy_aspf": "str",
    "policy_p": "str",
    "policy_sp": "str",
    "policy_pct": "int",
    "record_index": "int",
    "source_ip": "str",
    "message_count": "int",
    "disposition": "str",
    "policy_dkim": "str",
    "policy_spf": "str",
    "override_reasons": "str",
    "header_from": "str",
    "envelope_from": "str",
    "envelope_to": "str",
    "dkim_domain": "str",
    "dkim_selector": "str",
    "dkim_result": "str",
    "spf_domain": "str",
    "spf_scope": "str",
    "spf_result": "str",
    "dkim_auth": "str",  # JSON list of every DKIM result of the record
    "spf_auth": "str",  # JSON list of every SPF result of the record
}

ENRICHED_FIELDS: dict[str, str] = {
    **RAW_FIELDS,
    "day": "date",
    "country": "str",
    "continent": "str",
    "asn": "int",
    "as_org": "str",
    "as_domain": "str",
    "service_name": "str",
    "service_type": "str",
    "dkim_aligned": "bool",
    "spf_aligned": "bool",
    "dmarc_pass": "bool",
    "sender_category": "str",
    "trust_score": "float",
    "model_version": "str",
    "event_id": "str",
}

PG_TYPES = {
    "str": "text",
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamp with time zone",
}
# telemetry_events' column types: the enriched fields' kinds, except the event id, which the
# warehouse keeps as a uuid (the 128-bit hash's 16 bytes: migration 0019).
EVENT_PG_TYPES = {name: "uuid" if name == "event_id" else PG_TYPES[kind] for name, kind in ENRICHED_FIELDS.items()}


def arrow_schema(fields: dict[str, str] | None = None):
    """The Parquet/Arrow schema of enriched telemetry (or of ``fields``)."""
    import pyarrow as pa

    arrow = {
        "str": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([(name, arrow[kind]) for name, kind in (fields or ENRICHED_FIELDS).items()])
