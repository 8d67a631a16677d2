-- Exactly-once across versions (issue: X -> Y -> X), and the transactional import inbox.

-- 1. A version may be loaded more than once: X, then Y, then X again makes X live again, as a
--    new 'loaded' row. What serializes importers of one key is the key's advisory lock, under
--    which the importer re-reads the key's live load and S3's current version before it claims.
DROP INDEX load_ledger_one_load_per_version;
CREATE INDEX load_ledger_loads_by_version ON load_ledger (bucket, object_key, object_version) WHERE event = 'loaded';
ALTER TABLE load_ledger ADD COLUMN sequencer text;

-- The newest S3 event sequencer applied per key (loads and deletes). S3 event notifications
-- carry a sequencer that orders the events of one key; an event older than the one applied is
-- stale whatever order the queue delivered them in. Keys whose events carry none have no row.
CREATE TABLE object_sequencers (
    bucket      text NOT NULL,
    object_key  text NOT NULL,
    sequencer   text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (bucket, object_key)
);

-- 2. The transactional inbox. Every object version a notification (or the reconciler) names
--    is recorded here in one transaction, and only then is the SQS message deleted, so no SQS
--    receipt is ever held while Dagster's run queue waits. Importers (Dagster runs, `pipeline
--    importer` workers) take their work from here, and settle a row in the same transaction as
--    its load. Attempts, backoff and dead-lettering of objects live here.
--      pending  waiting for an importer, or claimed by one (claimed_by, lease_until)
--      done     settled: outcome loaded | duplicate | stale | tombstoned | nothing_to_tombstone
--      dead     failed max_attempts times: the operator fixes the cause and runs `pipeline redrive`
CREATE TABLE import_inbox (
    inbox_id       bigserial PRIMARY KEY,
    bucket         text        NOT NULL,
    object_key     text        NOT NULL,
    object_version text        NOT NULL,
    etag           text,
    size           bigint,
    event_name     text        NOT NULL,
    event_time     timestamptz,
    sequencer      text,
    source         text        NOT NULL DEFAULT 'sqs',   -- sqs | reconcile
    message_ids    text[]      NOT NULL DEFAULT '{}',    -- the deliveries that named it
    deliveries     integer     NOT NULL DEFAULT 1,
    partition_key  text,
    repair         boolean     NOT NULL DEFAULT false,   -- reload even if this version is live (reconciler)
    state          text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    claimed_by     text,                                 -- a run key or a worker id
    claimed_at     timestamptz,
    lease_until    timestamptz,
    plans          integer     NOT NULL DEFAULT 0,       -- times it was claimed (run keys differ)
    attempts       integer     NOT NULL DEFAULT 0,       -- times an importer started it
    started_at     timestamptz,
    not_before     timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error     text,
    outcome        text,
    ledger_id      bigint REFERENCES load_ledger (ledger_id),
    received_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    settled_at     timestamptz
);

-- One pending row per object version: a redelivered or duplicated notification joins it.
CREATE UNIQUE INDEX import_inbox_one_pending_per_version
    ON import_inbox (bucket, object_key, object_version) WHERE state = 'pending';
CREATE INDEX import_inbox_due ON import_inbox (not_before, inbox_id) WHERE state = 'pending';
CREATE INDEX import_inbox_claims ON import_inbox (claimed_by) WHERE state = 'pending';
CREATE INDEX import_inbox_dead ON import_inbox (bucket, object_key) WHERE state = 'dead';
CREATE INDEX import_inbox_settled ON import_inbox (settled_at) WHERE state = 'done';

-- The autoscaler's backlog now counts the inbox.
ALTER TABLE scaling_decisions ADD COLUMN inbox integer NOT NULL DEFAULT 0;

-- 3. Projection markers. With ON CONFLICT DO NOTHING an import inserting rows of a slice that
--    is already marked takes no lock on the marker, so a refresh could consume the marker and
--    recompute the slice before the import committed: a stale slice with no marker left.
--    DO UPDATE locks the marker row: a refresh's DELETE of it waits for the import's commit
--    (and then recomputes with the import's rows), and an import that comes after the DELETE
--    inserts the marker anew.
ALTER TABLE projection_dirty ADD COLUMN marked_at timestamptz NOT NULL DEFAULT clock_timestamp();

CREATE OR REPLACE FUNCTION mark_projection_dirty_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_dirty (customer_id, day)
    SELECT DISTINCT customer_id, day FROM new_rows WHERE day IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT (customer_id, day) DO UPDATE SET marked_at = clock_timestamp();
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mark_projection_dirty_old() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_dirty (customer_id, day)
    SELECT DISTINCT customer_id, day FROM old_rows WHERE day IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT (customer_id, day) DO UPDATE SET marked_at = clock_timestamp();
    RETURN NULL;
END $$;
