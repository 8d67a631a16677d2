"""The capacity controller: measure the backlog, decide (policy.py), apply (backends.py), record.

Called by the run launcher on every launch and by the capacity sensor on a schedule. Decisions
are serialised on the backend's ``scaling_state`` row, so the launcher (daemon) and the sensor
(code location) share one memory of cooldowns. A capacity API error is retried, recorded with
the decision and logged; it never raises into the caller, so a launch is never lost to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from pipeline.importer.queue import queue_depth
from pipeline.names import (
    ENRICHED_OBJECTS,
    IMPORT_SENSOR,
    INBOX_TAG,
    OBJECTS_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SENSOR_NAME_TAG,
    TELEMETRY_EVENTS,
)
from pipeline.scaling.backends import CapacityBackend, CapacityError
from pipeline.scaling.policy import ScalingPolicy, ScalingState, decide

log = logging.getLogger("pipeline.scaling")

IMPORT_ASSET = TELEMETRY_EVENTS
PROTECTION_LEASE_S = 900  # a busy worker renews its lease every batch; a dead one lapses


@dataclass(frozen=True)
class Backlog:
    visible: int  # notifications waiting on SQS for intake
    in_flight: int
    pending_partitions: int  # partitions of backfill runs: shown, not counted (runs import them, on their own tasks)
    inbox: int = 0  # inbox objects workers can take or hold (not those leased to runs): inbox.counts().for_workers

    @property
    def total(self) -> int:
        """The work this capacity (``pipeline importer`` workers) can claim: notifications to take
        in and inbox rows; never what Dagster runs hold, which they import on their own tasks."""
        return self.visible + self.in_flight + self.inbox


@dataclass(frozen=True)
class DecisionRecord:
    backend: str
    trigger: str
    backlog: Backlog
    current: int
    protected: int
    desired: int
    applied: bool
    attempts: int
    reason: str
    error: str | None = None

    def columns(self) -> dict:
        """The decision as the columns of its scaling_decisions row (also its log line)."""
        return {
            "backend": self.backend,
            "trigger": self.trigger[:200],
            "visible": self.backlog.visible,
            "in_flight": self.backlog.in_flight,
            "pending_partitions": self.backlog.pending_partitions,
            "inbox": self.backlog.inbox,
            "backlog": self.backlog.total,
            "current_capacity": self.current,
            "protected_workers": self.protected,
            "desired": self.desired,
            "applied": self.applied,
            "attempts": self.attempts,
            "reason": self.reason,
            "error": self.error,
        }

    def as_dict(self) -> dict:
        data = asdict(self)
        data["backlog"] = {**asdict(self.backlog), "total": self.backlog.total}
        return data


def pending_partitions(instance) -> int:
    """Object partitions in import runs that are queued or running and take no inbox rows.

    The import sensor's runs import inbox rows, which the backlog counts already; backfills
    launched from the UI do not, so their partitions are counted here.
    """
    if instance is None:
        return 0
    from dagster import AssetKey, DagsterRunStatus, RunsFilter

    active = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    total = 0
    for run in instance.get_runs(filters=RunsFilter(statuses=active)):
        if AssetKey(IMPORT_ASSET) not in (run.asset_selection or set()):
            continue
        if run.tags.get(SENSOR_NAME_TAG) == IMPORT_SENSOR or run.tags.get(INBOX_TAG):
            continue
        if OBJECTS_TAG in run.tags:
            total += int(run.tags[OBJECTS_TAG])
        elif PARTITION_TAG in run.tags:
            total += 1
        else:
            start, end = (
                run.tags.get(RANGE_START_TAG),
                run.tags.get(RANGE_END_TAG),
            )
            keys = instance.get_dynamic_partitions(ENRICHED_OBJECTS) if start else []
            if start in keys and end in keys:
                total += keys.index(end) - keys.index(start) + 1
            else:
                total += 1
    return total


def protected_workers(conn, backend: str) -> frozenset[str]:
    rows = conn.execute(
        "SELECT worker_id FROM worker_protection WHERE backend = %s AND protected_until > clock_timestamp()",
        (backend,),
    ).fetchall()
    return frozenset(r[0] for r in rows)


def set_protection(database_url: str, backend: str, worker_id: str, protected: bool) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if protected:
            conn.execute(
                "INSERT INTO worker_protection (worker_id, backend, protected_until) "
                "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (worker_id) DO UPDATE SET protected_until = EXCLUDED.protected_until, "
                "backend = EXCLUDED.backend, updated_at = clock_timestamp()",
                (worker_id, backend, PROTECTION_LEASE_S),
            )
        else:
            conn.execute("DELETE FROM worker_protection WHERE worker_id = %s", (worker_id,))


class CapacityController:
    def __init__(
        self,
        backend: CapacityBackend,
        policy: ScalingPolicy,
        database_url: str,
        sqs,
        queue_url: str,
        retries: int = 3,
        retry_delay_s: float = 0.5,
        clock=time.time,
    ):
        self.backend, self.policy, self.database_url = backend, policy, database_url
        self.sqs, self.queue_url = sqs, queue_url
        self.retries, self.retry_delay_s, self.clock = retries, retry_delay_s, clock

    def backlog(self, instance=None) -> Backlog:
        from pipeline.importer import inbox

        visible, in_flight = queue_depth(self.sqs, self.queue_url)
        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            claimable = inbox.counts(conn).for_workers
        return Backlog(visible, in_flight, pending_partitions(instance), claimable)

    def reconcile(self, trigger: str, instance=None, backlog: Backlog | None = None) -> DecisionRecord:
        """One decision: measure, decide, apply with retries, record. Never raises on API errors."""
        backlog = backlog or self.backlog(instance)
        with psycopg.connect(self.database_url) as conn:
            conn.execute("INSERT INTO scaling_state (backend) VALUES (%s) ON CONFLICT DO NOTHING", (self.backend.key,))
            row = conn.execute(
                "SELECT capacity, last_scale_out_at, last_needed_at FROM scaling_state WHERE backend = %s FOR UPDATE",
                (self.backend.key,),
            ).fetchone()
            state = ScalingState(*row)
            protected = protected_workers(conn, self.backend.key)
            decision = decide(self.policy, state, backlog.total, self.clock())
            desired = max(decision.desired, min(len(protected), self.policy.max_capacity))
            reason = decision.reason
            if desired > decision.desired:
                reason += f"; kept {desired} for {len(protected)} busy worker(s)"
            applied, attempts, error = self._apply(desired, protected)
            if applied:
                new = decision.state
                conn.execute(
                    "UPDATE scaling_state SET capacity = %s, last_scale_out_at = %s, last_needed_at = %s, "
                    "updated_at = clock_timestamp() WHERE backend = %s",
                    (desired, new.last_scale_out_at, new.last_needed_at, self.backend.key),
                )
            record = DecisionRecord(
                self.backend.key,
                trigger,
                backlog,
                state.capacity,
                len(protected),
                desired,
                applied,
                attempts,
                reason,
                error,
            )
            columns = record.columns()
            conn.execute(
                sql.SQL("INSERT INTO scaling_decisions ({}) VALUES ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ),
                list(columns.values()),
            )
        log.log(
            logging.INFO if applied else logging.ERROR,
            "scaling decision " + " ".join(f"{name}=%r" for name in columns),
            *columns.values(),
        )
        return record

    def _apply(self, desired: int, protected: frozenset[str]) -> tuple[bool, int, str | None]:
        error = None
        for attempt in range(1, self.retries + 1):
            try:
                self.backend.set_desired(desired, protected)
                return True, attempt, None
            except CapacityError as exc:
                error = str(exc)
            except Exception as exc:  # a backend bug must not cost a launch either
                error = f"{type(exc).__name__}: {exc}"
            log.warning("scaling: %s set_desired(%d) attempt %d failed: %s", self.backend.name, desired, attempt, error)
            if attempt < self.retries:
                time.sleep(self.retry_delay_s * 2 ** (attempt - 1))
        return False, self.retries, error


def recent_decisions(database_url: str, backend: str | None = None, limit: int = 10) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT decided_at, backend, trigger, visible, in_flight, pending_partitions, inbox, backlog, "
            "current_capacity, "
            "protected_workers, desired, applied, attempts, reason, error FROM scaling_decisions "
            "WHERE %(backend)s::text IS NULL OR backend = %(backend)s ORDER BY decision_id DESC LIMIT %(limit)s",
            {"backend": backend, "limit": limit},
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
