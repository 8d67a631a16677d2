-- Retention (issue #26, PIPELINE_RETENTION_DAYS): what the warehouse keeps follows the horizon.
-- telemetry_events loses whole partitions (pipeline.warehouse.retention); the bookkeeping of the
-- objects of those days goes with them. load_ledger stays append-only for everything else: only
-- a session that declares itself the retention job (SET LOCAL pipeline.retention = 'on') may
-- DELETE from it, and then only the rows of keys whose day has no partition left.
CREATE OR REPLACE FUNCTION load_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('pipeline.retention', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'load_ledger is append-only: record a new event instead of %', TG_OP;
END $$;

-- The ledger rows of a day, found without reading the whole ledger's keys each time: the day an
-- object key names (dt=YYYY-MM-DD; NULL for a key that names none).
CREATE FUNCTION object_key_day(object_key text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT substring(object_key FROM 'dt=(\d{4}-\d{2}-\d{2})') $$;
CREATE INDEX load_ledger_by_key_day ON load_ledger (object_key_day(object_key));
