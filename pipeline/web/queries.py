"""What the pages and the API show, read as the tenant.

Every tenant query runs in a transaction as the ``pipeline_web`` role with ``pipeline.customer``
set, so row-level security (migration 0007) limits it to that customer's rows whatever the SQL
says; the explicit ``customer_id`` filters below are for the planner, not for safety.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from pipeline.web.window import ALL, Window

# Sort keys: never NULL (coalesced), so a (key, source_ip) row comparison pages them exactly.
SORTABLE = {
    "messages": "messages",
    "pass_rate": "coalesce(pass_rate, -1)",
    "ip": "source_ip",
    "asn": "coalesce(asn, -1)",
    "org": "coalesce(as_org, '')",
    "service": "coalesce(service_name, '')",
    "category": "coalesce(sender_category, '')",
    "classification": "coalesce(classification, '')",
    "country": "coalesce(country, '')",
}
NUMERIC_SORTS = {"messages", "pass_rate", "asn"}
COUNT_CAP = 1_000  # a filtered source count stops here ("1000+"); unfiltered counts are kept exact
CLASSIFICATIONS = ("authorized", "forwarder", "unauthorized", "suspicious")


WEB_ROLE = "pipeline_web_login"


def web_database_url(database_url: str) -> str:
    """The web application's own connection: PIPELINE_WEB_DATABASE_URL, else the warehouse's
    URL as the pipeline_web_login role (no password: the local stack trusts loopback; set the
    variable, with that role's password, anywhere else)."""
    from urllib.parse import urlsplit, urlunsplit

    from pipeline import config

    configured = config.get("PIPELINE_WEB_DATABASE_URL")
    if configured:
        return configured
    parts = urlsplit(database_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{WEB_ROLE}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Warehouse:
    """The web application's connections: a pool, each connection with a statement timeout and
    an idle-in-transaction timeout (PIPELINE_WEB_STATEMENT_TIMEOUT_S), so no request, however
    its query or its client behaves, holds a connection or a snapshot for long."""

    def __init__(self, database_url: str, pool_size: int = 10):
        from pipeline import config

        self.database_url = database_url
        limit_ms = int(1000 * float(config.get("PIPELINE_WEB_STATEMENT_TIMEOUT_S")))
        options = f"-c statement_timeout={limit_ms} -c idle_in_transaction_session_timeout={limit_ms}"
        self.pool = ConnectionPool(
            database_url, min_size=1, max_size=pool_size, open=True, kwargs={"autocommit": False, "options": options}
        )

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def service(self) -> Iterator[psycopg.Connection]:
        """Unscoped access, for sign-in and for the pipeline's own health."""
        with self.pool.connection() as conn:
            conn.row_factory = dict_row
            yield conn

    @contextmanager
    def tenant(self, customer_id: str) -> Iterator[psycopg.Connection]:
        with self.pool.connection() as conn, conn.transaction():
            conn.row_factory = dict_row
            # SET LOCAL ROLE and the tenant in one round trip
            conn.execute(
                "SELECT set_config('role', 'pipeline_web', true), set_config('pipeline.customer', %s, true)",
                (customer_id,),
            )
            yield conn


def _totals(conn, customer_id: str, window: Window) -> dict:
    first, last = window.bounds
    totals = conn.execute(
        """SELECT coalesce(sum(reports), 0) AS reports, coalesce(sum(messages), 0) AS messages,
                  coalesce(sum(dmarc_pass), 0) AS dmarc_pass_messages, coalesce(sum(aligned_pass), 0) AS aligned,
                  coalesce(sum(verdict_disagreements), 0) AS disagreements,
                  min(day) AS first_day, max(day) AS last_day
           FROM daily_domain_compliance WHERE customer_id = %(c)s AND day BETWEEN %(first)s AND %(last)s""",
        {"c": customer_id, "first": first, "last": last},
    ).fetchone()
    if window.bounded:  # the distinct sources of the window's days
        sources = conn.execute(
            """SELECT count(DISTINCT source_ip) AS n FROM daily_source_summary
               WHERE customer_id = %s AND day BETWEEN %s AND %s""",
            (customer_id, first, last),
        ).fetchone()["n"]
    else:  # all time: the customer's rollup holds the count
        found = conn.execute("SELECT sources FROM customer_summary WHERE customer_id = %s", (customer_id,)).fetchone()
        sources = found["sources"] if found else 0
    messages = int(totals["messages"])
    return {
        "reports": int(totals["reports"]),
        "messages": messages,
        "dmarc_pass_messages": int(totals["dmarc_pass_messages"]),
        "dmarc_pass_rate": round(int(totals["dmarc_pass_messages"]) / messages, 4) if messages else None,
        "aligned_pass_messages": int(totals["aligned"]),
        "verdict_disagreements": int(totals["disagreements"]),
        "sources": int(sources or 0),
        "first_day": totals["first_day"].isoformat() if totals["first_day"] else None,
        "last_day": totals["last_day"].isoformat() if totals["last_day"] else None,
    }


def data_through(conn, customer_id: str) -> dict:
    """How current the customer's figures are, shown on every page: the end of the latest
    reporting period among its loaded reports, and the last day that has data (two index lookups:
    daily_reports by report end, and by day)."""
    row = conn.execute(
        """SELECT (SELECT report_end FROM daily_reports WHERE customer_id = %(c)s AND report_end IS NOT NULL
                   ORDER BY report_end DESC LIMIT 1) AS report_end,
                  (SELECT max(day) FROM daily_reports WHERE customer_id = %(c)s) AS day""",
        {"c": customer_id},
    ).fetchone()
    end, day = row["report_end"], row["day"]
    return {
        "report_end": end.astimezone(dt.UTC).isoformat() if end else None,
        "last_day": day.isoformat() if day else None,
        "label": f"{end.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if end else None,
    }


def overview(conn, customer_id: str, window: Window = ALL) -> dict:
    """The customer's figures over ``window``; a bounded window beside the one before it
    (``previous``: the same figures, and ``change``: messages in percent, pass rate in points)."""
    first, last = window.bounds
    trend = conn.execute(
        """SELECT day, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass, sum(dmarc_fail) AS dmarc_fail,
                  sum(spf_pass) AS spf_pass, sum(dkim_pass) AS dkim_pass,
                  sum(disposition_quarantine) AS quarantine, sum(disposition_reject) AS reject
           FROM daily_domain_compliance WHERE customer_id = %s AND day BETWEEN %s AND %s GROUP BY day ORDER BY day""",
        (customer_id, first, last),
    ).fetchall()
    data = {"customer": customer_id, "window": window.as_dict(), **_totals(conn, customer_id, window)}
    before = window.previous()
    data["previous"] = None
    if before is not None:
        data["previous"] = {"window": before.as_dict(), **_totals(conn, customer_id, before)}
        data["change"] = _change(data, data["previous"])
    data["trend"] = [{k: (v.isoformat() if k == "day" else int(v)) for k, v in row.items()} for row in trend]
    data["domains"] = domains(conn, customer_id, window)
    data["data_through"] = data_through(conn, customer_id)
    return data


def _change(now: dict, before: dict) -> dict:
    """How the window differs from the one before: messages in percent, the pass rate in points."""
    was = before["messages"]
    messages = round(100 * (now["messages"] - was) / was, 1) if was else None
    rates = now["dmarc_pass_rate"], before["dmarc_pass_rate"]
    points = round(100 * (rates[0] - rates[1]), 1) if None not in rates else None
    return {"messages_pct": messages, "pass_rate_points": points, "reports": now["reports"] - before["reports"]}


def domains(conn, customer_id: str, window: Window = ALL) -> list[dict]:
    first, last = window.bounds
    rows = conn.execute(
        """SELECT policy_domain AS domain, sum(reports) AS reports, sum(messages) AS messages,
                  sum(dmarc_pass) AS dmarc_pass, sum(dmarc_fail) AS dmarc_fail, sum(spf_pass) AS spf_pass,
                  sum(spf_fail) AS spf_fail, sum(dkim_pass) AS dkim_pass, sum(dkim_fail) AS dkim_fail,
                  sum(disposition_none) AS disposition_none, sum(disposition_quarantine) AS quarantine,
                  sum(disposition_reject) AS reject, sum(aligned_pass) AS aligned_pass,
                  sum(verdict_disagreements) AS verdict_disagreements, sum(forwarded) AS forwarded
           FROM daily_domain_compliance WHERE customer_id = %s AND day BETWEEN %s AND %s
           GROUP BY policy_domain ORDER BY sum(messages) DESC, policy_domain""",
        (customer_id, first, last),
    ).fetchall()
    out = []
    for row in rows:
        item = {k: (v if k == "domain" else int(v)) for k, v in row.items()}
        item["dmarc_pass_rate"] = round(item["dmarc_pass"] / item["messages"], 4) if item["messages"] else None
        out.append(item)
    return out


@dataclass(frozen=True)
class SourceQuery:
    sort: str = "messages"
    descending: bool = True
    search: str = ""
    category: str = ""
    classification: str = ""
    page: int = 1
    per_page: int = 25
    after: tuple | None = None  # keyset cursor: (sort key, source_ip) of the previous page's last row
    window: Window = ALL  # the days whose messages count (a source outside them is not listed)

    @classmethod
    def parse(cls, params) -> SourceQuery:
        def number(name: str, default: int, low: int, high: int) -> int:
            try:
                return max(low, min(high, int(params.get(name, default))))
            except (TypeError, ValueError):
                return default

        sort = params.get("sort", "messages")
        sort = sort if sort in SORTABLE else "messages"
        classification = params.get("classification") or ""
        return cls(
            sort=sort,
            descending=params.get("order", "desc") != "asc",
            search=(params.get("q") or "")[:100],
            category=(params.get("category") or "")[:50],
            classification=classification if classification in CLASSIFICATIONS else "",
            page=number("page", 1, 1, 100_000),
            per_page=number("per_page", 25, 5, 200),
            after=decode_cursor(params.get("after"), sort),
        )


def encode_cursor(key, source_ip: str) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps([key, source_ip]).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, sort: str) -> tuple | None:
    """A cursor from the query string, or None (then paging falls back to the page number)."""
    import base64
    import binascii
    import json

    if not raw or len(raw) > 400:
        return None
    try:
        key, source_ip = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, TypeError):
        return None
    if not isinstance(source_ip, str):
        return None
    if sort in NUMERIC_SORTS:
        return (key, source_ip) if isinstance(key, int | float) and not isinstance(key, bool) else None
    return (key, source_ip) if isinstance(key, str) else None


