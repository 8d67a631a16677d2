"""Alerts: rules per customer, evaluated when the projections refresh, each firing once per occurrence.

An occurrence has a key (the source, the domain and day, ...); ``alerts`` is unique by
(customer, rule, occurrence), so evaluating again (every refresh, after a rebuild, two evaluators
at once) never fires one twice. Fired alerts are shown in the web application and POSTed to the
customer's webhook, signed: ``X-Pipeline-Signature: sha256=HMAC(secret, timestamp + "." + body)``
with ``X-Pipeline-Timestamp``; delivery is at least once (``X-Pipeline-Alert-Id`` lets a receiver
drop a repeat), retried at each evaluation until it succeeds.

Rules and their defaults are below; a customer changes one with ``pipeline alerts rule`` (an
``alert_rule_set`` customer event). See docs/DMARC.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger("pipeline.alerts")

RECENT_DAYS = 7  # only what happened in the last week, counted back from today, alerts (not old history)
# A day a report claims after today is no evidence (the collector refuses such reports; rows from
# before that check are ignored here): windows end today, so a forged 2099 day silences nothing.
MAX_NEW_PER_EVALUATION = 10  # alerts one tenant gets one by one per evaluation; the rest in one summary
MIN_DAY_MESSAGES = 20  # a day's pass rate is judged only with at least this many messages
MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class Rule:
    name: str
    default: float
    doc: str


RULES = {
    rule.name: rule
    for rule in (
        Rule(
            "new_unauthorized_source",
            100,
            "a source classified unauthorized or suspicious, first seen in the last 7 days of reports, "
            "with at least THRESHOLD messages",
        ),
        Rule(
            "pass_rate_below",
            0.9,
            f"a domain's DMARC pass rate (the receivers' verdict) on one day below THRESHOLD "
            f"(days with at least {MIN_DAY_MESSAGES} messages)",
        ),
        Rule("reports_stopped", 3, "no report for a domain for THRESHOLD days, counted to today"),
        Rule(
            "policy_changed", 0, "a domain's published policy (p, pct) differs from the one its reports showed before"
        ),
    )
}


def set_rule(database_url: str, customer_id: str, rule: str, threshold: float | None, enabled: bool) -> None:
    """Record a customer's rule setting (an event; the latest one per rule applies)."""
    with psycopg.connect(database_url) as conn:
        record_rule(conn, customer_id, rule, threshold, enabled)


def record_rule(conn, customer_id: str, rule: str, threshold: float | None, enabled: bool) -> None:
    """``set_rule`` on a connection: the web application's, as the tenant (row-level security
    lets it record events of its own tenant only)."""
    if rule not in RULES:
        raise ValueError(f"no alert rule {rule!r}: the rules are {', '.join(RULES)}")
    payload = {"enabled": enabled, "threshold": RULES[rule].default if threshold is None else threshold}
    conn.execute(
        "INSERT INTO customer_events (customer_id, kind, subject, payload) VALUES (%s, 'alert_rule_set', %s, %s)",
        (customer_id, rule, json.dumps(payload)),
    )


def rules_for(conn, customer_id: str) -> dict[str, dict]:
    """The customer's rules: the defaults, overridden by their latest settings."""
    rules = {name: {"enabled": True, "threshold": rule.default, "doc": rule.doc} for name, rule in RULES.items()}
    for row in conn.execute(
        """SELECT DISTINCT ON (subject) subject, payload FROM customer_events
           WHERE customer_id = %s AND kind = 'alert_rule_set' ORDER BY subject, event_id DESC""",
        (customer_id,),
    ).fetchall():
        if row["subject"] in rules:
            rules[row["subject"]].update(
                {k: row["payload"][k] for k in ("enabled", "threshold") if k in row["payload"]}
            )
    return rules


