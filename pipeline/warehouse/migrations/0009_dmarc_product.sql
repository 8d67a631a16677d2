-- The customers' DMARC product (issue 16): the receiver's verdict first, sending services and
-- their classification, customer choices as events, alerts, and sessions that end.

-- 1. "DMARC pass" in every projection is now the receiving system's verdict (policy_evaluated:
--    DKIM or SPF pass), which decided what happened to the mail. The alignment recomputed from
--    the authentication results (telemetry_events.dmarc_pass) is kept beside it as aligned_pass,
--    and messages where the two disagree are counted. Forwarded: messages the receiver let
--    through with an override reason of forwarded, mailing_list or trusted_forwarder.
CREATE FUNCTION receiver_pass(policy_dkim text, policy_spf text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(policy_dkim = 'pass', false) OR coalesce(policy_spf = 'pass', false);

CREATE FUNCTION forwarded_override(override_reasons text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(override_reasons ~ '"(forwarded|mailing_list|trusted_forwarder)"', false);

ALTER TABLE daily_domain_compliance
    ADD COLUMN aligned_pass          bigint NOT NULL DEFAULT 0,
    ADD COLUMN verdict_disagreements bigint NOT NULL DEFAULT 0,
    ADD COLUMN forwarded             bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_source_summary
    ADD COLUMN aligned_pass          bigint NOT NULL DEFAULT 0,
    ADD COLUMN verdict_disagreements bigint NOT NULL DEFAULT 0,
    ADD COLUMN forwarded             bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_reports
    ADD COLUMN aligned_pass bigint NOT NULL DEFAULT 0,
    ADD COLUMN policy_p     text,
    ADD COLUMN policy_pct   bigint;

-- 2. Sending services. A service is the known sending service of a source (parsedmarc's map),
--    else its network's organisation. Services the customer marked as theirs are customer events
--    (below); the classification of a source or a service is one SQL function, used by both.
CREATE TABLE known_forwarders (service_name text PRIMARY KEY);
-- Names as parsedmarc's service map spells them: forwarding services and the security gateways
-- that relay mail on (both break SPF, and often DKIM, on the way).
INSERT INTO known_forwarders (service_name) VALUES
    ('Pobox'), ('ForwardEmail.net'), ('ForwardMX'), ('ImprovMX'), ('Joker.com'), ('Fastmail'),
    ('Proofpoint'), ('Proofpoint Essentials'), ('Proofpoint Cloudmark'), ('Mimecast'), ('Barracuda');

-- The documented rule (docs/DMARC.md): marked by the customer or mostly aligned -> authorized;
-- mostly forwarded (override reasons) or a known forwarder -> forwarder; an unknown network or a
-- low trust score -> suspicious; anything else -> unauthorized.
CREATE FUNCTION sender_classification(
    messages numeric, aligned numeric, forwarded numeric, known_service boolean, trust double precision,
    is_forwarder boolean, marked boolean
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN marked THEN 'authorized'
    WHEN messages > 0 AND aligned * 2 >= messages THEN 'authorized'
    WHEN is_forwarder OR (messages > 0 AND forwarded * 2 >= messages) THEN 'forwarder'
    WHEN NOT known_service OR coalesce(trust, 0) < 0.3 THEN 'suspicious'
    ELSE 'unauthorized'
END;

ALTER TABLE source_summary
    ADD COLUMN aligned_pass          bigint NOT NULL DEFAULT 0,
    ADD COLUMN verdict_disagreements bigint NOT NULL DEFAULT 0,
    ADD COLUMN forwarded             bigint NOT NULL DEFAULT 0,
    ADD COLUMN service               text,
    ADD COLUMN classification        text;
-- The sources filter matches one lowercased column instead of four ILIKEs per row.
ALTER TABLE source_summary ADD COLUMN search text GENERATED ALWAYS AS (
    lower(source_ip || ' ' || coalesce(as_org, '') || ' ' || coalesce(service_name, '') || ' ' || coalesce(country, ''))
) STORED;
CREATE INDEX source_summary_by_classification ON source_summary (customer_id, classification, messages DESC, source_ip);

-- Per customer, day, policy domain and service: what readiness and the services page add up.
CREATE TABLE daily_domain_services (
    customer_id   text    NOT NULL,
    day           date    NOT NULL,
    policy_domain text    NOT NULL,
    service       text    NOT NULL,
    known_service boolean NOT NULL,
    messages      bigint  NOT NULL,
    dmarc_pass    bigint  NOT NULL,
    aligned_pass  bigint  NOT NULL,
    forwarded     bigint  NOT NULL,
    trust_sum     double precision NOT NULL,
    PRIMARY KEY (customer_id, day, policy_domain, service)
);

-- Per customer and service over all days, with its classification (rolled up like source_summary).
CREATE TABLE service_summary (
    customer_id    text    NOT NULL,
    service        text    NOT NULL,
    known_service  boolean NOT NULL,
    messages       bigint  NOT NULL,
    dmarc_pass     bigint  NOT NULL,
    aligned_pass   bigint  NOT NULL,
    forwarded      bigint  NOT NULL,
    trust_score    double precision,
    sources        bigint  NOT NULL,
    first_day      date    NOT NULL,
    last_day       date    NOT NULL,
    marked         boolean NOT NULL,
    classification text    NOT NULL,
    PRIMARY KEY (customer_id, service)
);

-- Per customer: what every page header needs without counting 200,000 sources per request.
CREATE TABLE customer_summary (
    customer_id text   PRIMARY KEY,
    sources     bigint NOT NULL,
    categories  text[] NOT NULL
);

-- 3. Customer choices are events too: append-only, the projections read them (a service marked
--    as the customer's own changes its classification at the next refresh, and a rebuild
--    replays them). Recording one dirties the customer's newest slice so the rollup reruns.
CREATE TABLE customer_events (
    event_id    bigserial PRIMARY KEY,
    customer_id text  NOT NULL,
    kind        text  NOT NULL CHECK (kind IN ('service_marked', 'service_unmarked', 'alert_rule_set')),
    subject     text  NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX customer_events_by_subject ON customer_events (customer_id, kind, subject, event_id DESC);

CREATE VIEW service_marks AS
SELECT customer_id, subject AS service FROM (
    SELECT DISTINCT ON (customer_id, subject) customer_id, subject, kind FROM customer_events
    WHERE kind IN ('service_marked', 'service_unmarked') ORDER BY customer_id, subject, event_id DESC
) latest WHERE kind = 'service_marked';

CREATE FUNCTION mark_customer_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_dirty (customer_id, day)
    SELECT n.customer_id, max(e.day) FROM (SELECT DISTINCT customer_id FROM new_rows) n
    JOIN telemetry_events e ON e.customer_id = n.customer_id WHERE e.day IS NOT NULL
    GROUP BY n.customer_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER customer_events_dirty AFTER INSERT ON customer_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_customer_dirty();

-- 4. Alerts: one row per occurrence (rule + occurrence key), so re-evaluating (every refresh,
--    after a rebuild) never fires one twice. Delivery to the customer's webhook is recorded.
CREATE TABLE alerts (
    alert_id      bigserial PRIMARY KEY,
    customer_id   text  NOT NULL,
    rule          text  NOT NULL,
    occurrence    text  NOT NULL,
    message       text  NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}',
    fired_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    UNIQUE (customer_id, rule, occurrence)
);
CREATE INDEX alerts_undelivered ON alerts (alert_id) WHERE delivered_at IS NULL;

-- 5. Per source detail (DKIM / SPF tables of one source) and the disagreement list.
CREATE INDEX telemetry_events_by_source ON telemetry_events (customer_id, source_ip);
CREATE INDEX telemetry_events_disagreements ON telemetry_events (customer_id, day DESC)
    WHERE receiver_pass(policy_dkim, policy_spf) IS DISTINCT FROM coalesce(dmarc_pass, false);

-- 6. Sessions end when a token is rotated or revoked: a session remembers its token's
--    generation, and a request whose generation is not the tenant's current one is signed out.
ALTER TABLE tenants
    ADD COLUMN generation bigint NOT NULL DEFAULT 1,
    ADD COLUMN revoked_at timestamptz,
    ADD COLUMN webhook_url text,
    ADD COLUMN webhook_secret text,
    ADD COLUMN digest_email text;

-- Row-level security for the new tables, as in 0007: pipeline_web sees its tenant's rows only,
-- every other role all rows.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['daily_domain_services', 'service_summary', 'customer_summary', 'alerts',
                             'customer_events'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO pipeline_web', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($q$CREATE POLICY tenant_rows ON %I FOR SELECT TO pipeline_web
                          USING (customer_id = current_setting('pipeline.customer', true))$q$, t);
        EXECUTE format($q$CREATE POLICY pipeline_service ON %I TO PUBLIC
                          USING (current_user <> 'pipeline_web') WITH CHECK (current_user <> 'pipeline_web')$q$, t);
    END LOOP;
END $$;
GRANT SELECT ON known_forwarders, service_marks TO pipeline_web;
-- The view reads customer_events with the caller's rights, so its row-level security applies.
ALTER VIEW service_marks SET (security_invoker = true);

-- Every projection changed meaning or shape: recompute all of them at the next refresh.
INSERT INTO projection_dirty (customer_id, day)
SELECT DISTINCT customer_id, day FROM telemetry_events WHERE day IS NOT NULL
ON CONFLICT DO NOTHING;

-- 7. Keyset pagination of sources: each sort reads its index from the cursor on, so page 500
--    costs what page 1 costs (ORDER BY key, source_ip in one direction, compared as a row).
DROP INDEX source_summary_by_messages;
CREATE INDEX source_summary_keyset_messages ON source_summary (customer_id, messages, source_ip);
CREATE INDEX source_summary_keyset_pass_rate ON source_summary (customer_id, (coalesce(pass_rate, -1)), source_ip);
