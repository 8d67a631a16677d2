"""Projections: the web application's read models, kept from the live telemetry events.

``telemetry_events`` holds only live rows (supersession and tombstones delete what no longer
exists), so a projection is an aggregate over it. Both projections are keyed by (customer, day)
slices; a statement trigger marks a slice dirty whenever rows of it are inserted or deleted
(migration 0007). ``refresh`` recomputes the dirty slices; ``rebuild`` recomputes all of them.
Incremental upkeep and a full rebuild give identical tables (a property test).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

_LOCK = 0x5052_4F4A  # one refresher at a time ("PROJ")

_DOMAIN_INSERT = """
INSERT INTO daily_domain_compliance
SELECT e.customer_id, e.day, coalesce(e.policy_domain, ''),
       count(DISTINCT (e.report_org, e.report_id)),
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.policy_spf = 'pass'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.policy_spf IS DISTINCT FROM 'pass'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.policy_dkim = 'pass'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.policy_dkim IS DISTINCT FROM 'pass'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass IS NOT TRUE), 0),
       coalesce(sum(e.message_count) FILTER (WHERE coalesce(e.disposition, 'none') = 'none'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.disposition = 'quarantine'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.disposition = 'reject'), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.policy_domain, '')
"""

_SOURCE_INSERT = """
INSERT INTO daily_source_summary
SELECT e.customer_id, e.day, coalesce(e.source_ip, ''),
       max(e.asn), max(e.as_org), max(e.country), max(e.service_name), max(e.sender_category),
       round(avg(e.trust_score)::numeric, 4)::double precision,
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.source_ip, '')
"""


_REPORT_INSERT = """
INSERT INTO daily_reports
SELECT e.customer_id, e.day, coalesce(e.report_org, ''), coalesce(e.report_id, ''), max(e.policy_domain),
       min(e.report_begin), max(e.report_end),
       coalesce(sum(e.message_count), 0), coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.report_org, ''), coalesce(e.report_id, '')
"""

# The all-days rollup of the customers whose slices changed.
_ROLLUP = """
INSERT INTO source_summary
SELECT d.customer_id, d.source_ip, max(d.asn), max(d.as_org), max(d.country), max(d.service_name),
       max(d.sender_category), round(avg(d.trust_score)::numeric, 4)::double precision,
       sum(d.messages), sum(d.dmarc_pass),
       round(sum(d.dmarc_pass)::numeric / nullif(sum(d.messages), 0), 4)::double precision,
       min(d.day), max(d.day)
FROM daily_source_summary d WHERE d.customer_id IN (SELECT DISTINCT customer_id FROM slices)
GROUP BY d.customer_id, d.source_ip
"""


@dataclass(frozen=True)
class RefreshResult:
    slices: int
    domain_rows: int
    source_rows: int


def _recompute(conn: psycopg.Connection) -> RefreshResult:
    """Recompute the slices in the temporary table ``slices``."""
    slices = conn.execute("SELECT count(*) FROM slices").fetchone()[0]
    conn.execute(
        "DELETE FROM daily_domain_compliance d USING slices s WHERE d.customer_id = s.customer_id AND d.day = s.day"
    )
    conn.execute(
        "DELETE FROM daily_source_summary d USING slices s WHERE d.customer_id = s.customer_id AND d.day = s.day"
    )
    conn.execute("DELETE FROM daily_reports d USING slices s WHERE d.customer_id = s.customer_id AND d.day = s.day")
    domain_rows = conn.execute(_DOMAIN_INSERT).rowcount
    source_rows = conn.execute(_SOURCE_INSERT).rowcount
    conn.execute(_REPORT_INSERT)
    conn.execute("DELETE FROM source_summary WHERE customer_id IN (SELECT DISTINCT customer_id FROM slices)")
    conn.execute(_ROLLUP)
    return RefreshResult(slices, domain_rows, source_rows)


def refresh(database_url: str) -> RefreshResult:
    """Recompute the slices marked dirty since the last refresh."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        # Take the markers in key order (imports upsert theirs in the same order, so the two never
        # deadlock); a marker an uncommitted import holds makes this wait for its commit, and the
        # recompute below, a later statement, then sees that import's rows.
        conn.execute("SELECT 1 FROM projection_dirty ORDER BY customer_id, day FOR UPDATE")
        conn.execute(
            "CREATE TEMP TABLE slices ON COMMIT DROP AS "
            "WITH taken AS (DELETE FROM projection_dirty RETURNING customer_id, day) "
            "SELECT DISTINCT customer_id, day FROM taken"
        )
        return _recompute(conn)


def rebuild(database_url: str) -> RefreshResult:
    """Recompute every slice from the events (after a migration, or to check upkeep)."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("DELETE FROM projection_dirty")
        conn.execute("TRUNCATE daily_domain_compliance, daily_source_summary, daily_reports, source_summary")
        conn.execute(
            "CREATE TEMP TABLE slices ON COMMIT DROP AS "
            "SELECT DISTINCT customer_id, day FROM telemetry_events WHERE day IS NOT NULL"
        )
        return _recompute(conn)


def dirty_slices(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM projection_dirty").fetchone()[0]


PROJECTION_TABLES = ("daily_domain_compliance", "daily_source_summary", "daily_reports", "source_summary")
