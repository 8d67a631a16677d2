-- Queue-depth autoscaling (DESIGN.md section 6). The run launcher (in the daemon or webserver)
-- and the capacity sensor (in the code location) both decide capacity; they share the policy's
-- memory here and serialise on a row lock, so a scale-in cooldown survives restarts and two
-- deciders never undo each other.
CREATE TABLE scaling_state (
    backend            text PRIMARY KEY,
    capacity           integer     NOT NULL DEFAULT 0,
    last_scale_out_at  double precision,
    last_needed_at     double precision,
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every decision with its inputs, for `pipeline scaling status` and for operators to grep.
CREATE TABLE scaling_decisions (
    decision_id        bigserial PRIMARY KEY,
    decided_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    backend            text        NOT NULL,
    trigger            text        NOT NULL,
    visible            integer     NOT NULL,
    in_flight          integer     NOT NULL,
    pending_partitions integer     NOT NULL,
    backlog            integer     NOT NULL,
    current_capacity   integer     NOT NULL,
    protected_workers  integer     NOT NULL,
    desired            integer     NOT NULL,
    applied            boolean     NOT NULL,
    attempts           integer     NOT NULL,
    reason             text        NOT NULL,
    error              text
);

CREATE INDEX scaling_decisions_recent ON scaling_decisions (backend, decided_at DESC);

-- Busy workers hold a protection lease while they have messages in hand. The controller never
-- asks for less capacity than there are live leases, whatever the backend; backends add their
-- native protection on top (ASG instance protection, ECS task protection, local: never SIGTERM).
CREATE TABLE worker_protection (
    worker_id       text PRIMARY KEY,
    backend         text        NOT NULL,
    protected_until timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
