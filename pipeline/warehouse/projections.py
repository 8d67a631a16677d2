"""Projections: the web application's read models, kept from the live telemetry events.

``telemetry_events`` holds only live rows (supersession and tombstones delete what no longer
exists), so a projection is an aggregate over it. The daily projections are keyed by (customer,
day) slices; a statement trigger marks a slice dirty whenever rows of it are inserted or deleted
(migration 0007). ``refresh`` recomputes the dirty slices and updates the all-days rollups of the
keys those slices touch (migration 0017: by their differences, never by the customer's history);
``rebuild`` recomputes all of them. Incremental upkeep and a full rebuild give identical tables
(a property test).
"""

from __future__ import annotations

from collections.abc import Sequence
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

# A domain's sources and header_from subdomains (a domain's page, over any window; migration 0018).
_DOMAIN_SOURCES_INSERT = """
INSERT INTO daily_domain_sources
SELECT e.customer_id, e.day, coalesce(e.policy_domain, ''), coalesce(e.header_from, ''), coalesce(e.source_ip, ''),
       coalesce(sum(e.message_count), 0),
       coalesce(sum(e.message_count) FILTER (WHERE receiver_pass(e.policy_dkim, e.policy_spf)), 0),
       coalesce(sum(e.message_count) FILTER (WHERE e.dmarc_pass), 0)
FROM telemetry_events e JOIN slices s ON s.customer_id = e.customer_id AND s.day = e.day
GROUP BY e.customer_id, e.day, coalesce(e.policy_domain, ''), coalesce(e.header_from, ''), coalesce(e.source_ip, '')
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

# The all-days rollups (source_summary, service_summary, customer_summary) follow the changed
# slices by key: a refresh costs the changed slices and the keys they touch, never the history.
#
# Before the changed slices' daily rows are replaced, they are kept (old_src, old_svc); after,
# the new ones are read (new_src, new_svc). Joined by (key, day), they give each touched key its
# differences (messages, passes, trust sums: additive) and the new rows' largest values and days.
# A key is recomputed from its daily rows (an index walk of that key's days) when a difference
# cannot say what its row becomes: it has no row yet, it left a day, or a day's non-additive
# figure (ASN, organisation, country, service, category; a service's "known") changed, which
# could lower a maximum. Every other key's row takes its differences. Classification is applied
# to every touched row, and to the rows of a service the customer marked or unmarked.
_SRC_DAILY = """
SELECT d.* FROM daily_source_summary d JOIN slices s ON s.customer_id = d.customer_id AND s.day = d.day
"""
_SVC_DAILY = """
SELECT d.customer_id, d.service, d.day, bool_or(d.known_service) AS known_service, sum(d.messages) AS messages,
       sum(d.dmarc_pass) AS dmarc_pass, sum(d.aligned_pass) AS aligned_pass, sum(d.forwarded) AS forwarded,
       sum(d.trust_sum::numeric) AS trust_total
FROM daily_domain_services d JOIN slices s ON s.customer_id = d.customer_id AND s.day = d.day
GROUP BY d.customer_id, d.service, d.day
"""

# has_row: the key has its all-days row. A key without one has all its daily rows in the changed
# slices (a refresh leaves every key with daily rows its row; migration 0017, which emptied the
# rollups, marked every slice), so it is aggregated from new_src, with no probe of the history.
_SRC_KEYS = """
CREATE TEMP TABLE src_keys ON COMMIT DROP AS
SELECT g.*, EXISTS (SELECT 1 FROM source_summary s WHERE s.customer_id = g.customer_id AND s.source_ip = g.source_ip)
           AS has_row
