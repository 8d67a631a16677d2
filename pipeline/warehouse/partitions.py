"""telemetry_events' monthly partitions: created ahead of the data, dropped past the horizon.

``telemetry_events`` is partitioned by ``day``, one partition a month named
``telemetry_events_YYYY_MM`` (migration 0019). Partitions are made by the pipeline, never by a
failing insert:

- :func:`ensure` creates the partitions of a range of days where they are missing (the SQL
  function ``ensure_event_partitions``: a table created and then ATTACHed, under an advisory
  lock, so that loads and pages go on while it happens);
- :func:`ensure_ahead` keeps this month and the next ``AHEAD_MONTHS`` ready (``migrate`` calls
  it, and so does the daily warehouse maintenance);
- the loader ensures the months of each object's rows before its transaction opens, so that a
  late report, or one dated years ago, finds its partition.

Retention (``PIPELINE_RETENTION_DAYS``, :func:`apply_retention`) removes whole partitions past
the horizon: no DELETE of events. A partition goes when its last day is older than the horizon;
a month partly inside it stays whole until it is not. See pipeline.warehouse.retention.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

AHEAD_MONTHS = 2
PARENT = "telemetry_events"


@dataclass(frozen=True)
class Partition:
    name: str
    first_day: dt.date  # inclusive
    end_day: dt.date  # exclusive

    @property
    def last_day(self) -> dt.date:
        return self.end_day - dt.timedelta(days=1)


def ensure(conn, first_day: dt.date | None, last_day: dt.date | None) -> int:
    """Create the partitions of the months from ``first_day`` to ``last_day``; return how many were new.

    Runs in the caller's transaction: call it on an autocommit connection (or commit soon), so
    that the partitions are visible to the loads that need them and the advisory lock is short.
    """
    if first_day is None or last_day is None:
        return 0
    (created,) = conn.execute("SELECT ensure_event_partitions(%s, %s)", (first_day, last_day)).fetchone()
    return int(created)


def ensure_ahead(conn, today: dt.date | None = None, months: int = AHEAD_MONTHS) -> int:
    """This month's partition and the next ``months``' (the days the collector is writing now)."""
    today = today or dt.date.today()
    last = _add_months(today.replace(day=1), months)
    return ensure(conn, today, last)


def partitions(conn) -> list[Partition]:
    """The partitions attached to telemetry_events, oldest first."""
    rows = conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'telemetry_events'::regclass"""
    ).fetchall()
    found = []
    for name, bound in rows:
        # FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')
        low, high = (part.split("'")[1] for part in bound.split(" TO "))
        found.append(Partition(name, dt.date.fromisoformat(low), dt.date.fromisoformat(high)))
    return sorted(found, key=lambda p: p.first_day)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)