# A window's figures per source: its daily rows summed over the window's days (daily_source_summary,
# read by its key), and the window's distinct sources counted in the same pass.
_WINDOW_SUMS = """SELECT source_ip, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
           sum(aligned_pass) AS aligned_pass, sum(verdict_disagreements) AS verdict_disagreements,
           min(day) AS first_day, max(day) AS last_day,
           round(sum(dmarc_pass)::numeric / nullif(sum(messages), 0), 4)::double precision AS pass_rate,
           count(*) OVER () AS window_sources
    FROM daily_source_summary WHERE customer_id = %(c)s AND day BETWEEN %(first)s AND %(last)s
    GROUP BY source_ip"""

# A window's sources with their attributes (service, classification, search text) from their
# all-days row: what a filter or an attribute sort reads.
_WINDOWED_SOURCES = f"""(
    SELECT s.customer_id, s.source_ip, s.asn, s.as_org, s.country, s.service_name, s.service, s.sender_category,
           s.classification, s.trust_score, s.search, w.messages, w.dmarc_pass, w.aligned_pass,
           w.verdict_disagreements, w.first_day, w.last_day, w.pass_rate
    FROM ({_WINDOW_SUMS}) w
    JOIN source_summary s ON s.customer_id = %(c)s AND s.source_ip = w.source_ip
) AS windowed"""

