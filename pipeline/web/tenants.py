"""Tenants and their API tokens. A token is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

import psycopg

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

# What the web application does outside a tenant's scope goes through the web_* functions of
# migration 0013: it logs in as pipeline_web_login, which reads no table by itself.


def sign_in(conn: psycopg.Connection, token: str | None) -> tuple[str, str] | None:
    """(customer, new session id) for a live token, or None; the session starts on the server in
    the same call (only the id's hash is stored; the id goes in the cookie)."""
    if not token or len(token) > 200:
        return None
    session_id = secrets.token_urlsafe(32)
    customer = _scalar(conn.execute("SELECT web_sign_in(%s, %s)", (_hash(token), _hash(session_id))).fetchone())
    conn.commit()
    return (customer, session_id) if customer else None


def _scalar(row):
    return None if row is None else row[0] if isinstance(row, tuple) else next(iter(row.values()))


def token_customer(conn: psycopg.Connection, token: str | None) -> str | None:
    if not token or len(token) > 200:
        return None
    return _scalar(conn.execute("SELECT web_token_customer(%s)", (_hash(token),)).fetchone())


def session_customer(conn: psycopg.Connection, session_id: str | None) -> str | None:
    """The customer of a live session: not ended (signed out), of the token's current
    generation (not rotated or revoked), younger than SESSION_DAYS. One query per request."""
    if not session_id or len(session_id) > 200:
        return None
    return _scalar(conn.execute("SELECT web_session_customer(%s, %s)", (_hash(session_id), SESSION_DAYS)).fetchone())


def end_session(conn: psycopg.Connection, session_id: str | None) -> None:
    if session_id:
        conn.execute("SELECT web_session_end(%s)", (_hash(session_id),))
        conn.commit()


def notifications(conn: psycopg.Connection) -> tuple[str | None, str | None]:
    """(webhook URL, digest address) of the connection's tenant (inside ``Warehouse.tenant``)."""
    row = conn.execute("SELECT webhook_url, digest_email FROM web_notifications()").fetchone()
    if row is None:
        return None, None
    return (row[0], row[1]) if isinstance(row, tuple) else (row["webhook_url"], row["digest_email"])


def set_notifications(conn: psycopg.Connection, webhook_url: str | None, email: str | None) -> str | None:
    """Set the connection's tenant's webhook and digest address (inside ``Warehouse.tenant``, or
    with ``pipeline.customer`` set): checks the URL and the address, returns a new signing secret
    when the URL changed."""
    current_url, _ = notifications(conn)
    secret = None
    if webhook_url is not None and (webhook_url or None) != current_url:
        if webhook_url:
            from pipeline.web.webhooks import check

            check(webhook_url)
        secret = secrets.token_urlsafe(32) if webhook_url else None
        conn.execute("SELECT web_set_webhook(%s, %s)", (webhook_url, secret))
    if email is not None:
        if email:
            check_address(email)
        conn.execute("SELECT web_set_digest_email(%s)", (email,))
    return secret


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
    """Set where a customer's alerts and digests go (`pipeline notify`); returns a new webhook
    signing secret (shown once) when a new webhook URL is set (the same URL keeps its secret).
    The same checks and writes as the web application's, in the customer's scope."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT 1 FROM tenants WHERE customer_id = %s", (customer_id,)).fetchone()
        if row is None:
            raise ValueError(
                f"{customer_id!r} has no web access yet: run `pipeline web-token --customer {customer_id}`"
            )
        conn.execute("SELECT set_config('pipeline.customer', %s, true)", (customer_id,))
        return set_notifications(conn, webhook_url, email)
