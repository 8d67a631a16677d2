-- telemetry_events partitioned by day, one partition a month, with a compact event id (issue #26).
--
-- One table with five indexes turned every COPY into random I/O once the indexes outgrew memory
-- (0.22-0.26 of the empty-table COPY rate at 20M events), and retention would have been a
-- DELETE of billions of rows. Now:
--   * telemetry_events is PARTITION BY RANGE (day), monthly partitions named
--     telemetry_events_YYYY_MM. A load writes into the partitions of its days, whose indexes are
--     a month's, not the history's; retention detaches and drops whole partitions.
--   * The key is (customer_id, day, event_id), unique per partition. The day is part of the event
--     id's hash already (pipeline.enrich.transform.event_id), so this is the same uniqueness as
--     (customer_id, event_id) was, and its (customer_id, day) prefix serves what the
--     (customer_id, day) index served: that index is gone.
--   * event_id is a uuid: the 128-bit hash in 16 bytes, where the 32 hex characters took 33.
--   * Partitions are created ahead of time by the pipeline (ensure_event_partitions: migrate
--     creates this month and the next two, the loader the months of each object before its
--     transaction starts, the maintenance schedule keeps months ahead), never by a failing
--     insert. A partition is created as a table and then ATTACHed, which takes SHARE UPDATE
--     EXCLUSIVE on the parent: loads and pages go on while it happens (CREATE TABLE ... PARTITION
--     OF would take ACCESS EXCLUSIVE).
--
-- Migrating a populated warehouse: this migration copies the table in one transaction (rows move
-- into their month's partition, ids are converted, the indexes are built after the copy). The
-- old table stays readable until the copy commits; loads wait for it. docs/SCALING.md gives the
-- measured time per million rows; run `pipeline up` (or any command that migrates) in a
-- maintenance window on a large warehouse.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM telemetry_events WHERE day IS NULL) THEN
        RAISE EXCEPTION 'telemetry_events holds rows without a day; partitioning by day needs one for every row'
            USING HINT = 'No loader writes such rows; find them with SELECT ledger_id, count(*) FROM telemetry_events '
                         'WHERE day IS NULL GROUP BY 1, and re-import or tombstone their objects before upgrading.';
    END IF;
END $$;

ALTER TABLE telemetry_events RENAME TO telemetry_events_unpartitioned;
ALTER INDEX telemetry_events_pkey RENAME TO telemetry_events_unpartitioned_pkey;
ALTER INDEX telemetry_events_by_customer_day RENAME TO telemetry_events_unpartitioned_by_customer_day;
ALTER INDEX telemetry_events_by_ledger RENAME TO telemetry_events_unpartitioned_by_ledger;
ALTER INDEX telemetry_events_by_source RENAME TO telemetry_events_unpartitioned_by_source;
ALTER INDEX telemetry_events_disagreements RENAME TO telemetry_events_unpartitioned_disagreements;

CREATE TABLE telemetry_events (LIKE telemetry_events_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (day);
ALTER TABLE telemetry_events ALTER COLUMN event_id TYPE uuid USING event_id::uuid;
ALTER TABLE telemetry_events ALTER COLUMN day SET NOT NULL;

-- The partition of the month of each day from first_day to last_day, created where missing.
-- Returns how many it created. Safe to call concurrently: creators serialize on an advisory lock,
-- and a partition another session created meanwhile is skipped.
CREATE FUNCTION ensure_event_partitions(first_day date, last_day date) RETURNS integer
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    month   date;
    name    text;
    created integer := 0;
BEGIN
    IF first_day IS NULL OR last_day IS NULL THEN
        RETURN 0;
    END IF;
    FOR month IN SELECT generate_series(date_trunc('month', first_day), date_trunc('month', last_day),
                                        interval '1 month')::date LOOP
        name := 'telemetry_events_' || to_char(month, 'YYYY_MM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtextextended('telemetry_events partitions', 0));
        BEGIN
            EXECUTE format('CREATE TABLE %I (LIKE telemetry_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXCEPTION WHEN duplicate_table THEN
            CONTINUE;  -- created by another session while this one waited for the lock
        END;
        EXECUTE format('ALTER TABLE telemetry_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, month, (month + interval '1 month')::date);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

SELECT ensure_event_partitions(min(day), max(day)) FROM telemetry_events_unpartitioned;
SELECT ensure_event_partitions(current_date, current_date + 62);

INSERT INTO telemetry_events
SELECT (CASE WHEN event_id ~ '^[0-9a-fA-F]{32}$' THEN event_id ELSE md5(event_id) END)::uuid,
       ledger_id, schema_version, customer_id, report_org, report_id, report_email, report_begin, report_end,
       policy_domain, policy_adkim, policy_aspf, policy_p, policy_sp, policy_pct, record_index, source_ip,
       message_count, disposition, policy_dkim, policy_spf, override_reasons, header_from, envelope_from,
       envelope_to, dkim_domain, dkim_selector, dkim_result, spf_domain, spf_scope, spf_result, dkim_auth,
       spf_auth, day, country, continent, asn, as_org, as_domain, service_name, service_type, dkim_aligned,
       spf_aligned, dmarc_pass, sender_category, trust_score, model_version
FROM telemetry_events_unpartitioned
ORDER BY customer_id, day;

DROP TABLE telemetry_events_unpartitioned;

ALTER TABLE telemetry_events ADD CONSTRAINT telemetry_events_pkey PRIMARY KEY (customer_id, day, event_id);
CREATE INDEX telemetry_events_by_ledger ON telemetry_events (ledger_id);
CREATE INDEX telemetry_events_by_source ON telemetry_events (customer_id, source_ip);
CREATE INDEX telemetry_events_disagreements ON telemetry_events (customer_id, day DESC)
    WHERE receiver_pass(policy_dkim, policy_spf) IS DISTINCT FROM coalesce(dmarc_pass, false);
ALTER TABLE telemetry_events ADD CONSTRAINT telemetry_events_ledger_id_fkey
    FOREIGN KEY (ledger_id) REFERENCES load_ledger (ledger_id);

CREATE TRIGGER telemetry_events_dirty_insert AFTER INSERT ON telemetry_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_projection_dirty_new();
CREATE TRIGGER telemetry_events_dirty_delete AFTER DELETE ON telemetry_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_projection_dirty_old();

-- Row-level security on the parent, which is the only way in for the web role: it has no grant on
-- the partitions themselves (a partition's rows read directly would skip the parent's policies).
GRANT SELECT ON telemetry_events TO pipeline_web;
ALTER TABLE telemetry_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON telemetry_events FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY pipeline_service ON telemetry_events TO pipeline_service USING (true) WITH CHECK (true);