FROM (
SELECT coalesce(n.customer_id, o.customer_id) AS customer_id, coalesce(n.source_ip, o.source_ip) AS source_ip,
       bool_or(n.source_ip IS NULL OR (o.source_ip IS NOT NULL AND (
           o.asn IS DISTINCT FROM n.asn OR o.as_org IS DISTINCT FROM n.as_org OR o.country IS DISTINCT FROM n.country
           OR o.service_name IS DISTINCT FROM n.service_name
           OR o.sender_category IS DISTINCT FROM n.sender_category))) AS changed,
       sum(coalesce(n.messages, 0) - coalesce(o.messages, 0)) AS messages,
       sum(coalesce(n.dmarc_pass, 0) - coalesce(o.dmarc_pass, 0)) AS dmarc_pass,
       sum(coalesce(n.aligned_pass, 0) - coalesce(o.aligned_pass, 0)) AS aligned_pass,
       sum(coalesce(n.verdict_disagreements, 0) - coalesce(o.verdict_disagreements, 0)) AS verdict_disagreements,
       sum(coalesce(n.forwarded, 0) - coalesce(o.forwarded, 0)) AS forwarded,
       sum(coalesce(n.trust_score::numeric, 0) - coalesce(o.trust_score::numeric, 0)) AS trust_total,
       sum((n.trust_score IS NOT NULL)::int - (o.trust_score IS NOT NULL)::int) AS trust_days,
       max(n.asn) AS asn, max(n.as_org) AS as_org, max(n.country) AS country, max(n.service_name) AS service_name,
       max(n.sender_category) AS sender_category, min(n.day) AS first_day, max(n.day) AS last_day
FROM old_src o FULL JOIN new_src n ON n.customer_id = o.customer_id AND n.day = o.day AND n.source_ip = o.source_ip
GROUP BY 1, 2
) g
"""

# known_forwarders is reference data that only a migration changes: a refresh classifies the rows
# it touches, so such a migration must also mark the rollups for recomputation (as 0017 does).


def _source_class(row: str) -> str:
    """A source row's classification (its figures, its service known or a forwarder, marked), with
    ``_JOINED`` (known_forwarders f, service_marks m) joined to ``row``."""
    return (
        f"sender_classification({row}.messages, {row}.aligned_pass, {row}.forwarded, {row}.service_name IS NOT NULL, "
        f"{row}.trust_score, f.service_name IS NOT NULL, m.service IS NOT NULL)"
    )


def _service_class(row: str) -> str:
    return (
        f"sender_classification({row}.messages, {row}.aligned_pass, {row}.forwarded, {row}.known_service, "
        f"{row}.trust_score, f.service_name IS NOT NULL, m.service IS NOT NULL)"
    )


def _joined(row: str, forwarder: str) -> str:
    """The reference data a classification reads, joined once (not probed per row)."""
    return (
        f"LEFT JOIN known_forwarders f ON f.service_name = {row}.{forwarder} "
        f"LEFT JOIN service_marks m ON m.customer_id = {row}.customer_id AND m.service = {row}.service"
    )


_SOURCE_COLUMNS = (
    "customer_id, source_ip, asn, as_org, country, service_name, sender_category, trust_score, messages, dmarc_pass, "
    "pass_rate, first_day, last_day, aligned_pass, verdict_disagreements, forwarded, service, trust_total, trust_days"
)

# Each row is written once, classified in the same statement.

# a key whose row a difference cannot update: its days read again (an index walk of that key)
_SRC_CHANGED_DAYS = (
    "src_keys k JOIN daily_source_summary d ON d.customer_id = k.customer_id AND d.source_ip = k.source_ip "
    "WHERE k.has_row AND k.changed"
)
# a key new to the rollup: its days are the changed slices' (new_src)
_SRC_NEW_DAYS = (
    "src_keys k JOIN new_src d ON d.customer_id = k.customer_id AND d.source_ip = k.source_ip WHERE NOT k.has_row"
)


def _src_recompute(days: str) -> str:
    """The all-days rows of the keys ``days`` joins with their daily rows, inserted and classified."""
    return f"""
