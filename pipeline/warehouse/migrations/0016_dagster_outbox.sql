-- Loads made outside Dagster runs (`pipeline importer` workers, the reconciler's repairs), waiting
-- to be reported to Dagster as materializations of their object's partition (issue #24): the
-- catalog shows every load, whichever process made it. A row is written in the load's own
-- transaction, so no committed load goes unreported; `worker_loads_sensor` reports it, and deletes
-- it the tick after (the daemon has stored the event by then): at least once, bounded by the rows
-- waiting, not by the history.
CREATE TABLE dagster_outbox (
    ledger_id  bigint PRIMARY KEY REFERENCES load_ledger (ledger_id),
    queued_at  timestamptz NOT NULL DEFAULT now()
);
