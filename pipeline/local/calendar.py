"""The day calendar `pipeline dev` opens on.

The telemetry calendar starts at ``PIPELINE_FIRST_DAY`` (default 2012-01-01, for production: a
report of any age since DMARC was published has its day partition). In a local UI that default
shows some 5,000 "missing" day partitions beside the few days a demo holds. When the knob is not
set, `pipeline dev` starts the calendar on the first of the month of the oldest report the local
stack holds (the raw inbox and the enrichment ledger both record every report's day; neither
grows with the rows), or, with nothing stored yet, on the first of the month three months back.
A report older than that is named by the raw sensor as outside the calendar; restarting
`pipeline dev` (or setting the knob) takes it in.
"""

from __future__ import annotations

import datetime as dt

import psycopg

EMPTY_LOOKBACK_DAYS = 90

_OLDEST = """
SELECT least((SELECT min(day) FROM raw_inbox), (SELECT min(day) FROM enrichment_batches))
"""


def oldest_stored_day(database_url: str) -> dt.date | None:
    """The day of the oldest report the warehouse knows of, or None (empty, unmigrated, unreachable)."""
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            return conn.execute(_OLDEST).fetchone()[0]
    except psycopg.Error:
        return None


def dev_first_day(database_url: str, today: dt.date | None = None) -> tuple[dt.date, str]:
    """(the calendar's first day, why) for a local UI."""
    today = today or dt.datetime.now(dt.UTC).date()
    oldest = oldest_stored_day(database_url)
    if oldest is not None:
        return oldest.replace(day=1), f"the month of the oldest report stored here ({oldest})"
    start = (today - dt.timedelta(days=EMPTY_LOOKBACK_DAYS)).replace(day=1)
    return start, f"nothing stored yet: {EMPTY_LOOKBACK_DAYS} days back"
