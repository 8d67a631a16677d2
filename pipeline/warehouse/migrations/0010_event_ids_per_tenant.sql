-- Event ids are unique per tenant, not across the warehouse: a row of one customer can never
-- take an id another customer's load needs (issue #21). The tenant is part of the event id's
-- hash already; the key makes the guarantee structural, whatever any writer computes.
ALTER TABLE telemetry_events DROP CONSTRAINT telemetry_events_pkey;
ALTER TABLE telemetry_events ADD CONSTRAINT telemetry_events_pkey PRIMARY KEY (customer_id, event_id);
