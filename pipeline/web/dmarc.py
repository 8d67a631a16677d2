"""The answers DMARC users come for: who sends as me, is it authorized, what breaks at p=reject.

Read as the tenant (row-level security), from the projections (``service_summary``,
``daily_domain_services``, ``daily_reports``, ``source_summary``), which are rebuildable from
``telemetry_events`` and ``customer_events``. The rules are documented in docs/DMARC.md.

"DMARC pass" everywhere is the receiving system's verdict (policy_evaluated DKIM or SPF pass);
"aligned" is the alignment recomputed from the authentication results.
"""

from __future__ import annotations

import datetime as dt

import psycopg

from pipeline.warehouse.projections import UNKNOWN_NETWORK
from pipeline.web.queries import CLASSIFICATIONS
from pipeline.web.window import ALL, Window

# Policy readiness (docs/DMARC.md): the staged rollout, and what "safe now" means.
LADDER = [("none", 100), ("quarantine", 25), ("quarantine", 100), ("reject", 25), ("reject", 100)]
READY_ALIGNED_RATE = 0.98  # every authorized service at least this aligned ...
READY_WINDOW_DAYS = 30  # ... over the domain's last 30 days of reports
READY_QUIET_DAYS = 14  # no authorized service first seen in the last 14 days
READY_MIN_DAYS = 14  # and at least 14 days of reports to judge by


def _rate(part, whole) -> float | None:
    return round(int(part) / int(whole), 4) if whole else None


def _volumes(rows: list[dict], *dates: str) -> list[dict]:
    """Sums as integers, the pass rate beside them, dates as ISO strings."""
    for row in rows:
        row["messages"], row["dmarc_pass"] = int(row["messages"]), int(row["dmarc_pass"])
        row["pass_rate"] = _rate(row["dmarc_pass"], row["messages"])
        for key in dates:
            row[key] = row[key].isoformat() if row[key] else None
    return rows


# A window's services: their figures summed over the window's days (daily_domain_services), their
# classification and mark from their all-days row, their sources counted among the window's.
_WINDOWED_SERVICES = f"""
WITH w AS (
    SELECT service, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass, sum(aligned_pass) AS aligned_pass,
           sum(forwarded) AS forwarded, sum(trust_sum::numeric) AS trust_total, min(day) AS first_day,
           max(day) AS last_day
    FROM daily_domain_services WHERE customer_id = %(c)s AND day BETWEEN %(first)s AND %(last)s GROUP BY service
), ws AS (
    -- a source's service as the rollups name it (its service, else its organisation), from the
    -- window's own daily rows: no probe of the all-days row per source
    SELECT service, count(*) AS sources FROM (
        SELECT coalesce(max(service_name), max(as_org), '{UNKNOWN_NETWORK}') AS service
        FROM daily_source_summary WHERE customer_id = %(c)s AND day BETWEEN %(first)s AND %(last)s
        GROUP BY source_ip) d
    GROUP BY service
)
SELECT w.service, v.known_service, v.classification, v.marked, w.messages, w.dmarc_pass, w.aligned_pass,
       w.forwarded, round(w.trust_total / nullif(w.messages, 0), 4)::double precision AS trust_score,
       coalesce(ws.sources, 0) AS sources, w.first_day, w.last_day
FROM w JOIN service_summary v ON v.customer_id = %(c)s AND v.service = w.service
LEFT JOIN ws ON ws.service = w.service
WHERE %(k)s = '' OR v.classification = %(k)s
ORDER BY w.messages DESC, w.service
"""


def services(conn, customer_id: str, classification: str = "", window: Window = ALL) -> list[dict]:
    params = {"c": customer_id, "k": classification if classification in CLASSIFICATIONS else ""}
    if window.bounded:
        params["first"], params["last"] = window.bounds
        rows = conn.execute(_WINDOWED_SERVICES, params).fetchall()
    else:
        rows = conn.execute(
            """SELECT service, known_service, classification, marked, messages, dmarc_pass, aligned_pass, forwarded,
                      trust_score, sources, first_day, last_day
               FROM service_summary WHERE customer_id = %(c)s AND (%(k)s = '' OR classification = %(k)s)
               ORDER BY messages DESC, service""",
            params,
        ).fetchall()
    out = []
    for row in rows:
        out.append(
            {
                "name": row["service"],
                "known_service": row["known_service"],
                "classification": row["classification"],
                "marked": row["marked"],
                "messages": int(row["messages"]),
                "dmarc_pass": int(row["dmarc_pass"]),
                "pass_rate": _rate(row["dmarc_pass"], row["messages"]),
                "aligned_pass": int(row["aligned_pass"]),
                "aligned_rate": _rate(row["aligned_pass"], row["messages"]),
                "forwarded": int(row["forwarded"]),
                "trust_score": row["trust_score"],
                "sources": int(row["sources"]),
                "first_day": row["first_day"].isoformat(),
                "last_day": row["last_day"].isoformat(),
            }
        )
    return out