INSERT INTO source_summary ({_SOURCE_COLUMNS}, classification)
SELECT r.*, {_source_class("r")} FROM (
    SELECT d.customer_id, d.source_ip, max(d.asn) AS asn, max(d.as_org) AS as_org, max(d.country) AS country,
           max(d.service_name) AS service_name, max(d.sender_category) AS sender_category,
           round(sum(d.trust_score::numeric) / nullif(count(d.trust_score), 0), 4)::double precision AS trust_score,
           sum(d.messages) AS messages, sum(d.dmarc_pass) AS dmarc_pass,
           round(sum(d.dmarc_pass)::numeric / nullif(sum(d.messages), 0), 4)::double precision AS pass_rate,
           min(d.day) AS first_day, max(d.day) AS last_day, sum(d.aligned_pass) AS aligned_pass,
           sum(d.verdict_disagreements) AS verdict_disagreements, sum(d.forwarded) AS forwarded,
           coalesce(max(d.service_name), max(d.as_org), '{UNKNOWN_NETWORK}') AS service,
           coalesce(sum(d.trust_score::numeric), 0) AS trust_total, count(d.trust_score) AS trust_days
    FROM {days}
    GROUP BY d.customer_id, d.source_ip
) r {_joined("r", "service_name")}
"""


_SRC_RECOMPUTE_CHANGED = _src_recompute(_SRC_CHANGED_DAYS)
_SRC_RECOMPUTE_NEW = _src_recompute(_SRC_NEW_DAYS)

_SRC_ADD = f"""
WITH r AS (
    SELECT s.customer_id, s.source_ip,
           greatest(s.asn, k.asn) AS asn, greatest(s.as_org, k.as_org) AS as_org,
           greatest(s.country, k.country) AS country, greatest(s.service_name, k.service_name) AS service_name,
           greatest(s.sender_category, k.sender_category) AS sender_category,
           round((s.trust_total + k.trust_total) / nullif(s.trust_days + k.trust_days, 0), 4)::double precision
               AS trust_score,
           s.messages + k.messages AS messages, s.dmarc_pass + k.dmarc_pass AS dmarc_pass,
           round((s.dmarc_pass + k.dmarc_pass)::numeric / nullif(s.messages + k.messages, 0), 4)::double precision
               AS pass_rate,
           least(s.first_day, k.first_day) AS first_day, greatest(s.last_day, k.last_day) AS last_day,
           s.aligned_pass + k.aligned_pass AS aligned_pass,
           s.verdict_disagreements + k.verdict_disagreements AS verdict_disagreements,
           s.forwarded + k.forwarded AS forwarded,
           coalesce(greatest(s.service_name, k.service_name), greatest(s.as_org, k.as_org), '{UNKNOWN_NETWORK}')
               AS service,
           s.trust_total + k.trust_total AS trust_total, s.trust_days + k.trust_days AS trust_days
    FROM src_keys k JOIN source_summary s ON s.customer_id = k.customer_id AND s.source_ip = k.source_ip
    WHERE k.has_row AND NOT k.changed
)
UPDATE source_summary s SET ({_SOURCE_COLUMNS}, classification) = (r.*, {_source_class("r")})
FROM r {_joined("r", "service_name")} WHERE s.customer_id = r.customer_id AND s.source_ip = r.source_ip
"""

_SVC_KEYS = """
CREATE TEMP TABLE svc_keys ON COMMIT DROP AS
SELECT coalesce(n.customer_id, o.customer_id) AS customer_id, coalesce(n.service, o.service) AS service,
       bool_or(n.service IS NULL OR (o.service IS NOT NULL AND o.known_service IS DISTINCT FROM n.known_service))
           AS recompute,
       sum(coalesce(n.messages, 0) - coalesce(o.messages, 0)) AS messages,
       sum(coalesce(n.dmarc_pass, 0) - coalesce(o.dmarc_pass, 0)) AS dmarc_pass,
       sum(coalesce(n.aligned_pass, 0) - coalesce(o.aligned_pass, 0)) AS aligned_pass,
       sum(coalesce(n.forwarded, 0) - coalesce(o.forwarded, 0)) AS forwarded,
       sum(coalesce(n.trust_total, 0) - coalesce(o.trust_total, 0)) AS trust_total,
       bool_or(n.known_service) AS known_service, min(n.day) AS first_day, max(n.day) AS last_day