# A window's page of sources sorted by its own figures, unfiltered: the page's rows are chosen
# from the window's sums alone, and only they are joined with their all-days rows (attributes).
_WINDOWED_PAGE = f"""
SELECT w.source_ip, s.asn, s.as_org, s.country, s.service_name, s.service, s.sender_category, s.classification,
       s.trust_score, w.messages, w.dmarc_pass, w.aligned_pass, w.verdict_disagreements, w.pass_rate,
       w.first_day, w.last_day, w.sort_key, w.window_sources
FROM (
    SELECT a.*, {{key}} AS sort_key FROM ({_WINDOW_SUMS}) a {{keyset}}
    ORDER BY {{key}} {{direction}}, source_ip {{direction}} LIMIT %(limit)s{{offset}}
) w
LEFT JOIN source_summary s ON s.customer_id = %(c)s AND s.source_ip = w.source_ip
ORDER BY w.sort_key {{direction}}, w.source_ip {{direction}}
"""
FIGURE_SORTS = frozenset({"messages", "pass_rate", "ip"})  # sorts a window's sums alone can order


def _source_relation(query: SourceQuery, params: dict):
    """What the sources are read from: the all-days rollup, or the window's sums."""
    from psycopg import sql

    if not query.window.bounded:
        return sql.SQL("source_summary")
    params["first"], params["last"] = query.window.bounds
    return sql.SQL(_WINDOWED_SOURCES)


