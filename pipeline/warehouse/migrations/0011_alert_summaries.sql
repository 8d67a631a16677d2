-- Alert floods (issue #21): past a few new alerts for one tenant in one evaluation, the rest are
-- recorded and listed but summarized in one alert ('summary'), the one that is delivered.
ALTER TABLE alerts ADD COLUMN summarized_in bigint REFERENCES alerts (alert_id);
DROP INDEX alerts_undelivered;
CREATE INDEX alerts_undelivered ON alerts (customer_id, alert_id) WHERE delivered_at IS NULL AND summarized_in IS NULL;