def _candidates(conn, today: dt.date) -> list[tuple[str, str, str, str, dict, float]]:
    """(customer, rule, occurrence, message, details, measured value) for every rule, before thresholds."""
    found = []
    for row in conn.execute(
        """SELECT s.customer_id, s.source_ip, s.service, s.classification, s.messages, s.first_day
           FROM source_summary s
           WHERE s.classification IN ('unauthorized', 'suspicious') AND s.first_day > %s::date - %s
             AND s.first_day <= %s::date""",
        (today, RECENT_DAYS, today),
    ).fetchall():
        found.append(
            (
                row["customer_id"],
                "new_unauthorized_source",
                row["source_ip"],
                f"New {row['classification']} source {row['source_ip']} ({row['service']}): "
                f"{row['messages']} messages since {row['first_day']}",
                {"source_ip": row["source_ip"], "service": row["service"], "messages": int(row["messages"])},
                float(row["messages"]),
            )
        )
    for row in conn.execute(
        """SELECT d.customer_id, d.policy_domain, d.day, sum(d.messages) AS messages, sum(d.dmarc_pass) AS pass
           FROM daily_domain_compliance d
           WHERE d.day > %s::date - %s AND d.day <= %s::date GROUP BY 1, 2, 3 HAVING sum(d.messages) >= %s""",
        (today, RECENT_DAYS, today, MIN_DAY_MESSAGES),
    ).fetchall():
        rate = int(row["pass"]) / int(row["messages"])
        found.append(
            (
                row["customer_id"],
                "pass_rate_below",
                f"{row['policy_domain']}/{row['day']}",
                f"DMARC pass rate of {row['policy_domain']} on {row['day']} was {100 * rate:.1f}%",
                {"domain": row["policy_domain"], "day": row["day"].isoformat(), "pass_rate": round(rate, 4)},
                -rate,  # fires when the rate is below the threshold: compared negated
            )
        )
    for row in conn.execute(
        "SELECT customer_id, policy_domain, max(day) AS last_day FROM daily_domain_compliance "
        "WHERE day <= %s::date GROUP BY 1, 2",
        (today,),
    ).fetchall():
        silent = (today - row["last_day"]).days
        found.append(
            (
                row["customer_id"],
                "reports_stopped",
                f"{row['policy_domain']}/{row['last_day']}",
                f"No DMARC report for {row['policy_domain']} since {row['last_day']} ({silent} days)",
                {"domain": row["policy_domain"], "last_day": row["last_day"].isoformat(), "days": silent},
                float(silent),
            )
        )
    for row in conn.execute(
        """WITH ordered AS (
               SELECT customer_id, policy_domain, day, policy_p, policy_pct, report_end,
                      lag(policy_p) OVER w AS before_p, lag(policy_pct) OVER w AS before_pct
               FROM daily_reports WHERE policy_domain IS NOT NULL AND policy_p IS NOT NULL AND day <= %s::date
               WINDOW w AS (PARTITION BY customer_id, policy_domain ORDER BY report_end, report_id))
           SELECT * FROM ordered WHERE before_p IS NOT NULL AND day > %s::date - %s
             AND (before_p, coalesce(before_pct, 100)) IS DISTINCT FROM (policy_p, coalesce(policy_pct, 100))""",
        (today, today, RECENT_DAYS),
    ).fetchall():
        before = f"p={row['before_p']} pct={row['before_pct'] or 100}"
        after = f"p={row['policy_p']} pct={row['policy_pct'] or 100}"
        found.append(
            (
                row["customer_id"],
                "policy_changed",
                f"{row['policy_domain']}/{row['day']}/{before}->{after}",
                f"The policy of {row['policy_domain']} changed from {before} to {after} (reports of {row['day']})",
                {"domain": row["policy_domain"], "day": row["day"].isoformat(), "before": before, "after": after},
                1.0,
            )
        )
    return found


def _fires(rule: str, value: float, threshold: float) -> bool:
    if rule == "pass_rate_below":
        return -value < threshold
    if rule == "policy_changed":
        return True
    return value >= threshold


