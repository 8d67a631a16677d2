-- Failed import attempts, for operators: what failed, why, how often. Append-only like the
-- ledger; a later successful load of the same version is what resolves a failure.
CREATE TABLE import_failures (
    failure_id     bigserial PRIMARY KEY,
    bucket         text        NOT NULL,
    object_key     text        NOT NULL,
    object_version text,
    error_class    text        NOT NULL,
    error          text        NOT NULL,
    receive_count  integer,
    run_id         text,
    worker         text,
    failed_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX import_failures_by_object ON import_failures (bucket, object_key, object_version);
