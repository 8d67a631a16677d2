-- Queue messages refused on sight: they name a bucket or prefix this importer does not own, or
-- a record that is not from S3. Nothing of them is loaded; an operator sees who sent what here
-- (pipeline import-status) instead of the message vanishing.
CREATE TABLE rejected_messages (
    rejection_id  bigserial PRIMARY KEY,
    message_id    text        NOT NULL,
    reason        text        NOT NULL,
    body_excerpt  text        NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX rejected_messages_recent ON rejected_messages (rejected_at DESC);
