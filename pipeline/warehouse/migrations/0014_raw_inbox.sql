-- Raw detection without listing history (issue #22): every raw object version the raw bucket's
-- notifications name (or the bounded sweep of recent day prefixes finds) is recorded here, in
-- one transaction, before its message is deleted. The raw sensor reports rows past its cursor.
CREATE TABLE raw_inbox (
    raw_id      bigserial PRIMARY KEY,
    bucket      text   NOT NULL,
    object_key  text   NOT NULL,
    etag        text   NOT NULL,
    size        bigint,
    customer_id text   NOT NULL,
    day         date   NOT NULL,
    source      text   NOT NULL CHECK (source IN ('notification', 'sweep')),
    seen_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (bucket, object_key, etag)
);
CREATE INDEX raw_inbox_by_seen ON raw_inbox (seen_at);