def service_classes(conn, customer_id: str, window: Window = ALL) -> dict[str, dict]:
    """Per classification: how many services, and their messages (the overview's summary)."""
    if window.bounded:
        found: dict = {}
        for service in services(conn, customer_id, window=window):
            entry = found.setdefault(service["classification"], {"services": 0, "messages": 0})
            entry["services"] += 1
            entry["messages"] += service["messages"]
        return {c: found.get(c, {"services": 0, "messages": 0}) for c in CLASSIFICATIONS}
    rows = conn.execute(
        """SELECT classification, count(*) AS services, sum(messages) AS messages FROM service_summary
           WHERE customer_id = %s GROUP BY classification""",
        (customer_id,),
    ).fetchall()
    found = {r["classification"]: {"services": int(r["services"]), "messages": int(r["messages"])} for r in rows}
    return {c: found.get(c, {"services": 0, "messages": 0}) for c in CLASSIFICATIONS}


def mark_service(database_url: str, customer_id: str, service: str, mine: bool) -> None:
    """Record the customer's choice (an event); the classification follows at the next refresh."""
    with psycopg.connect(database_url) as conn:
        record_mark(conn, customer_id, service, mine)


def record_mark(conn, customer_id: str, service: str, mine: bool) -> None:
    """``mark_service`` on a connection (the web application's, as the tenant)."""
    service = service.strip()[:200]
    if not service:
        raise ValueError("name the service to mark")
    conn.execute(
        "INSERT INTO customer_events (customer_id, kind, subject) VALUES (%s, %s, %s)",
        (customer_id, "service_marked" if mine else "service_unmarked", service),
    )


def _next_step(policy: str | None, pct: int | None) -> tuple[str, int] | None:
    current = (policy or "none", 100 if pct is None else int(pct))
    rank = {"none": 0, "quarantine": 1, "reject": 2}.get(current[0], 0)
    for step in LADDER:
        step_rank = {"none": 0, "quarantine": 1, "reject": 2}[step[0]]
        if step_rank > rank or (step_rank == rank and step[1] > current[1]):
            return step
    return None