FROM old_svc o FULL JOIN new_svc n ON n.customer_id = o.customer_id AND n.service = o.service AND n.day = o.day
GROUP BY 1, 2
"""

_SERVICE_COLUMNS = (
    "customer_id, service, known_service, messages, dmarc_pass, aligned_pass, forwarded, trust_score, first_day, "
    "last_day, trust_total"
)

_SVC_RECOMPUTE = f"""
INSERT INTO service_summary ({_SERVICE_COLUMNS}, sources, marked, classification)
SELECT r.*, (SELECT count(*) FROM source_summary s WHERE s.customer_id = r.customer_id AND s.service = r.service),
       m.service IS NOT NULL, {_service_class("r")}
FROM (
    SELECT d.customer_id, d.service, bool_or(d.known_service) AS known_service, sum(d.messages) AS messages,
           sum(d.dmarc_pass) AS dmarc_pass, sum(d.aligned_pass) AS aligned_pass, sum(d.forwarded) AS forwarded,
           round(sum(d.trust_sum::numeric) / nullif(sum(d.messages), 0), 4)::double precision AS trust_score,
           min(d.day) AS first_day, max(d.day) AS last_day, sum(d.trust_sum::numeric) AS trust_total
    FROM svc_keys k JOIN daily_domain_services d ON d.customer_id = k.customer_id AND d.service = k.service
    WHERE k.recompute
    GROUP BY d.customer_id, d.service
) r {_joined("r", "service")}
"""

_SVC_ADD = f"""
WITH r AS (
    SELECT v.customer_id, v.service, v.known_service OR coalesce(k.known_service, false) AS known_service,
           v.messages + k.messages AS messages, v.dmarc_pass + k.dmarc_pass AS dmarc_pass,
           v.aligned_pass + k.aligned_pass AS aligned_pass, v.forwarded + k.forwarded AS forwarded,
           round((v.trust_total + k.trust_total) / nullif(v.messages + k.messages, 0), 4)::double precision
               AS trust_score,
           least(v.first_day, k.first_day) AS first_day, greatest(v.last_day, k.last_day) AS last_day,
           v.trust_total + k.trust_total AS trust_total
    FROM svc_keys k JOIN service_summary v ON v.customer_id = k.customer_id AND v.service = k.service
    WHERE NOT k.recompute
)
UPDATE service_summary v SET ({_SERVICE_COLUMNS}, marked, classification) =
    (r.*, m.service IS NOT NULL, {_service_class("r")})