def evaluate(database_url: str, today: dt.date | None = None) -> list[dict]:
    """Fire the alerts whose occurrence is new; returns the ones to deliver (already-fired
    occurrences are skipped). Past ``MAX_NEW_PER_EVALUATION`` new alerts for one tenant in one
    evaluation (one forged report with 2,000 new sources), the rest are recorded and listed, but
    summarized in one alert instead of being sent one by one."""
    today = today or dt.datetime.now(dt.UTC).date()
    fired = []
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rules: dict[str, dict] = {}
        new: dict[str, list[dict]] = {}
        for customer, rule, occurrence, message, details, value in _candidates(conn, today):
            if customer not in rules:
                rules[customer] = rules_for(conn, customer)
            setting = rules[customer][rule]
            if not setting["enabled"] or not _fires(rule, value, float(setting["threshold"])):
                continue
            row = conn.execute(
                """INSERT INTO alerts (customer_id, rule, occurrence, message, details) VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (customer_id, rule, occurrence) DO NOTHING RETURNING alert_id, fired_at""",
                (customer, rule, occurrence, message, json.dumps(details)),
            ).fetchone()
            if row:
                new.setdefault(customer, []).append(
                    {"alert_id": row["alert_id"], "customer_id": customer, "rule": rule, "message": message}
                )
                log.info("alert fired customer=%s rule=%s occurrence=%s", customer, rule, occurrence)
        for customer, alerts_of in new.items():
            fired += alerts_of[:MAX_NEW_PER_EVALUATION]
            if len(alerts_of) > MAX_NEW_PER_EVALUATION:
                fired.append(_summarize(conn, customer, alerts_of[MAX_NEW_PER_EVALUATION:]))
    return fired


def _summarize(conn, customer: str, rest: list[dict]) -> dict:
    """One alert for ``rest`` (recorded, shown, not sent one by one)."""
    counts: dict[str, int] = {}
    for alert in rest:
        counts[alert["rule"]] = counts.get(alert["rule"], 0) + 1
    text = ", ".join(f"{n} {rule.replace('_', ' ')}" for rule, n in sorted(counts.items()))
    message = f"{len(rest)} more alerts in one evaluation ({text}): listed on the Alerts page, not sent one by one"
    details = {"summarized": len(rest), "by_rule": counts, "first_alert_id": rest[0]["alert_id"]}
    row = conn.execute(
        """INSERT INTO alerts (customer_id, rule, occurrence, message, details)
           VALUES (%s, 'summary', %s, %s, %s) RETURNING alert_id""",
        (customer, f"summary/{rest[0]['alert_id']}-{rest[-1]['alert_id']}", message, json.dumps(details)),
    ).fetchone()
    conn.execute(
        "UPDATE alerts SET summarized_in = %s WHERE alert_id = ANY(%s)",
        (row["alert_id"], [a["alert_id"] for a in rest]),
    )
    log.warning("alert flood customer=%s summarized=%d into alert_id=%s", customer, len(rest), row["alert_id"])
    return {"alert_id": row["alert_id"], "customer_id": customer, "rule": "summary", "message": message}


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


TENANT_ROUND_ALERTS = 50  # alerts one tenant's webhook gets per delivery round
TENANT_ROUND_S = 60.0  # and the time it may take: a slow receiver waits for the next round
DELIVERY_WORKERS = 8  # tenants delivered to at once: one slow receiver never delays the others


