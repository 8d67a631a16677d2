-- Incremental enrichment (issue #22): what was enriched into what.
--
-- A batch is the raw objects of one day that one enrichment run found new; it is published as
-- enriched/dt=<day>/batch=<batch_id>/part-N.parquet, one object (a dynamic partition) per part.
-- Its id is a hash of its input keys, so re-enriching it (a new model, reference data,
-- --reprocess) writes the same keys and the importer supersedes them in place.
--   planned    recorded before anything is staged; a run that crashes before publishing leaves
--              it planned, and the next run of its day enriches it again with the same inputs
--              (the same keys, the same bytes)
--   published  every object is at its final key; model_version / reference_version say what
--              its bytes were enriched with
CREATE TABLE enrichment_batches (
    batch_id          text PRIMARY KEY,
    day               date NOT NULL,
    state             text NOT NULL DEFAULT 'planned' CHECK (state IN ('planned', 'published')),
    model_version     text,
    reference_version text,
    objects           text[] NOT NULL DEFAULT '{}',
    raw_objects       integer NOT NULL DEFAULT 0,
    raw_records       bigint NOT NULL DEFAULT 0,
    enriched_rows     bigint NOT NULL DEFAULT 0,
    run_id            text,
    planned_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at      timestamptz
);
CREATE INDEX enrichment_batches_by_day ON enrichment_batches (day);
CREATE INDEX enrichment_batches_planned ON enrichment_batches (day) WHERE state = 'planned';

-- The manifest: the customers of a batch and their rows, written before its objects are
-- published. The importer loads a row of a batch object only into a tenant its manifest names;
-- a tenant's health page finds its recent batches here.
CREATE TABLE enrichment_manifest (
    batch_id    text   NOT NULL REFERENCES enrichment_batches (batch_id) ON DELETE CASCADE,
    customer_id text   NOT NULL,
    rows        bigint NOT NULL,
    PRIMARY KEY (batch_id, customer_id)
);
CREATE INDEX enrichment_manifest_by_customer ON enrichment_manifest (customer_id, batch_id DESC);

-- Every raw object belongs to exactly one batch. etag: the version enriched; a new version of
-- the key (a collector that rewrote it) makes its batch due again.
CREATE TABLE enrichment_inputs (
    bucket      text NOT NULL,
    object_key  text NOT NULL,
    etag        text NOT NULL,
    size        bigint,
    customer_id text NOT NULL,
    day         date NOT NULL,
    batch_id    text NOT NULL REFERENCES enrichment_batches (batch_id) ON DELETE CASCADE,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- a listing older than this cannot miss it
    PRIMARY KEY (bucket, object_key)
);
CREATE INDEX enrichment_inputs_by_batch ON enrichment_inputs (batch_id);
CREATE INDEX enrichment_inputs_by_customer_day ON enrichment_inputs (customer_id, day);

-- The health page: a batch object concerns every tenant its manifest names (its ten most recent
-- batches are what the page looks at). Its failure text may name other tenants (a forged row's
-- customer id), so a tenant sees a generic one.
CREATE OR REPLACE FUNCTION web_recent_loads(p_enriched_prefix text)
    RETURNS TABLE (event text, object_key text, rows bigint, recorded_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    (SELECT event, object_key, rows, recorded_at FROM load_ledger
     WHERE starts_with(object_key, p_enriched_prefix || 'customer=' || current_setting('pipeline.customer', true) || '/')
     ORDER BY ledger_id DESC LIMIT 10)
    UNION ALL
    (SELECT l.event, l.object_key, CASE WHEN l.event = 'loaded' THEN m.rows END, l.recorded_at
     FROM (SELECT batch_id, rows FROM enrichment_manifest
           WHERE customer_id = current_setting('pipeline.customer', true) ORDER BY batch_id DESC LIMIT 10) m
     JOIN enrichment_batches b USING (batch_id)
     CROSS JOIN LATERAL unnest(b.objects) AS o(key)
     JOIN LATERAL (SELECT event, object_key, recorded_at, ledger_id FROM load_ledger
                   WHERE object_key = o.key ORDER BY ledger_id DESC LIMIT 1) l ON true
     ORDER BY l.ledger_id DESC LIMIT 10)
    ORDER BY recorded_at DESC LIMIT 10
$$;

CREATE OR REPLACE FUNCTION web_open_failures(p_enriched_prefix text)
    RETURNS TABLE (object_key text, error text, attempts bigint, last_failed timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    (SELECT object_key, max(error) AS error, count(*) AS attempts, max(failed_at) AS last_failed FROM import_failures f
     WHERE starts_with(object_key, p_enriched_prefix || 'customer=' || current_setting('pipeline.customer', true) || '/')
       AND NOT EXISTS (SELECT 1 FROM load_ledger l WHERE l.object_key = f.object_key AND l.recorded_at > f.failed_at)
     GROUP BY object_key)
    UNION ALL
    (SELECT f.object_key, 'not imported yet: the pipeline retries it, and its operators see why',
            count(*), max(f.failed_at)
     FROM (SELECT batch_id FROM enrichment_manifest
           WHERE customer_id = current_setting('pipeline.customer', true) ORDER BY batch_id DESC LIMIT 50) m
     JOIN enrichment_batches b USING (batch_id)
     CROSS JOIN LATERAL unnest(b.objects) AS o(key)
     JOIN import_failures f ON f.object_key = o.key
     WHERE NOT EXISTS (SELECT 1 FROM load_ledger l WHERE l.object_key = f.object_key AND l.recorded_at > f.failed_at)
     GROUP BY f.object_key)
    ORDER BY last_failed DESC LIMIT 10
$$;