FROM r {_joined("r", "service")} WHERE v.customer_id = r.customer_id AND v.service = r.service
"""

# How many sources each service gained or lost (a source's service is its service name, or its
# AS organisation): the touched sources' services before and after.
_SOURCES_MOVED = """
CREATE TEMP TABLE sources_moved ON COMMIT DROP AS
SELECT customer_id, service, sum(n) AS sources FROM (
    SELECT customer_id, service, 1 AS n FROM src_after UNION ALL SELECT customer_id, service, -1 FROM src_before
) moved GROUP BY customer_id, service HAVING sum(n) <> 0
"""

# A service the customer marked or unmarked: its sources and its summary, whatever their days.
_REMARKED = (
    f"""WITH r AS (
            SELECT s.customer_id, s.source_ip, {_source_class("s")} AS classification
            FROM remarks x JOIN source_summary s ON s.customer_id = x.customer_id AND s.service = x.service
            {_joined("s", "service_name")})
        UPDATE source_summary s SET classification = r.classification FROM r
        WHERE s.customer_id = r.customer_id AND s.source_ip = r.source_ip""",
    f"""WITH r AS (
            SELECT v.customer_id, v.service, m.service IS NOT NULL AS marked, {_service_class("v")} AS classification
            FROM remarks x JOIN service_summary v ON v.customer_id = x.customer_id AND v.service = x.service
            {_joined("v", "service")})
        UPDATE service_summary v SET marked = r.marked, classification = r.classification FROM r
        WHERE v.customer_id = r.customer_id AND v.service = r.service""",
)

# A customer's categories, read as a skip scan of source_summary_by_category: one index probe
# per category present, whatever the number of sources.
_CATEGORIES = """
coalesce((
    WITH RECURSIVE found AS (
        (SELECT s.sender_category FROM source_summary s
         WHERE s.customer_id = c.customer_id AND s.sender_category IS NOT NULL
         ORDER BY s.sender_category LIMIT 1)
        UNION ALL
        SELECT (SELECT s.sender_category FROM source_summary s
                WHERE s.customer_id = c.customer_id AND s.sender_category > found.sender_category
                ORDER BY s.sender_category LIMIT 1)
        FROM found WHERE found.sender_category IS NOT NULL
    )
    SELECT array_agg(sender_category ORDER BY sender_category) FROM found WHERE sender_category IS NOT NULL
), '{}')
"""

_CUSTOMERS = (
    # existing customers: their sources gained or lost
    """UPDATE customer_summary c SET sources = c.sources + d.sources FROM (
           SELECT customer_id, sum(n) AS sources FROM (
               SELECT customer_id, 1 AS n FROM src_after UNION ALL SELECT customer_id, -1 FROM src_before
           ) moved GROUP BY customer_id
       ) d WHERE c.customer_id = d.customer_id""",
    # new customers: counted
    """INSERT INTO customer_summary (customer_id, sources, categories)
       SELECT t.customer_id, (SELECT count(*) FROM source_summary s WHERE s.customer_id = t.customer_id), '{}'
       FROM (SELECT DISTINCT customer_id FROM src_keys) t
       WHERE NOT EXISTS (SELECT 1 FROM customer_summary c WHERE c.customer_id = t.customer_id)""",
    f"""UPDATE customer_summary c SET categories = {_CATEGORIES}
        FROM (SELECT DISTINCT customer_id FROM src_keys) t WHERE c.customer_id = t.customer_id""",
    """DELETE FROM customer_summary c USING (SELECT DISTINCT customer_id FROM src_keys) t
       WHERE c.customer_id = t.customer_id AND c.sources = 0""",
)


def _temp(conn: psycopg.Connection, name: str, query: str) -> None:
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(sql.Identifier(name), sql.SQL(query)))


def _rollups(conn: psycopg.Connection) -> tuple[int, int]:
    """The all-days rollups of the keys the changed slices touched (old_src, new_src, old_svc,
    new_svc hold those slices' daily rows before and after), and the reclassified services:
    (sources touched, sources of them recomputed from their daily rows)."""
    conn.execute(_SRC_KEYS)
    conn.execute(_SVC_KEYS)
    conn.execute(
        "UPDATE svc_keys k SET recompute = true WHERE NOT k.recompute AND NOT EXISTS "
        "(SELECT 1 FROM service_summary v WHERE v.customer_id = k.customer_id AND v.service = k.service)"
    )
    conn.execute("ANALYZE src_keys")
    conn.execute("ANALYZE svc_keys")
    _temp(
        conn,
        "src_before",
        "SELECT s.customer_id, s.source_ip, s.service FROM source_summary s "
        "JOIN src_keys k ON k.customer_id = s.customer_id AND k.source_ip = s.source_ip WHERE k.has_row",
    )
    conn.execute(
        "DELETE FROM source_summary s USING src_keys k "
        "WHERE k.has_row AND k.changed AND s.customer_id = k.customer_id AND s.source_ip = k.source_ip"
    )
    conn.execute(_SRC_RECOMPUTE_CHANGED)
    conn.execute(_SRC_RECOMPUTE_NEW)
    conn.execute(_SRC_ADD)
    _temp(
        conn,
        "src_after",
        "SELECT s.customer_id, s.source_ip, s.service FROM source_summary s "
        "JOIN src_keys k ON k.customer_id = s.customer_id AND k.source_ip = s.source_ip",
    )
    conn.execute(_SOURCES_MOVED)
    conn.execute(
        "DELETE FROM service_summary v USING svc_keys k "
        "WHERE k.recompute AND v.customer_id = k.customer_id AND v.service = k.service"
    )
    conn.execute(_SVC_RECOMPUTE)  # counts the sources of the services it recomputes
    conn.execute(_SVC_ADD)
    conn.execute(
        "UPDATE service_summary v SET sources = v.sources + m.sources FROM sources_moved m "
        "WHERE v.customer_id = m.customer_id AND v.service = m.service AND NOT EXISTS "
        "(SELECT 1 FROM svc_keys k WHERE k.recompute AND k.customer_id = m.customer_id AND k.service = m.service)"
    )
    # Services marked or unmarked since the last refresh: mostly none, and then nothing to join.
    # Otherwise analysed first: an unanalysed temp table is priced as thousands of rows, which
    # could make the planner hash a customer's whole source_summary rather than probe its index.
    if conn.execute("SELECT EXISTS (SELECT 1 FROM remarks)").fetchone()[0]:
        conn.execute("ANALYZE remarks")
        for statement in _REMARKED:
            conn.execute(statement)
    for statement in _CUSTOMERS:
        conn.execute(statement)
    return conn.execute("SELECT count(*), count(*) FILTER (WHERE changed OR NOT has_row) FROM src_keys").fetchone()


@dataclass(frozen=True)
class RefreshResult:
    slices: int
    domain_rows: int
    source_rows: int
    sources_touched: int = 0  # the all-days source rows the slices touched
    sources_recomputed: int = 0  # of those, read again from their daily rows (new, left a day, attributes changed)


def _recompute(conn: psycopg.Connection, customers: list[str] | None = None) -> RefreshResult:
    """Recompute the slices in the temporary table ``slices``, and the rollups' keys they touch
    (``customers``: only theirs are touched at all, reclassifications included)."""
    slices = conn.execute("SELECT count(*) FROM slices").fetchone()[0]
    conn.execute("ANALYZE slices")
    _temp(conn, "old_src", _SRC_DAILY)
    _temp(conn, "old_svc", _SVC_DAILY)
    if customers is None:
        _temp(conn, "remarks", "WITH taken AS (DELETE FROM projection_reclassify RETURNING *) SELECT * FROM taken")
    else:
        conn.execute(
            "CREATE TEMP TABLE remarks ON COMMIT DROP AS WITH taken AS (DELETE FROM projection_reclassify "
            "WHERE customer_id = ANY(%s) RETURNING *) SELECT * FROM taken",
            (customers,),
        )
    for table in DAILY_TABLES:
        conn.execute(
            sql.SQL("DELETE FROM {} d USING slices s WHERE d.customer_id = s.customer_id AND d.day = s.day").format(
                sql.Identifier(table)
            )
        )
    domain_rows = conn.execute(_DOMAIN_INSERT).rowcount
    source_rows = conn.execute(_SOURCE_INSERT).rowcount
    conn.execute(_REPORT_INSERT)
    conn.execute(_DOMAIN_SERVICES_INSERT)
    conn.execute(_DOMAIN_SOURCES_INSERT)
    _temp(conn, "new_src", _SRC_DAILY)
    _temp(conn, "new_svc", _SVC_DAILY)
    touched, recomputed = _rollups(conn)
    return RefreshResult(slices, domain_rows, source_rows, touched, recomputed)


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
        # A refresh joins a few changed slices and the keys they touch with tables that hold the
        # whole history. With PostgreSQL's default random_page_cost (4, a spinning disk's), the
        # planner hashes a customer's every all-days row rather than probe the index for the few
        # keys touched once the history is a few months long; priced as the SSDs a warehouse runs
        # on, it probes for a few keys and still hashes when a refresh touches most of them.
        conn.execute("SET LOCAL random_page_cost = 1.1")
        return _recompute(conn)


def rebuild(database_url: str, customers: Sequence[str] | None = None) -> RefreshResult:
    """Recompute every slice from the events (after a migration, or to check upkeep). With
    ``customers``, only theirs: their rows are deleted and recomputed in one transaction, the other
    tenants' rows are not read or written (a rebuild costs one customer's history, not the
    warehouse's), and rebuilds of other customers run at the same time (:func:`rebuild_in_parallel`):
    a refresh waits for them all, and they for it."""
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            if customers is None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                conn.execute("DELETE FROM projection_dirty")
                conn.execute("DELETE FROM projection_reclassify")  # every row is classified anew
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, PROJECTION_TABLES))))
                conn.execute(
                    "CREATE TEMP TABLE slices ON COMMIT DROP AS "
                    "SELECT DISTINCT customer_id, day FROM telemetry_events WHERE day IS NOT NULL"
                )
                chosen = None
            else:
                chosen = sorted(set(customers))
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_LOCK,))  # no refresh meanwhile
                for customer in chosen:  # one rebuild of a customer at a time; in order, so none deadlock
                    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK, customer))
                conn.execute("DELETE FROM projection_dirty WHERE customer_id = ANY(%s)", (chosen,))
                for table in PROJECTION_TABLES:
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE customer_id = ANY(%s)").format(sql.Identifier(table)), (chosen,)
                    )
                conn.execute(
                    "CREATE TEMP TABLE slices ON COMMIT DROP AS SELECT DISTINCT customer_id, day "
                    "FROM telemetry_events WHERE customer_id = ANY(%s) AND day IS NOT NULL",
                    (chosen,),
                )
            result = _recompute(conn, chosen)  # a customer's rows are classified anew: its remarks go
        # Every row is new: give the planner their statistics now rather than at autovacuum's leisure
        # (without them it scans a customer's 200,000 sources where an index walk reads 25).
        if customers is None:
            _analyze_projections(conn)
        return result


# Every customer with events, by a skip scan of the primary key (customer_id leads it): one probe
# per customer per partition, not a read of the events.
_CUSTOMERS_WITH_EVENTS = """
WITH RECURSIVE found AS (
    (SELECT customer_id FROM telemetry_events ORDER BY customer_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.customer_id FROM telemetry_events e WHERE e.customer_id > found.customer_id
            ORDER BY e.customer_id LIMIT 1)
    FROM found WHERE found.customer_id IS NOT NULL
)
SELECT customer_id FROM found WHERE customer_id IS NOT NULL
"""


def rebuild_in_parallel(database_url: str, jobs: int, customers: Sequence[str] | None = None) -> RefreshResult:
    """A rebuild by customer, ``jobs`` sessions at once (a disaster-recovery rebuild of a large
    warehouse: one transaction over the whole history is one backend's work). Without
    ``customers``, every customer with events, and the projections of customers without any go.
    Each customer's rows are committed as its rebuild ends; a refresh meanwhile waits."""
    from concurrent.futures import ThreadPoolExecutor

    with psycopg.connect(database_url, autocommit=True) as conn:
        if customers is None:
            chosen = [c for (c,) in conn.execute(_CUSTOMERS_WITH_EVENTS).fetchall()]
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                for table in PROJECTION_TABLES:  # a customer whose events are all gone keeps no figures
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE NOT customer_id = ANY(%s)").format(sql.Identifier(table)),
                        (chosen,),
                    )
        else:
            chosen = sorted(set(customers))
    # the largest first would balance better; customers come in key order, which spreads them
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda c: rebuild(database_url, [c]), chosen))
    if customers is None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            _analyze_projections(conn)
    return RefreshResult(
        sum(r.slices for r in results),
        sum(r.domain_rows for r in results),
        sum(r.source_rows for r in results),
        sum(r.sources_touched for r in results),
        sum(r.sources_recomputed for r in results),
    )


def _analyze_projections(conn: psycopg.Connection) -> None:
    """Statistics for every projection table, after a rebuild wrote all their rows anew."""
    conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, PROJECTION_TABLES))))


def dirty_slices(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM projection_dirty").fetchone()[0]


# the per-(customer, day) projections: a changed slice's rows are deleted and recomputed
DAILY_TABLES = (
    "daily_domain_compliance",
    "daily_source_summary",
    "daily_reports",
    "daily_domain_services",
    "daily_domain_sources",
)
PROJECTION_TABLES = (
    "daily_domain_compliance",
    "daily_source_summary",
    "daily_reports",
    "source_summary",
    "daily_domain_services",
    "service_summary",
    "customer_summary",
    "daily_domain_sources",
)