def _source_where(customer_id: str, query: SourceQuery):
    from psycopg import sql

    where = [sql.SQL("customer_id = %(c)s")]
    params: dict = {"c": customer_id}
    if query.search:
        where.append(sql.SQL("search LIKE %(q)s"))  # IP, organisation, service, country (lowercased)
        escaped = query.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["q"] = "%" + escaped + "%"
    if query.category:
        where.append(sql.SQL("sender_category = %(category)s"))
        params["category"] = query.category
    if query.classification:
        where.append(sql.SQL("classification = %(classification)s"))
        params["classification"] = query.classification
    return where, params


SOURCE_COLUMNS = (
    "source_ip, asn, as_org, country, service_name, service, sender_category, classification, trust_score, "
    "messages, dmarc_pass, aligned_pass, verdict_disagreements, pass_rate, first_day, last_day"
)


def source_rows(conn, customer_id: str, query: SourceQuery, limit: int | None = None) -> list[dict]:
    """One page of sources (``limit`` rows from the cursor, else from the page number)."""
    from psycopg import sql

    where, params = _source_where(customer_id, query)
    figures_first = query.window.bounded and len(where) == 1 and query.sort in FIGURE_SORTS
    key = sql.SQL(SORTABLE[query.sort])
    direction = sql.SQL("DESC" if query.descending else "ASC")
    params["limit"] = limit or query.per_page
    offset = sql.SQL("")
    if query.after is not None:
        where.append(
            sql.SQL("({key}, source_ip) {op} (%(after_key)s, %(after_ip)s)").format(
                key=key, op=sql.SQL("<" if query.descending else ">")
            )
        )
        params["after_key"], params["after_ip"] = query.after
    elif limit is None:
        offset = sql.SQL(" OFFSET %(offset)s")
        params["offset"] = (query.page - 1) * query.per_page
    if figures_first:
        params["first"], params["last"] = query.window.bounds
        keyset = sql.SQL("WHERE {}").format(where[1]) if len(where) > 1 else sql.SQL("")
        statement = sql.SQL(_WINDOWED_PAGE).format(key=key, keyset=keyset, direction=direction, offset=offset)
        return _source_values(conn.execute(statement, params).fetchall())
    statement = sql.SQL(
        "SELECT {columns}, {key} AS sort_key FROM {relation} WHERE {where} "
        "ORDER BY {key} {direction}, source_ip {direction} LIMIT %(limit)s{offset}"
    ).format(
        columns=sql.SQL(SOURCE_COLUMNS),
        relation=_source_relation(query, params),
        key=key,
        where=sql.SQL(" AND ").join(where),
        direction=direction,
        offset=offset,
    )
    return _source_values(conn.execute(statement, params).fetchall())


