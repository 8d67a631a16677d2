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
from psycopg import sql

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
       coalesce(sum(e.message_count) FILTER (WHERE receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE NOT receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE coalesce(e.disposition, 'none') = 'none'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.disposition = 'quarantine'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.disposition = 'reject'), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0),
       coalesce(sum(e.message_count) FILTER (
           WHERE receiver_pass(e.policy_dkim, e.policy_spf) <> coalesce(e.dmarc_pass, false)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE forwarded_override(e.override_reasons)), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.policy_domain, '')
"""

_SOURCE_INSERT = """
INSERT INTO daily_source_summary
SELECT e.customer_id, e.day, coalesce(e.source_ip, ''),
       max(e.asn), max(e.as_org), max(e.country), max(e.service_name), max(e.sender_category),
       round(avg(e.trust_score)::numeric, 4)::double precision,
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0),
       coalesce(sum(e.message_count) FILTER (
           WHERE receiver_pass(e.policy_dkim, e.policy_spf) <> coalesce(e.dmarc_pass, false)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE forwarded_override(e.override_reasons)), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.source_ip, '')
"""


_REPORT_INSERT = """
INSERT INTO daily_reports
SELECT e.customer_id, e.day, coalesce(e.report_org, ''), coalesce(e.report_id, ''), max(e.policy_domain),
       min(e.report_begin), max(e.report_end),
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0),
       (array_agg(e.policy_p ORDER BY e.report_end DESC NULLS LAST))[1],
       (array_agg(e.policy_pct ORDER BY e.report_end DESC NULLS LAST))[1]
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.report_org, ''), coalesce(e.report_id, '')
"""

UNKNOWN_NETWORK = "Unknown network"  # the service of a source with no known service and no AS organisation
_SERVICE = f"coalesce(e.service_name, e.as_org, '{UNKNOWN_NETWORK}')"

_DOMAIN_SERVICES_INSERT = f"""
INSERT INTO daily_domain_services
SELECT e.customer_id, e.day, coalesce(e.policy_domain, ''), {_SERVICE}, bool_or(e.service_name IS NOT NULL),
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0),
       coalesce(sum(e.message_count) FILTER (WHERE forwarded_override(e.override_reasons)), 0),
       coalesce(round(sum(e.trust_score::numeric * e.message_count), 6), 0)::double precision
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.policy_domain, ''), {_SERVICE}
"""

# The all-days rollups of the customers whose slices changed, classified (with the customers'
# own choices, customer_events, read through the service_marks view).
_CHANGED = "(SELECT DISTINCT customer_id FROM slices)"
_ROLLUP = f"""
INSERT INTO source_summary
SELECT r.*, sender_classification(r.messages, r.aligned_pass, r.forwarded, r.service_name IS NOT NULL,
                                  r.trust_score, f.service_name IS NOT NULL, m.service IS NOT NULL)
FROM (
    SELECT d.customer_id, d.source_ip, max(d.asn) AS asn, max(d.as_org) AS as_org, max(d.country) AS country,
           max(d.service_name) AS service_name, max(d.sender_category) AS sender_category,
           round(avg(d.trust_score)::numeric, 4)::double precision AS trust_score,
           sum(d.messages) AS messages, sum(d.dmarc_pass) AS dmarc_pass,
           round(sum(d.dmarc_pass)::numeric / nullif(sum(d.messages), 0), 4)::double precision AS pass_rate,
           min(d.day) AS first_day, max(d.day) AS last_day,
           sum(d.aligned_pass) AS aligned_pass, sum(d.verdict_disagreements) AS verdict_disagreements,
           sum(d.forwarded) AS forwarded, coalesce(max(d.service_name), max(d.as_org), '{UNKNOWN_NETWORK}') AS service
    FROM daily_source_summary d WHERE d.customer_id IN {_CHANGED}
    GROUP BY d.customer_id, d.source_ip
) r
LEFT JOIN known_forwarders f ON f.service_name = r.service_name
LEFT JOIN service_marks m ON m.customer_id = r.customer_id AND m.service = r.service
"""

_SERVICE_ROLLUP = f"""
INSERT INTO service_summary
SELECT r.customer_id, r.service, r.known_service, r.messages, r.dmarc_pass, r.aligned_pass, r.forwarded,
       r.trust_score, coalesce(n.sources, 0), r.first_day, r.last_day, m.service IS NOT NULL,
       sender_classification(r.messages, r.aligned_pass, r.forwarded, r.known_service, r.trust_score,
                             f.service_name IS NOT NULL, m.service IS NOT NULL)