def readiness(conn, customer_id: str) -> list[dict]:
    """Per domain: current policy, the next step, whether it is safe now, and what blocks it."""
    current = conn.execute(
        """SELECT DISTINCT ON (policy_domain) policy_domain, policy_p, policy_pct
           FROM daily_reports WHERE customer_id = %s AND policy_domain IS NOT NULL AND day <= CURRENT_DATE + 1
           ORDER BY policy_domain, report_end DESC NULLS LAST""",
        (customer_id,),
    ).fetchall()
    per_domain = conn.execute(
        """WITH span AS (
               -- a day after tomorrow is no report's (the collector refuses them): never the reference
               SELECT policy_domain, max(day) AS last_day FROM daily_domain_services
               WHERE customer_id = %(c)s AND day <= CURRENT_DATE + 1 GROUP BY policy_domain),
           per_service AS (
               SELECT d.policy_domain, d.service, min(d.day) AS first_day,
                      sum(d.messages) FILTER (WHERE d.day > s.last_day - %(window)s) AS messages,
                      sum(d.aligned_pass) FILTER (WHERE d.day > s.last_day - %(window)s) AS aligned,
                      count(DISTINCT d.day) FILTER (WHERE d.day > s.last_day - %(window)s) AS days
               FROM daily_domain_services d JOIN span s USING (policy_domain)
               WHERE d.customer_id = %(c)s AND d.day <= s.last_day GROUP BY d.policy_domain, d.service)
           SELECT p.*, s.last_day, v.classification,
                  (SELECT count(DISTINCT day) FROM daily_domain_services x WHERE x.customer_id = %(c)s
                     AND x.policy_domain = p.policy_domain AND x.day > s.last_day - %(window)s) AS domain_days
           FROM per_service p JOIN span s USING (policy_domain)
           JOIN service_summary v ON v.customer_id = %(c)s AND v.service = p.service
           ORDER BY p.policy_domain, p.messages DESC NULLS LAST, p.service""",
        {"c": customer_id, "window": READY_WINDOW_DAYS},
    ).fetchall()
    policies = {r["policy_domain"]: (r["policy_p"], r["policy_pct"]) for r in current}
    domains: dict[str, dict] = {}
    for row in per_domain:
        domain = row["policy_domain"]
        if domain not in domains:
            policy, pct = policies.get(domain, (None, None))
            step = _next_step(policy, pct)
            days = int(row["domain_days"] or 0)
            blockers = []
            if days < READY_MIN_DAYS:
                blockers.append(
                    {"reason": "too_few_days", "detail": f"{days} day(s) of reports, {READY_MIN_DAYS} needed"}
                )
            domains[domain] = {
                "domain": domain,
                "current_policy": policy or "none",
                "current_pct": 100 if pct is None else int(pct),
                "next_policy": step[0] if step else None,
                "next_pct": step[1] if step else None,
                "ready": False,
                "blockers": blockers,
                "last_day": row["last_day"].isoformat(),
            }
        if row["classification"] != "authorized" or not row["messages"]:
            continue
        entry = domains[domain]
        messages, aligned = int(row["messages"]), int(row["aligned"] or 0)
        if aligned < READY_ALIGNED_RATE * messages:
            entry["blockers"].append(
                {
                    "reason": "not_aligned",
                    "service": row["service"],
                    "messages": messages,
                    "unaligned_messages": messages - aligned,
                    "aligned_rate": _rate(aligned, messages),
                    "detail": f"{row['service']}: {100 * aligned / messages:.1f}% aligned over "
                    f"{READY_WINDOW_DAYS} days, {100 * READY_ALIGNED_RATE:.0f}% needed",
                }
            )
        if row["first_day"] > row["last_day"] - dt.timedelta(days=READY_QUIET_DAYS):
            entry["blockers"].append(
                {
                    "reason": "new_service",
                    "service": row["service"],
                    "messages": messages,
                    "detail": f"{row['service']} first seen {row['first_day']}, less than {READY_QUIET_DAYS} days ago",
                }
            )
    for entry in domains.values():
        entry["ready"] = entry["next_policy"] is not None and not entry["blockers"]
    return list(domains.values())


def disagreements(conn, customer_id: str, limit: int = 100, window: Window = ALL) -> list[dict]:
    """Records where the receiver's verdict and the recomputed alignment differ, newest first
    (within the window's days: the partial index telemetry_events_disagreements is by day)."""
    first, last = window.bounds
    rows = conn.execute(
        """SELECT day, report_org, report_id, policy_domain, source_ip, message_count, policy_dkim, policy_spf,
                  dkim_domain, dkim_result, spf_domain, spf_result, header_from, override_reasons,
                  receiver_pass(policy_dkim, policy_spf) AS dmarc_pass, coalesce(dmarc_pass, false) AS aligned_pass
           FROM telemetry_events
           WHERE customer_id = %s AND day BETWEEN %s AND %s
             AND receiver_pass(policy_dkim, policy_spf) IS DISTINCT FROM coalesce(dmarc_pass, false)
           ORDER BY day DESC, report_id, record_index LIMIT %s""",
        (customer_id, first, last, limit),
    ).fetchall()
    for row in rows:
        row["day"] = row["day"].isoformat() if row["day"] else None
    return rows


def source_detail(conn, customer_id: str, source_ip: str) -> dict | None:
    """One source: its summary, and its DKIM (domain, selector, result) and SPF (domain, scope,
    result) results with volumes."""
    summary = conn.execute(
        "SELECT * FROM source_summary WHERE customer_id = %s AND source_ip = %s", (customer_id, source_ip[:64])
    ).fetchone()
    if summary is None:
        return None
    dkim = _results(conn, customer_id, source_ip, "dkim", "selector")
    spf = _results(conn, customer_id, source_ip, "spf", "scope")
    hidden = ("customer_id", "search", "trust_total", "trust_days")  # the rollup's own bookkeeping
    summary = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in summary.items() if k not in hidden}
    return {"source": summary, "dkim": dkim, "spf": spf}


