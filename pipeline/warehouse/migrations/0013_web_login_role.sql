-- The web application logs in as a role of its own (issue #21, defence in depth).
--
-- pipeline_web_login may do two things only: call the web_* functions below (sign-in, sessions,
-- the tenant's own notification settings and pipeline health), and SET ROLE pipeline_web, the
-- tenant-scoped role that row-level security restricts to current_setting('pipeline.customer').
-- It owns nothing, reads no table by itself (NOINHERIT), and never sees another tenant's rows,
-- token hashes or webhook secrets, whatever SQL it sends.
--
-- Row-level security is FORCEd on every tenant table, so the tables' owner is subject to it too;
-- the service policies name their role, pipeline_service (the owner and any operator role an
-- administrator grants it), instead of PUBLIC with current_user <> 'pipeline_web'.

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pipeline_web_login') THEN
        CREATE ROLE pipeline_web_login LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pipeline_service') THEN
        CREATE ROLE pipeline_service NOLOGIN;
    END IF;
END $$;
GRANT pipeline_web TO pipeline_web_login;
DO $$ BEGIN
    EXECUTE format('GRANT pipeline_service TO %I', current_user);
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['telemetry_events', 'daily_domain_compliance', 'daily_source_summary', 'daily_reports',
                             'source_summary', 'daily_domain_services', 'service_summary', 'customer_summary',
                             'alerts', 'customer_events'] LOOP
        EXECUTE format('DROP POLICY pipeline_service ON %I', t);
        EXECUTE format('CREATE POLICY pipeline_service ON %I TO pipeline_service USING (true) WITH CHECK (true)', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;

-- The tenant records its own choices (service marks, alert rules) as events, as itself.
GRANT INSERT ON customer_events TO pipeline_web;
GRANT USAGE ON SEQUENCE customer_events_event_id_seq TO pipeline_web;
CREATE POLICY tenant_events ON customer_events FOR INSERT TO pipeline_web
    WITH CHECK (customer_id = current_setting('pipeline.customer', true)
                AND kind IN ('service_marked', 'service_unmarked', 'alert_rule_set'));
-- The event dirties the customer's newest slice: that bookkeeping runs as the owner.
ALTER FUNCTION mark_customer_dirty() SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE ALL ON FUNCTION mark_customer_dirty() FROM PUBLIC;

-- Sign-in and sessions. A session is started only with a live token's hash, in the same call.
CREATE FUNCTION web_sign_in(p_token_hash text, p_session_hash text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE c text; g bigint;
BEGIN
    SELECT customer_id, generation INTO c, g FROM tenants WHERE token_hash = p_token_hash AND revoked_at IS NULL;
    IF c IS NULL THEN RETURN NULL; END IF;
    INSERT INTO web_sessions (session_hash, customer_id, generation) VALUES (p_session_hash, c, g);
    RETURN c;
END $$;

CREATE FUNCTION web_token_customer(p_token_hash text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT customer_id FROM tenants WHERE token_hash = p_token_hash AND revoked_at IS NULL
$$;

CREATE FUNCTION web_session_customer(p_session_hash text, p_days integer) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT s.customer_id FROM web_sessions s JOIN tenants t USING (customer_id)
    WHERE s.session_hash = p_session_hash AND s.ended_at IS NULL AND t.revoked_at IS NULL
      AND s.generation = t.generation AND s.created_at > clock_timestamp() - p_days * interval '1 day'
$$;

CREATE FUNCTION web_session_end(p_session_hash text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE web_sessions SET ended_at = clock_timestamp() WHERE session_hash = p_session_hash AND ended_at IS NULL
$$;

-- The tenant's own settings and pipeline health: the tenant is the session's, never a parameter.
CREATE FUNCTION web_notifications() RETURNS TABLE (webhook_url text, digest_email text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT webhook_url, digest_email FROM tenants WHERE customer_id = current_setting('pipeline.customer', true)
$$;

CREATE FUNCTION web_set_webhook(p_url text, p_secret text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE tenants SET webhook_url = nullif(p_url, ''), webhook_secret = p_secret
    WHERE customer_id = current_setting('pipeline.customer', true)
$$;

CREATE FUNCTION web_set_digest_email(p_email text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE tenants SET digest_email = nullif(p_email, '') WHERE customer_id = current_setting('pipeline.customer', true)
$$;

CREATE FUNCTION web_recent_loads(p_enriched_prefix text)
    RETURNS TABLE (event text, object_key text, rows bigint, recorded_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT event, object_key, rows, recorded_at FROM load_ledger
    WHERE starts_with(object_key, p_enriched_prefix || 'customer=' || current_setting('pipeline.customer', true) || '/')
    ORDER BY ledger_id DESC LIMIT 10
$$;

CREATE FUNCTION web_open_failures(p_enriched_prefix text)
    RETURNS TABLE (object_key text, error text, attempts bigint, last_failed timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT object_key, max(error), count(*), max(failed_at) FROM import_failures f
    WHERE starts_with(object_key, p_enriched_prefix || 'customer=' || current_setting('pipeline.customer', true) || '/')
      AND NOT EXISTS (SELECT 1 FROM load_ledger l WHERE l.object_key = f.object_key AND l.recorded_at > f.failed_at)
    GROUP BY object_key ORDER BY max(failed_at) DESC LIMIT 10
$$;

REVOKE ALL ON FUNCTION web_sign_in(text, text), web_token_customer(text), web_session_customer(text, integer),
    web_session_end(text), web_notifications(), web_set_webhook(text, text), web_set_digest_email(text),
    web_recent_loads(text), web_open_failures(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION web_sign_in(text, text), web_token_customer(text), web_session_customer(text, integer),
    web_session_end(text) TO pipeline_web_login;
GRANT EXECUTE ON FUNCTION web_notifications(), web_set_webhook(text, text), web_set_digest_email(text),
    web_recent_loads(text), web_open_failures(text) TO pipeline_web;
