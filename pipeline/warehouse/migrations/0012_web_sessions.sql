-- Web sessions live on the server (issue #21): the cookie carries a random session id whose
-- hash is stored here; signing out ends the row, so a copied cookie is worth nothing after it.
-- A session also ends when its token is rotated or revoked (generation), and after 14 days.
CREATE TABLE web_sessions (
    session_hash text PRIMARY KEY,
    customer_id  text   NOT NULL,
    generation   bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at     timestamptz
);
CREATE INDEX web_sessions_by_customer ON web_sessions (customer_id) WHERE ended_at IS NULL;
