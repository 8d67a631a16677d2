-- The all-days rollups follow the changed slices by their keys (issue #26). source_summary,
-- service_summary and customer_summary were recomputed whole for every customer whose slices
-- changed: a refresh after one new day re-aggregated the customer's whole history. Now a refresh
-- adds the changed slices' differences to the rows of the keys they touch (a source, a service,
-- a customer), and recomputes from the daily rows only the keys whose non-additive figures
-- (first and last day, the largest ASN / organisation / country / service / category, a
-- service's "known") a change can lower: a key that left a day, or whose attributes changed.
-- pipeline.warehouse.projections says how; a property test holds incremental upkeep equal to a
-- full rebuild.

-- The trust averages as sums and counts, so that they add (numeric: exact, so a sum kept by
-- differences equals the sum recomputed).
ALTER TABLE source_summary
    ADD COLUMN trust_total numeric NOT NULL DEFAULT 0,
    ADD COLUMN trust_days  bigint  NOT NULL DEFAULT 0;
ALTER TABLE service_summary ADD COLUMN trust_total numeric NOT NULL DEFAULT 0;

-- A key's daily rows, for the keys recomputed; a service's sources; a customer's categories
-- (read as a skip scan: one index probe per category, not one row per source).
CREATE INDEX daily_source_summary_by_source ON daily_source_summary (customer_id, source_ip);
CREATE INDEX daily_domain_services_by_service ON daily_domain_services (customer_id, service);
CREATE INDEX source_summary_by_service ON source_summary (customer_id, service);
CREATE INDEX source_summary_by_category ON source_summary (customer_id, sender_category);

-- A service marked or unmarked reclassifies that service's sources and its summary at the next
-- refresh (all of them, whatever days they were seen on).
CREATE TABLE projection_reclassify (
    customer_id text NOT NULL,
    service     text NOT NULL,
    PRIMARY KEY (customer_id, service)
);

CREATE OR REPLACE FUNCTION mark_customer_dirty() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO projection_reclassify (customer_id, service)
    SELECT DISTINCT customer_id, subject FROM new_rows WHERE kind IN ('service_marked', 'service_unmarked')
    ON CONFLICT DO NOTHING;
    -- and the customer's newest slice, so that a refresh has work to notice
    INSERT INTO projection_dirty (customer_id, day)
    SELECT n.customer_id, max(e.day) FROM (SELECT DISTINCT customer_id FROM new_rows) n
    JOIN telemetry_events e ON e.customer_id = n.customer_id WHERE e.day IS NOT NULL
    GROUP BY n.customer_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION mark_customer_dirty() FROM PUBLIC;

-- The rollups are recomputed from the daily rows at the next refresh (every key is new to them).
TRUNCATE source_summary, service_summary, customer_summary;
INSERT INTO projection_dirty (customer_id, day)
SELECT DISTINCT customer_id, day FROM daily_source_summary
ON CONFLICT DO NOTHING;
