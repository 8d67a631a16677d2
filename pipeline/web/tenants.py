"""Tenants and their API tokens. A token is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import psycopg
from psycopg.rows import tuple_row

from pipeline.collector.normalize import CUSTOMER_ID


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(database_url: str, customer_id: str) -> str:
    """A new token for ``customer_id`` (replacing any earlier one)."""
    if not CUSTOMER_ID.fullmatch(customer_id or ""):
        raise ValueError(f"{customer_id!r} is not a customer id (lowercase letters, digits, '-' and '_')")
    token = f"pt_{secrets.token_urlsafe(24)}"
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO tenants (customer_id, token_hash) VALUES (%s, %s) "
            "ON CONFLICT (customer_id) DO UPDATE SET token_hash = EXCLUDED.token_hash, created_at = clock_timestamp(), "
            "generation = tenants.generation + 1, revoked_at = NULL",
            (customer_id, _hash(token)),
        )
    return token


def revoke_token(database_url: str, customer_id: str) -> bool:
    """Revoke the customer's token: it stops working and every session signed in with it ends."""
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "UPDATE tenants SET revoked_at = clock_timestamp(), generation = generation + 1, "
            "token_hash = 'revoked:' || md5(random()::text || clock_timestamp()::text) WHERE customer_id = %s",
            (customer_id,),
        )
        return cur.rowcount == 1


SESSION_DAYS = 14


def start_session(conn: psycopg.Connection, customer_id: str, token_generation: int) -> str:
    """A new server-side session; returns its id (for the cookie; only its hash is stored)."""
    session_id = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO web_sessions (session_hash, customer_id, generation) VALUES (%s, %s, %s)",
        (_hash(session_id), customer_id, token_generation),
    )
    conn.commit()
    return session_id


def session_customer(conn: psycopg.Connection, session_id: str | None) -> str | None:
    """The customer of a live session: not ended (signed out), of the token's current
    generation (not rotated or revoked), younger than SESSION_DAYS. One query per request."""
    if not session_id or len(session_id) > 200:
        return None
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            """SELECT s.customer_id FROM web_sessions s JOIN tenants t USING (customer_id)
               WHERE s.session_hash = %s AND s.ended_at IS NULL AND t.revoked_at IS NULL
                 AND s.generation = t.generation AND s.created_at > clock_timestamp() - %s * interval '1 day'""",
            (_hash(session_id), SESSION_DAYS),
        ).fetchone()
    return row[0] if row else None


def end_session(conn: psycopg.Connection, session_id: str | None) -> None:
    if session_id:
        conn.execute(
            "UPDATE web_sessions SET ended_at = clock_timestamp() WHERE session_hash = %s AND ended_at IS NULL",
            (_hash(session_id),),
        )
        conn.commit()


def generation(conn: psycopg.Connection, customer_id: str) -> int | None:
    """The token generation a session must carry to stay signed in (None: revoked or unknown)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT generation FROM tenants WHERE customer_id = %s AND revoked_at IS NULL", (customer_id,)
        ).fetchone()
    return row[0] if row else None


_LOCAL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}")
_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


def check_address(value: str) -> str:
    """Exactly one plain e-mail address (local@domain): no list, no display name, no header
    folding; ValueError otherwise. A digest goes to this address and no other."""
    local, at, domain = (value or "").rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain) or ".." in local:
        raise ValueError(f"{value[:100]!r} is not one e-mail address (local@domain.tld; one address, no name or list)")
    return value


def configure_notifications(
    database_url: str, customer_id: str, webhook_url: str | None = None, email: str | None = None
) -> str | None:
    """Set where a customer's alerts and digests go; returns a new webhook signing secret
    (shown once) when a new webhook URL is set (the same URL again keeps its secret)."""
    secret = None
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT webhook_url FROM tenants WHERE customer_id = %s", (customer_id,)).fetchone()
        if row is None:
            raise ValueError(
                f"{customer_id!r} has no web access yet: run `pipeline web-token --customer {customer_id}`"
            )
        if webhook_url is not None and (webhook_url or None) != row[0]:  # the same URL keeps its secret
            if webhook_url:
                from pipeline.web.webhooks import check

                check(webhook_url)  # WebhookRefused (a ValueError) names what is wrong
            secret = secrets.token_urlsafe(32) if webhook_url else None
            conn.execute(
                "UPDATE tenants SET webhook_url = nullif(%s, ''), webhook_secret = %s WHERE customer_id = %s",
                (webhook_url, secret, customer_id),
            )
        if email is not None:
            if email:
                check_address(email)
            conn.execute(
                "UPDATE tenants SET digest_email = nullif(%s, '') WHERE customer_id = %s", (email, customer_id)
            )
    return secret


def session_for(conn: psycopg.Connection, token: str | None) -> tuple[str, int] | None:
    """(customer, token generation) for a live token, or None: what a session cookie carries
    after sign-in. Constant-time comparison of the stored hash."""
    if not token or len(token) > 200:
        return None
    digest = _hash(token)
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT customer_id, token_hash, generation FROM tenants WHERE token_hash = %s AND revoked_at IS NULL",
            (digest,),
        ).fetchone()
    if row and hmac.compare_digest(row[1], digest):
        return row[0], row[2]
    return None


def customer_for(conn: psycopg.Connection, token: str | None) -> str | None:
    """The customer a live token belongs to, or None."""
    signed = session_for(conn, token)
    return signed[0] if signed else None
