-- Read models for the web application, kept from telemetry_events (the live rows: supersession
-- and tombstones already removed what no longer exists). Both are per (customer, day) slices,
-- so upkeep is "recompute the slices that changed": a statement trigger marks them dirty on
-- every insert or delete, `pipeline.warehouse.projections.refresh` recomputes them, and a full
-- rebuild recomputes every slice; the two give identical tables (a property test).

CREATE TABLE projection_dirty (
    customer_id text NOT NULL,
    day         date NOT NULL,
    PRIMARY KEY (customer_id, day)
);

CREATE FUNCTION mark_projection_dirty_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_dirty (customer_id, day)
    SELECT DISTINCT customer_id, day FROM new_rows WHERE day IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION mark_projection_dirty_old() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_dirty (customer_id, day)
    SELECT DISTINCT customer_id, day FROM old_rows WHERE day IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER telemetry_events_dirty_insert AFTER INSERT ON telemetry_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_projection_dirty_new();
CREATE TRIGGER telemetry_events_dirty_delete AFTER DELETE ON telemetry_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_projection_dirty_old();

-- Daily compliance per customer and policy domain.
CREATE TABLE daily_domain_compliance (
    customer_id       text   NOT NULL,
    day               date   NOT NULL,
    policy_domain     text   NOT NULL,
    reports           bigint NOT NULL,
    messages          bigint NOT NULL,
    spf_pass          bigint NOT NULL,
    spf_fail          bigint NOT NULL,
    dkim_pass         bigint NOT NULL,
    dkim_fail         bigint NOT NULL,
    dmarc_pass        bigint NOT NULL,
    dmarc_fail        bigint NOT NULL,
    disposition_none       bigint NOT NULL,
    disposition_quarantine bigint NOT NULL,
    disposition_reject     bigint NOT NULL,
    PRIMARY KEY (customer_id, day, policy_domain)
);

-- Daily volume and pass rate per customer and sending source.
CREATE TABLE daily_source_summary (
    customer_id     text   NOT NULL,
    day             date   NOT NULL,
    source_ip       text   NOT NULL,
    asn             bigint,
    as_org          text,
    country         text,
    service_name    text,
    sender_category text,
    trust_score     double precision,
    messages        bigint NOT NULL,
    dmarc_pass      bigint NOT NULL,
    PRIMARY KEY (customer_id, day, source_ip)
);

-- One row per report (a report covers one day and one policy domain), for report lists.
CREATE TABLE daily_reports (
    customer_id   text   NOT NULL,
    day           date   NOT NULL,
    report_org    text   NOT NULL,
    report_id     text   NOT NULL,
    policy_domain text,
    report_begin  timestamptz,
    report_end    timestamptz,
    messages      bigint NOT NULL,
    dmarc_pass    bigint NOT NULL,
    PRIMARY KEY (customer_id, day, report_org, report_id)
);
CREATE INDEX daily_reports_recent ON daily_reports (customer_id, report_end DESC);

-- Per customer and sending IP over all days (rolled up from daily_source_summary for the
-- customers whose slices changed), so that the sources page sorts and pages without grouping.
CREATE TABLE source_summary (
    customer_id     text   NOT NULL,
    source_ip       text   NOT NULL,
    asn             bigint,
    as_org          text,
    country         text,
    service_name    text,
    sender_category text,
    trust_score     double precision,
    messages        bigint NOT NULL,
    dmarc_pass      bigint NOT NULL,
    pass_rate       double precision,
    first_day       date   NOT NULL,
    last_day        date   NOT NULL,
    PRIMARY KEY (customer_id, source_ip)
);
CREATE INDEX source_summary_by_messages ON source_summary (customer_id, messages DESC, source_ip);

-- Tenants of the web application: API tokens are stored as SHA-256 hashes only.
CREATE TABLE tenants (
    customer_id text PRIMARY KEY,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Tenant isolation in the database, not only in the web layer: the web application runs every
-- request as pipeline_web with pipeline.customer set; these policies show it only that
-- customer's rows, whatever SQL it sends.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pipeline_web') THEN
        CREATE ROLE pipeline_web NOLOGIN;
    END IF;
END $$;

GRANT SELECT ON telemetry_events, daily_domain_compliance, daily_source_summary, daily_reports, source_summary
    TO pipeline_web;

ALTER TABLE telemetry_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE daily_domain_compliance ENABLE ROW LEVEL SECURITY;
ALTER TABLE daily_source_summary ENABLE ROW LEVEL SECURITY;
ALTER TABLE daily_reports ENABLE ROW LEVEL SECURITY;
ALTER TABLE source_summary ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_rows ON telemetry_events FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY tenant_rows ON daily_domain_compliance FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY tenant_rows ON daily_source_summary FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY tenant_rows ON daily_reports FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY tenant_rows ON source_summary FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));

-- Every other role (the importer, migrations, operators) keeps seeing and writing all rows
-- even when it does not own the tables; pipeline_web matches none of these.
CREATE POLICY pipeline_service ON telemetry_events TO PUBLIC
    USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web');
CREATE POLICY pipeline_service ON daily_domain_compliance TO PUBLIC
    USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web');
CREATE POLICY pipeline_service ON daily_source_summary TO PUBLIC
    USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web');
CREATE POLICY pipeline_service ON daily_reports TO PUBLIC
    USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web');
CREATE POLICY pipeline_service ON source_summary TO PUBLIC
    USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web');