FROM (
    SELECT d.customer_id, d.service, bool_or(d.known_service) AS known_service, sum(d.messages) AS messages,
           sum(d.dmarc_pass) AS dmarc_pass, sum(d.aligned_pass) AS aligned_pass, sum(d.forwarded) AS forwarded,
           round((sum(d.trust_sum) / nullif(sum(d.messages), 0))::numeric, 4)::double precision AS trust_score,
           min(d.day) AS first_day, max(d.day) AS last_day
    FROM daily_domain_services d WHERE d.customer_id IN {_CHANGED}
    GROUP BY d.customer_id, d.service
) r
LEFT JOIN (
    SELECT customer_id, service, count(*) AS sources FROM source_summary
    WHERE customer_id IN {_CHANGED} GROUP BY customer_id, service
) n ON n.customer_id = r.customer_id AND n.service = r.service
LEFT JOIN known_forwarders f ON f.service_name = r.service
LEFT JOIN service_marks m ON m.customer_id = r.customer_id AND m.service = r.service
"""

_CUSTOMER_ROLLUP = f"""
INSERT INTO customer_summary
SELECT customer_id, count(*), coalesce(array_agg(DISTINCT sender_category ORDER BY sender_category)
                                       FILTER (WHERE sender_category IS NOT NULL), '{{}}')
FROM source_summary WHERE customer_id IN {_CHANGED} GROUP BY customer_id
"""

_ROLLUPS = (("source_summary", _ROLLUP), ("service_summary", _SERVICE_ROLLUP), ("customer_summary", _CUSTOMER_ROLLUP))


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
    conn.execute(
        "DELETE FROM daily_domain_services d USING slices s WHERE d.customer_id = s.customer_id AND d.day = s.day"
    )
    domain_rows = conn.execute(_DOMAIN_INSERT).rowcount
    source_rows = conn.execute(_SOURCE_INSERT).rowcount
    conn.execute(_REPORT_INSERT)
    conn.execute(_DOMAIN_SERVICES_INSERT)
    for table, rollup in _ROLLUPS:  # the all-days rollups of the customers that changed
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE customer_id IN (SELECT DISTINCT customer_id FROM slices)").format(
                sql.Identifier(table)
            )
        )
        conn.execute(rollup)
    return RefreshResult(slices, domain_rows, source_rows)


def refresh(database_url: str, wait: bool = True) -> RefreshResult | None:
    """Recompute the slices marked dirty since the last refresh. ``wait=False``: None at once when
    another refresh holds the lock (that one, or the next, takes the slices marked meanwhile)."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        if wait:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        elif not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK,)).fetchone()[0]:
            return None
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
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute("DELETE FROM projection_dirty")
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, PROJECTION_TABLES))))
            conn.execute(
                "CREATE TEMP TABLE slices ON COMMIT DROP AS "
                "SELECT DISTINCT customer_id, day FROM telemetry_events WHERE day IS NOT NULL"
            )
            result = _recompute(conn)
        # Every row is new: give the planner their statistics now rather than at autovacuum's leisure
        # (without them it scans a customer's 200,000 sources where an index walk reads 25).
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, PROJECTION_TABLES))))
        return result


def dirty_slices(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM projection_dirty").fetchone()[0]


PROJECTION_TABLES = (
    "daily_domain_compliance",
    "daily_source_summary",
    "daily_reports",
    "source_summary",
    "daily_domain_services",
    "service_summary",
    "customer_summary",
)
