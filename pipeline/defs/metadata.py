"""Dagster's standard metadata for the assets: their columns as ``dagster/column_schema`` (the
UI's Columns tab and column search; the raw and enriched records' fields and the warehouse
table's columns, from the one place that defines them, pipeline.telemetry) and each asset's
link to its code (``dagster/code_references``)."""

import warnings

from dagster import BetaWarning, TableColumn, TableSchema, with_source_code_references

from pipeline.telemetry import ENRICHED_FIELDS, EVENT_PG_TYPES, RAW_FIELDS

_FILE_TYPES = {"str": "string", "int": "int64", "float": "double", "bool": "bool", "date": "date"}


def _file_type(kind: str) -> str:
    return "timestamp[us, UTC]" if kind == "timestamp" else _FILE_TYPES[kind]


RAW_COLUMNS = TableSchema(columns=[TableColumn(name, _file_type(kind)) for name, kind in RAW_FIELDS.items()])
ENRICHED_COLUMNS = TableSchema(columns=[TableColumn(name, _file_type(kind)) for name, kind in ENRICHED_FIELDS.items()])
EVENT_COLUMNS = TableSchema(
    columns=[
        TableColumn("ledger_id", "bigint", description="The load (load_ledger) that wrote the row."),
        *(TableColumn(name, kind) for name, kind in EVENT_PG_TYPES.items()),
    ]
)


def with_code_references(assets: list) -> list:
    """``with_source_code_references`` of the assets, without its beta warnings at every load of
    the code location (the API is pinned with dagster==1.13.27; docs/ARCHITECTURE.md)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return list(with_source_code_references(assets))


def _columns(*columns: tuple[str, str, str]) -> TableSchema:
    return TableSchema(columns=[TableColumn(name, kind, description=about) for name, kind, about in columns])


_SLICE = (
    ("customer_id", "text", "The tenant."),
    ("day", "date", "The report's day (UTC)."),
)
_PASS = ("dmarc_pass", "bigint", "Messages the receiver passed DMARC.")
_ALIGNED = ("aligned_pass", "bigint", "Messages passing DMARC by alignment recomputed from SPF / DKIM results.")
_DISAGREE = ("verdict_disagreements", "bigint", "Messages where the receiver's verdict and the recomputed one differ.")
_FORWARDED = ("forwarded", "bigint", "Messages whose policy override names forwarding or a mailing list.")

# The projections' tables as migrations 0007 and 0009 create them (a test compares them with the
# warehouse's information_schema, so a migration that changes a column changes this too).
DOMAIN_COLUMNS = _columns(
    *_SLICE,
    ("policy_domain", "text", "The domain whose published policy applied."),
    ("reports", "bigint", "Aggregate reports that covered the domain that day."),
    ("messages", "bigint", "Messages reported."),
    ("spf_pass", "bigint", "Messages whose SPF result passed."),
    ("spf_fail", "bigint", "Messages whose SPF result did not pass."),
    ("dkim_pass", "bigint", "Messages with a passing DKIM signature."),
    ("dkim_fail", "bigint", "Messages without one."),
    _PASS,
    ("dmarc_fail", "bigint", "Messages the receiver failed DMARC."),
    ("disposition_none", "bigint", "Messages delivered under p=none or as allowed."),
    ("disposition_quarantine", "bigint", "Messages quarantined."),
    ("disposition_reject", "bigint", "Messages rejected."),
    _ALIGNED,
    _DISAGREE,
    _FORWARDED,
)
SOURCE_COLUMNS = _columns(
    *_SLICE,
    ("source_ip", "text", "The sending IP address."),
    ("asn", "bigint", "Its autonomous system."),
    ("as_org", "text", "The AS organisation."),
    ("country", "text", "ISO country code."),
    ("service_name", "text", "The known sending service, when one matches."),
    ("sender_category", "text", "The model's category of the sender."),
    ("trust_score", "double precision", "The model's trust score (0-1)."),
    ("messages", "bigint", "Messages reported from the source that day."),
    _PASS,
    _ALIGNED,
    _DISAGREE,
    _FORWARDED,
)
ALERT_COLUMNS = _columns(
    ("alert_id", "bigint", "The alert."),
    ("customer_id", "text", "The tenant."),
    ("rule", "text", "The rule that fired (pipeline.web.alerts.RULES), or summary for a digest."),
    ("occurrence", "text", "What makes it one occurrence: an alert fires once per rule and occurrence."),
    ("message", "text", "What the customer reads."),
    ("details", "jsonb", "The figures behind it."),
    ("fired_at", "timestamp with time zone", "When the refresh fired it."),
    ("delivered_at", "timestamp with time zone", "When its webhook accepted it (null: not yet, or none set)."),
    ("attempts", "integer", "Webhook deliveries tried."),
    ("last_error", "text", "The last delivery's error."),
    ("summarized_in", "bigint", "The weekly digest that carried it."),
)
