"""Tenants and their API tokens. A token is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
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
            "ON CONFLICT (customer_id) DO UPDATE SET token_hash = EXCLUDED.token_hash, created_at = clock_timestamp()",
            (customer_id, _hash(token)),
        )
    return token


def customer_for(conn: psycopg.Connection, token: str | None) -> str | None:
    """The customer a token belongs to, or None. Constant-time comparison of the stored hash."""
    if not token or len(token) > 200:
        return None
    digest = _hash(token)
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute("SELECT customer_id, token_hash FROM tenants WHERE token_hash = %s", (digest,)).fetchone()
    if row and hmac.compare_digest(row[1], digest):
        return row[0]
    return None