def _source_values(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["messages"], row["dmarc_pass"] = int(row["messages"]), int(row["dmarc_pass"])
        row["aligned_pass"], row["verdict_disagreements"] = int(row["aligned_pass"]), int(row["verdict_disagreements"])
        row["first_day"], row["last_day"] = row["first_day"].isoformat(), row["last_day"].isoformat()
    return rows


def sources(conn, customer_id: str, query: SourceQuery) -> dict:
    from psycopg import sql

    where, params = _source_where(customer_id, query)
    summary = conn.execute(
        "SELECT sources, categories FROM customer_summary WHERE customer_id = %s", (customer_id,)
    ).fetchone() or {"sources": 0, "categories": []}
    rows = source_rows(conn, customer_id, query)
    counted = [row.pop("window_sources") for row in rows if "window_sources" in row]
    if len(where) == 1 and not query.window.bounded:  # the count is kept by the projections
        total = int(summary["sources"])
    elif counted:  # a window's page by its own sums: they counted the window's sources as they went
        total = int(counted[0])
    elif len(where) == 1:  # a window's, unfiltered: its days' distinct sources, exact
        first, last = query.window.bounds
        total = conn.execute(
            "SELECT count(DISTINCT source_ip) AS n FROM daily_source_summary "
            "WHERE customer_id = %s AND day BETWEEN %s AND %s",
            (customer_id, first, last),
        ).fetchone()["n"]
    else:  # filtered (or a window's): counted, up to COUNT_CAP (a filter matching most sources stops early)
        relation = _source_relation(query, params)
        total = conn.execute(
            sql.SQL("SELECT count(*) AS n FROM (SELECT 1 FROM {} WHERE {} LIMIT %(cap)s) matched").format(
                relation, sql.SQL(" AND ").join(where)
            ),
            {**params, "cap": COUNT_CAP + 1},
        ).fetchone()["n"]
    next_cursor = None
    if len(rows) == query.per_page:
        last = rows[-1]
        key = last["sort_key"]
        next_cursor = encode_cursor(float(key) if isinstance(key, Decimal) else key, last["source_ip"])
    for row in rows:
        del row["sort_key"]
    categories = list(summary["categories"])
    pages = max(1, -(-min(total, COUNT_CAP) // query.per_page))
    return {
        "items": rows,
        "total": min(total, COUNT_CAP),
        "total_capped": total > COUNT_CAP,
        "page": query.page,
        "pages": pages,
        "next": next_cursor if query.page < pages or total > COUNT_CAP else None,
        "categories": categories,
        "classifications": list(CLASSIFICATIONS),
    }


def report(conn, customer_id: str, report_id: str) -> dict | None:
    rows = conn.execute(
        """SELECT report_org, report_id, report_email, report_begin, report_end, policy_domain, policy_p,
                  source_ip, message_count, disposition, policy_dkim, policy_spf, header_from, dkim_domain,
                  dkim_result, spf_domain, spf_result, country, as_org, service_name, sender_category,
                  receiver_pass(policy_dkim, policy_spf) AS dmarc_pass, dmarc_pass AS aligned_pass, override_reasons,
                  dkim_selector, spf_scope
           FROM telemetry_events WHERE customer_id = %s AND report_id = %s ORDER BY record_index""",
        (customer_id, report_id[:300]),
    ).fetchall()
    if not rows:
        return None
    head = rows[0]
    return {
        "report_org": head["report_org"],
        "report_id": head["report_id"],
        "report_email": head["report_email"],
        "begin": head["report_begin"].isoformat() if head["report_begin"] else None,
        "end": head["report_end"].isoformat() if head["report_end"] else None,
        "policy_domain": head["policy_domain"],
        "policy": head["policy_p"],
        "messages": sum(int(r["message_count"] or 0) for r in rows),
        "records": [
            {
                k: r[k]
                for k in (
                    "source_ip",
                    "message_count",
                    "disposition",
                    "policy_dkim",
                    "policy_spf",
                    "header_from",
                    "dkim_domain",
                    "dkim_result",
                    "spf_domain",
                    "spf_result",
                    "country",
                    "as_org",
                    "service_name",
                    "sender_category",
                    "dmarc_pass",
                    "aligned_pass",
                    "override_reasons",
                    "dkim_selector",
                    "spf_scope",
                )
            }
            for r in rows
        ],
    }


def recent_reports(conn, customer_id: str, limit: int = 10, window: Window = ALL) -> list[dict]:
    first, last = window.bounds
    return conn.execute(
        """SELECT report_id, report_org, policy_domain, report_end, messages
           FROM daily_reports WHERE customer_id = %s AND day BETWEEN %s AND %s
           ORDER BY report_end DESC NULLS LAST, report_id LIMIT %s""",
        (customer_id, first, last, limit),
    ).fetchall()


def health(conn, customer_id: str, enriched_prefix: str) -> dict:
    """The pipeline as it concerns this customer: its last loads and unresolved failures (read
    through the web_* functions: the ledger is no tenant table, the tenant is the session's)."""
    prefix = f"{enriched_prefix}customer={customer_id}/"
    loads = conn.execute("SELECT * FROM web_recent_loads(%s)", (enriched_prefix,)).fetchall()
    failures = conn.execute("SELECT * FROM web_open_failures(%s)", (enriched_prefix,)).fetchall()
    for row in loads + failures:  # keys relative to what the customer knows: its prefix, or the batch's day
        key = row["object_key"]
        row["object_key"] = key[len(prefix) :] if key.startswith(prefix) else key[len(enriched_prefix) :]
    return {"recent_loads": loads, "failures": failures}
