-- Per customer, day, policy domain, header_from and source (issue #25): what a domain's page
-- adds up for its sources and its header_from subdomains, over any window of days. Kept like
-- the other daily projections (a changed slice is recomputed; refresh == rebuild).
CREATE TABLE daily_domain_sources (
    customer_id   text   NOT NULL,
    day           date   NOT NULL,
    policy_domain text   NOT NULL,
    header_from   text   NOT NULL,
    source_ip     text   NOT NULL,
    messages      bigint NOT NULL,
    dmarc_pass    bigint NOT NULL,
    aligned_pass  bigint NOT NULL,
    PRIMARY KEY (customer_id, day, policy_domain, header_from, source_ip)
);
-- a domain's page reads one domain's days, not every domain's
CREATE INDEX daily_domain_sources_by_domain ON daily_domain_sources (customer_id, policy_domain, day);

-- a tenant table as 0013 made them all: the tenant reads its own rows, row-level security forced
-- on the owner too, the service policy naming its role
GRANT SELECT ON daily_domain_sources TO pipeline_web;
ALTER TABLE daily_domain_sources ENABLE ROW LEVEL SECURITY;
ALTER TABLE daily_domain_sources FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON daily_domain_sources FOR SELECT TO pipeline_web
    USING (customer_id = current_setting('pipeline.customer', true));
CREATE POLICY pipeline_service ON daily_domain_sources TO pipeline_service USING (true) WITH CHECK (true);

-- Filled at the next refresh: every slice is recomputed once (the rollups follow by key, unchanged).
INSERT INTO projection_dirty (customer_id, day)
SELECT DISTINCT customer_id, day FROM daily_domain_compliance
ON CONFLICT DO NOTHING;
