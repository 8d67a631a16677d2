"""Benchmarks: figures measured in one run against baselines (BENCHMARKS.md)."""

from __future__ import annotations

Targets = dict[str, tuple[str, float]]  # figure -> (">=" or "<=", target)


def verdicts(figures: dict, targets: Targets) -> dict[str, bool]:
    """Whether each measured figure meets its target (figures not measured in this run are left out)."""
    out = {}
    for name, (op, target) in targets.items():
        if figures.get(name) is not None:
            out[name] = figures[name] >= target if op == ">=" else figures[name] <= target
    return out


def forget_enrichment(settings, days: list[str]) -> None:
    """After a benchmark on its own calendar: the enriched batch objects of ``days`` and their
    ledger rows go, so that the next run of it starts from what it writes itself."""
    import psycopg

    from pipeline.aws import client
    from pipeline.enrich.publish import delete_keys

    s3 = client(settings, "s3")
    for day in days:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=settings.enriched_bucket, Prefix=f"{settings.enriched_prefix}dt={day}/"):
            delete_keys(s3, settings.enriched_bucket, [o["Key"] for o in page.get("Contents", [])])
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM enrichment_batches WHERE day = ANY(%s::date[])", (days,))
