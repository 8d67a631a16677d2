"""Enrichment batches as the enricher writes them and the importer and verify read them: the
key of a batch object, and its manifest (which tenants' rows it holds). Shared by
pipeline.enrich.ledger (the writer) and pipeline.importer (which loads a batch object's rows only
into the tenants its manifest names); the stage cores do not import each other."""

from __future__ import annotations

import re

BATCH_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}")
BATCH_KEY = re.compile(r"(?:^|/)dt=(?P<day>\d{4}-\d{2}-\d{2})/batch=(?P<batch>\d{8}T\d{6}Z-[0-9a-f]{12})/[^/]+$")


def batch_of(key: str) -> str | None:
    """The batch id of an enriched object's key, or None for a key of no batch."""
    match = BATCH_KEY.search(key)
    return match["batch"] if match else None


def manifest(conn_or_cursor, batch: str) -> dict[str, int] | None:
    """customer -> rows of a batch, or None when no batch of that id was planned."""
    if conn_or_cursor.execute("SELECT 1 FROM enrichment_batches WHERE batch_id = %s", (batch,)).fetchone() is None:
        return None
    rows = conn_or_cursor.execute(
        "SELECT customer_id, rows FROM enrichment_manifest WHERE batch_id = %s", (batch,)
    ).fetchall()
    return {customer: n for customer, n in rows}