def deliver(database_url: str, workers: int = DELIVERY_WORKERS) -> dict:
    """POST every undelivered alert of customers with a webhook; count delivered and failed.

    Each tenant is delivered to on its own (``workers`` at once), in alert order, stopping at its
    first failure or its round's budget: the rest are retried at the next evaluation."""
    from concurrent.futures import ThreadPoolExecutor

    with psycopg.connect(database_url) as conn:
        customers = [
            r[0]
            for r in conn.execute(
                """SELECT DISTINCT a.customer_id FROM alerts a JOIN tenants t USING (customer_id)
                   WHERE a.delivered_at IS NULL AND a.summarized_in IS NULL AND a.attempts < %s
                     AND t.webhook_url IS NOT NULL ORDER BY 1""",
                (MAX_ATTEMPTS,),
            ).fetchall()
        ]
    if not customers:
        return {"delivered": 0, "failed": 0}
    with ThreadPoolExecutor(max(1, min(workers, len(customers))), thread_name_prefix="webhook") as pool:
        results = list(pool.map(lambda c: _deliver_tenant(database_url, c), customers))
    return {"delivered": sum(r[0] for r in results), "failed": sum(r[1] for r in results)}


def _body(row: dict) -> bytes:
    return json.dumps(
        {
            "alert_id": row["alert_id"],
            "customer": row["customer_id"],
            "rule": row["rule"],
            "occurrence": row["occurrence"],
            "message": row["message"],
            "details": row["details"],
            "fired_at": row["fired_at"].isoformat(),
        },
        sort_keys=True,
    ).encode()


def _deliver_tenant(database_url: str, customer: str) -> tuple[int, int]:
    from pipeline.web import webhooks

    delivered = failed = last_id = 0
    started = time.monotonic()
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        while delivered < TENANT_ROUND_ALERTS and time.monotonic() - started < TENANT_ROUND_S:
            with conn.transaction():
                row = conn.execute(
                    """SELECT a.*, t.webhook_url, t.webhook_secret FROM alerts a JOIN tenants t USING (customer_id)
                       WHERE a.customer_id = %s AND a.delivered_at IS NULL AND a.summarized_in IS NULL
                         AND a.attempts < %s AND t.webhook_url IS NOT NULL AND a.alert_id > %s
                       ORDER BY a.alert_id LIMIT 1 FOR UPDATE OF a SKIP LOCKED""",
                    (customer, MAX_ATTEMPTS, last_id),
                ).fetchone()
                if row is None:
                    break
                last_id = row["alert_id"]
                body = _body(row)
                timestamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Pipeline-Alert-Id": str(row["alert_id"]),
                    "X-Pipeline-Timestamp": timestamp,
                    "X-Pipeline-Signature": signature(row["webhook_secret"] or "", timestamp, body),
                }
                try:
                    status = webhooks.post(webhooks.check(row["webhook_url"]), body, headers)
                    error = None if 200 <= status < 300 else f"HTTP {status}"
                except (webhooks.WebhookRefused, OSError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
                if error is None:
                    conn.execute(
                        "UPDATE alerts SET delivered_at = clock_timestamp(), attempts = attempts + 1, "
                        "last_error = NULL WHERE alert_id = %s",
                        (row["alert_id"],),
                    )
                    delivered += 1
                    continue
                # the tenant sees that it failed, not why: the reason (refused, timed out, ...) would
                # let a tenant map the hosting network; operators read it in the log
                conn.execute(
                    "UPDATE alerts SET attempts = attempts + 1, last_error = %s WHERE alert_id = %s",
                    (webhooks.GENERIC_FAILURE, row["alert_id"]),
                )
                failed += 1
                log.warning(
                    "alert webhook delivery failed customer=%s alert_id=%s error=%s (this tenant's other alerts "
                    "wait for the next evaluation; check its webhook with `pipeline notify`)",
                    customer,
                    row["alert_id"],
                    error,
                )
            break  # a failing receiver gets no more attempts this round
    return delivered, failed


def recent(conn, customer_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        """SELECT alert_id, rule, occurrence, message, details, fired_at, delivered_at, attempts, last_error,
                  summarized_in
           FROM alerts WHERE customer_id = %s ORDER BY alert_id DESC LIMIT %s""",
        (customer_id, limit),
    ).fetchall()
    for row in rows:
        for key in ("fired_at", "delivered_at"):
            row[key] = row[key].isoformat() if row[key] else None
    return rows
