-- Dagster dynamic partition key <-> S3 object. Partition keys are made safe and short, so
-- this table is what makes them reversible. pruned_at: the partition was removed from Dagster
-- to keep the partition count bounded (the ledger keeps the history).
CREATE TABLE object_partitions (
    partition_key text PRIMARY KEY,
    bucket        text        NOT NULL,
    object_key    text        NOT NULL,
    added_at      timestamptz NOT NULL DEFAULT now(),
    pruned_at     timestamptz,
    UNIQUE (bucket, object_key)
);