def _results(conn, customer_id: str, source_ip: str, method: str, detail: str) -> list[dict]:
    """One source's ``method`` (dkim | spf) results: (domain, selector | scope, result) and volume."""
    from psycopg import sql

    column = lambda name: sql.Identifier(f"{method}_{name}")  # noqa: E731
    rows = conn.execute(
        sql.SQL(
            """SELECT coalesce({domain}, '') AS domain, coalesce({detail}, '') AS {label},
                      coalesce({result}, 'none') AS result, sum(message_count) AS messages
               FROM telemetry_events WHERE customer_id = %s AND source_ip = %s
               GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3"""
        ).format(domain=column("domain"), detail=column(detail), label=sql.Identifier(detail), result=column("result")),
        (customer_id, source_ip),
    ).fetchall()
    for row in rows:
        row["messages"] = int(row["messages"] or 0)
    return rows


def countries(conn, customer_id: str, window: Window = ALL) -> list[dict]:
    """Messages and sources per country: all time from the sources' all-days rows, over a window
    from its daily rows (a source counted once, in the country its rows name)."""
    if not window.bounded:
        rows = conn.execute(
            """SELECT coalesce(country, '') AS country, count(*) AS sources, sum(messages) AS messages,
                      sum(dmarc_pass) AS dmarc_pass
               FROM source_summary WHERE customer_id = %s GROUP BY 1 ORDER BY 3 DESC, 1""",
            (customer_id,),
        ).fetchall()
        return _volumes(rows)
    first, last = window.bounds
    rows = conn.execute(
        """SELECT coalesce(country, '') AS country, count(DISTINCT source_ip) AS sources, sum(messages) AS messages,
                  sum(dmarc_pass) AS dmarc_pass
           FROM daily_source_summary WHERE customer_id = %s AND day BETWEEN %s AND %s
           GROUP BY 1 ORDER BY 3 DESC, 1""",
        (customer_id, first, last),
    ).fetchall()
    return _volumes(rows)


def reporters(conn, customer_id: str, window: Window = ALL) -> list[dict]:
    first, last = window.bounds
    rows = conn.execute(
        """SELECT report_org, count(*) AS reports, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
                  max(report_end) AS last_report
           FROM daily_reports WHERE customer_id = %s AND day BETWEEN %s AND %s GROUP BY 1 ORDER BY 3 DESC, 1""",
        (customer_id, first, last),
    ).fetchall()
    return _volumes(rows, "last_report")


def report_list(conn, customer_id: str, limit: int = 200, window: Window = ALL) -> list[dict]:
    first, last = window.bounds
    rows = conn.execute(
        """SELECT report_id, report_org, policy_domain, policy_p, policy_pct, report_begin, report_end,
                  messages, dmarc_pass, aligned_pass
           FROM daily_reports WHERE customer_id = %s AND day BETWEEN %s AND %s
           ORDER BY report_end DESC NULLS LAST, report_id LIMIT %s""",
        (customer_id, first, last, limit),
    ).fetchall()
    for row in rows:
        row["aligned_pass"] = int(row["aligned_pass"])
    return _volumes(rows, "report_begin", "report_end")


# One domain's figures over a window (domain_detail): its daily rows of each projection.

_IN_DOMAIN = "customer_id = %(c)s AND policy_domain = %(d)s AND day BETWEEN %(first)s AND %(last)s"

_DOMAIN_TREND = f"""SELECT day, sum(reports) AS reports, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
           sum(dmarc_fail) AS dmarc_fail, sum(aligned_pass) AS aligned_pass,
           sum(verdict_disagreements) AS verdict_disagreements, sum(disposition_quarantine) AS quarantine,
           sum(disposition_reject) AS reject, sum(spf_pass) AS spf_pass, sum(dkim_pass) AS dkim_pass
    FROM daily_domain_compliance WHERE {_IN_DOMAIN} GROUP BY day ORDER BY day"""

