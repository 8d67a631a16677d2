"""Dagster's standard metadata for the assets: their columns as ``dagster/column_schema`` (the
UI's Columns tab and column search; the raw and enriched records' fields and the warehouse
table's columns, from the one place that defines them, pipeline.telemetry) and each asset's
link to its code (``dagster/code_references``)."""

import warnings

from dagster import BetaWarning, TableColumn, TableSchema, with_source_code_references

from pipeline.telemetry import ENRICHED_FIELDS, PG_TYPES, RAW_FIELDS

_FILE_TYPES = {"str": "string", "int": "int64", "float": "double", "bool": "bool", "date": "date"}


def _file_type(kind: str) -> str:
    return "timestamp[us, UTC]" if kind == "timestamp" else _FILE_TYPES[kind]


RAW_COLUMNS = TableSchema(columns=[TableColumn(name, _file_type(kind)) for name, kind in RAW_FIELDS.items()])
ENRICHED_COLUMNS = TableSchema(columns=[TableColumn(name, _file_type(kind)) for name, kind in ENRICHED_FIELDS.items()])
EVENT_COLUMNS = TableSchema(
    columns=[
        TableColumn("ledger_id", "bigint", description="The load (load_ledger) that wrote the row."),
        *(TableColumn(name, PG_TYPES[kind]) for name, kind in ENRICHED_FIELDS.items()),
    ]
)


def with_code_references(assets: list) -> list:
    """``with_source_code_references`` of the assets, without its beta warnings at every load of
    the code location (the API is pinned with dagster==1.13.27; docs/ARCHITECTURE.md)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return list(with_source_code_references(assets))
