-- The load ledger: an append-only log of what happened to every enriched object version.
-- One 'loaded' row per object version imported; an overwrite or a delete of the key is a new
-- row ('superseded' / 'tombstoned') that refers to the load it ends. History is never edited.
CREATE TABLE load_ledger (
    ledger_id      bigserial PRIMARY KEY,
    event          text        NOT NULL CHECK (event IN ('loaded', 'superseded', 'tombstoned')),
    bucket         text        NOT NULL,
    object_key     text        NOT NULL,
    object_version text        NOT NULL,  -- the S3 version id when the bucket is versioned, else the ETag
    etag           text,
    rows           bigint,
    bytes          bigint,
    checksum       text,
    refers_to      bigint REFERENCES load_ledger (ledger_id),
    run_id         text,
    worker         text,
    event_time     timestamptz,           -- when S3 says the object was written or removed
    started_at     timestamptz,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((event = 'loaded') = (refers_to IS NULL))
);

-- Claiming this row first serializes concurrent importers of the same version.
CREATE UNIQUE INDEX load_ledger_one_load_per_version
    ON load_ledger (bucket, object_key, object_version) WHERE event = 'loaded';
-- A load is ended at most once.
CREATE UNIQUE INDEX load_ledger_one_end_per_load ON load_ledger (refers_to) WHERE refers_to IS NOT NULL;
CREATE INDEX load_ledger_by_key ON load_ledger (bucket, object_key);

CREATE FUNCTION load_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'load_ledger is append-only: record a new event instead of %', TG_OP;
END $$;

CREATE TRIGGER load_ledger_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON load_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION load_ledger_is_append_only();

-- The object versions whose rows are live: loaded and not (yet) superseded or tombstoned.
CREATE VIEW live_object_versions AS
SELECT l.*
FROM load_ledger l
WHERE l.event = 'loaded'
  AND NOT EXISTS (SELECT 1 FROM load_ledger e WHERE e.refers_to = l.ledger_id);