_DOMAIN_SERVICES = f"""SELECT w.service, v.classification, coalesce(v.marked, false) AS marked,
           w.messages, w.dmarc_pass, w.aligned_pass
    FROM (SELECT service, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
                 sum(aligned_pass) AS aligned_pass
          FROM daily_domain_services WHERE {_IN_DOMAIN} GROUP BY service) w
    LEFT JOIN service_summary v ON v.customer_id = %(c)s AND v.service = w.service
    ORDER BY w.messages DESC, w.service LIMIT %(limit)s"""

_DOMAIN_SOURCES = f"""SELECT w.source_ip, s.as_org, s.country, s.service, s.classification, w.messages, w.dmarc_pass,
           w.aligned_pass
    FROM (SELECT source_ip, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
                 sum(aligned_pass) AS aligned_pass
          FROM daily_domain_sources WHERE {_IN_DOMAIN} GROUP BY source_ip
          ORDER BY sum(messages) DESC, source_ip LIMIT %(limit)s) w  -- the top rows, then their attributes
    LEFT JOIN source_summary s ON s.customer_id = %(c)s AND s.source_ip = w.source_ip
    ORDER BY w.messages DESC, w.source_ip"""

_DOMAIN_SUBDOMAINS = f"""SELECT header_from, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass,
           sum(aligned_pass) AS aligned_pass, count(DISTINCT source_ip) AS sources
    FROM daily_domain_sources WHERE {_IN_DOMAIN}
    GROUP BY header_from ORDER BY sum(messages) DESC, header_from LIMIT %(limit)s"""

_DOMAIN_REPORTERS = f"""SELECT report_org, count(*) AS reports, sum(messages) AS messages,
           sum(dmarc_pass) AS dmarc_pass, max(report_end) AS last_report
    FROM daily_reports WHERE {_IN_DOMAIN} GROUP BY report_org ORDER BY sum(messages) DESC, report_org"""


def domain_detail(conn, customer_id: str, domain: str, window: Window = ALL, limit: int = 50) -> dict | None:
    """One policy domain over ``window``: its figures and trend, the services and sources that
    send as it, its header_from subdomains, its reporters and its readiness. None when the
    customer has no report about it (another tenant's domain reads as none: row-level security)."""
    known = conn.execute(
        "SELECT 1 FROM daily_domain_compliance WHERE customer_id = %s AND policy_domain = %s LIMIT 1",
        (customer_id, domain),
    ).fetchone()
    if known is None:
        return None
    first, last = window.bounds
    params = {"c": customer_id, "d": domain, "first": first, "last": last, "limit": limit}
    trend = conn.execute(_DOMAIN_TREND, params).fetchall()
    trend = [{k: (v if k == "day" else int(v)) for k, v in row.items()} for row in trend]
    totals = {k: sum(t[k] for t in trend) for k in ("reports", "messages", "dmarc_pass", "aligned_pass")}
    totals["verdict_disagreements"] = sum(t["verdict_disagreements"] for t in trend)
    services = conn.execute(_DOMAIN_SERVICES, params).fetchall()
    sources = conn.execute(_DOMAIN_SOURCES, params).fetchall()
    subdomains = conn.execute(_DOMAIN_SUBDOMAINS, params).fetchall()
    reporters = conn.execute(_DOMAIN_REPORTERS, params).fetchall()
    messages = totals["messages"]
    return {
        "domain": domain,
        "window": window.as_dict(),
        **totals,
        "dmarc_pass_rate": _rate(totals["dmarc_pass"], messages),
        "aligned_rate": _rate(totals["aligned_pass"], messages),
        "first_day": trend[0]["day"].isoformat() if trend else None,
        "last_day": trend[-1]["day"].isoformat() if trend else None,
        "trend": [{**t, "day": t["day"].isoformat()} for t in trend],
        "services": [_rated(row) for row in services],
        "sources": [_rated(row) for row in sources],
        "subdomains": [_rated(row) for row in subdomains],
        "reporters": _volumes(reporters, "last_report"),
        "readiness": next((r for r in readiness(conn, customer_id) if r["domain"] == domain), None),
    }


def _rated(row: dict) -> dict:
    out = {k: (int(v) if k in ("messages", "dmarc_pass", "aligned_pass", "sources") else v) for k, v in row.items()}
    out["pass_rate"] = _rate(out["dmarc_pass"], out["messages"])
    out["aligned_rate"] = _rate(out["aligned_pass"], out["messages"])
    return out
