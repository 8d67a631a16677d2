"""Every knob of the pipeline, in one table: name, type, default, what it does.

Where a value comes from:

* the **stack** (endpoints, buckets, queues, DSNs): ``pipeline.settings`` (the recorded local
  stack, or the environment in production), overridable per variable below;
* every other knob: an environment variable ``PIPELINE_*``, read through :func:`get`, which
  parses it once per environment and raises :class:`ConfigurationError` naming the variable,
  the value and what to set instead. Nothing reads ``os.environ`` for a knob anywhere else
  (a test checks the source).

``pipeline config [--json]`` prints the effective value and source of every knob and exits 2
on a bad one; the README's configuration table is :func:`markdown_table` (a test keeps them in
step). Dagster-free on purpose: the stage cores, the CLI and ``defs/`` all read from here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache


class ConfigurationError(RuntimeError):
    """A setting is missing, malformed or points at something that does not answer; the message says which."""


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # int | float | str | bool | choice | date
    default: object
    stage: str
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str | None) -> object:
        if raw is None or raw.strip() == "":
            return self.default
        raw = raw.strip()
        expected = self.expectation()
        if self.kind == "str":
            return raw
        if self.kind == "date":
            try:
                return dt.date.fromisoformat(raw)
            except ValueError:
                raise ConfigurationError(f"{self.name}={raw!r} is not a day: set {expected}.") from None
        if self.kind == "choice":
            if raw.lower() not in self.choices:
                raise ConfigurationError(f"{self.name}={raw!r}: set {expected}.")
            return raw.lower()
        if self.kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ConfigurationError(f"{self.name}={raw!r} is not a yes/no value: set {expected}.")
        try:
            value: float = int(raw) if self.kind == "int" else float(raw)
        except ValueError:
            raise ConfigurationError(
                f"{self.name}={raw!r} is not {'an integer' if self.kind == 'int' else 'a number'}: set {expected}."
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise ConfigurationError(f"{self.name}={raw!r} is below {self.minimum:g}: set {expected}.")
        return value

    def expectation(self) -> str:
        default = "unset" if self.default is None else repr(self.default) if self.kind == "str" else str(self.default)
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)} (default {default})"
        if self.kind == "date":
            return f"a day, YYYY-MM-DD (default {default})"
        if self.kind == "bool":
            return f"1 or 0 (default {'1' if self.default else '0'})"
        if self.kind in {"int", "float"}:
            low = f" >= {self.minimum:g}" if self.minimum is not None else ""
            return f"{'an integer' if self.kind == 'int' else 'a number'}{low} (default {default})"
        return f"a value (default {default})"


def _k(name, kind, default, stage, doc, minimum=None, choices=()) -> Knob:
    return Knob(name, kind, default, stage, doc, minimum, tuple(choices))


# One knob per line: a table (the formatter leaves it so).
# fmt: off
KNOBS: tuple[Knob, ...] = (
    # -- where the stack is (pipeline.settings applies these over the recorded local stack) ------------
    _k("PIPELINE_ENV", "choice", "local", "stack", "`local`: the stack `pipeline up` recorded; `prod`: real AWS, configured by the variables below.", choices=("local", "prod")),
    _k("PIPELINE_HOME", "str", None, "stack", "Local state: stack.json, the embedded PostgreSQL, logs, spool (default `./.pipeline`)."),
    _k("PIPELINE_AWS_ENDPOINT_URL", "str", None, "stack", "S3/SNS/SQS/ECS endpoint (the local moto server; unset on AWS)."),
    _k("PIPELINE_RAW_BUCKET", "str", None, "stack", "Bucket the collector writes raw reports to."),
    _k("PIPELINE_ENRICHED_BUCKET", "str", None, "stack", "Bucket Spark publishes enriched objects to (the importer's source)."),
    _k("PIPELINE_ENRICHED_PREFIX", "str", None, "stack", "Key prefix of enriched objects (default `enriched/`)."),
    _k("PIPELINE_IMPORT_QUEUE_URL", "str", None, "stack", "The SQS queue that receives the enriched bucket's notifications."),
    _k("PIPELINE_RAW_QUEUE_URL", "str", None, "stack", "The SQS queue that receives the raw bucket's notifications (the raw sensor's intake)."),
    _k("PIPELINE_DEAD_LETTER_QUEUE_URL", "str", None, "stack", "That queue's dead-letter queue."),
    _k("PIPELINE_TOPIC_ARN", "str", None, "stack", "The SNS topic of the enriched bucket's notifications."),
    _k("PIPELINE_BUCKET_VERSIONING", "bool", False, "stack", "`pipeline up`: versioning on the enriched bucket (a template parameter)."),
    _k("PIPELINE_LOG_LEVEL", "choice", "info", "stack", "Log level of `pipeline` commands (logs go to stderr).", choices=("debug", "info", "warning", "error")),
    # -- collector -------------------------------------------------------------------------------------
    _k("PIPELINE_FIRST_DAY", "date", dt.date(2012, 1, 1), "collector", "The first day of the telemetry calendar (the day partitions start there): a report that begins before it is refused, naming this knob (default: the year DMARC was published)."),
    _k("PIPELINE_COLLECTOR_CUSTOMER", "str", None, "collector", "The customer this collector's credentials are scoped to (deploy/cloudformation/collector.yaml): any other --customer is refused before S3 is touched."),
    _k("PIPELINE_IMAP_HOST", "str", None, "collector", "`pipeline collect --imap`: the rua mailbox's IMAP server."),
    _k("PIPELINE_IMAP_PORT", "int", None, "collector", "Its port (default 993 with TLS, 143 without).", minimum=1),
    _k("PIPELINE_IMAP_USER", "str", None, "collector", "The mailbox's account."),
    _k("PIPELINE_IMAP_PASSWORD", "str", None, "collector", "Its password (shown as set, never printed)."),
    _k("PIPELINE_IMAP_FOLDER", "str", "INBOX", "collector", "The folder the reports arrive in; they move to Archive or Invalid beside it."),
    _k("PIPELINE_IMAP_TLS", "bool", True, "collector", "IMAPS (TLS from the first byte); 0 only for a server on the same host."),
    _k("PIPELINE_RAW_SWEEP_CUSTOMERS", "int", 50, "collector", "Customers whose recent day prefixes one raw sensor tick lists, for notifications that were lost (round-robin).", minimum=1),
    _k("PIPELINE_RAW_SWEEP_INTERVAL_S", "float", 300.0, "collector", "Seconds between the raw sensor's sweeps of recent day prefixes (0: every tick); the ticks between only take in notifications.", minimum=0),
    _k("PIPELINE_RAW_RUN_INTERVAL_S", "float", 30.0, "collector", "Average seconds between two raw sensor ticks that report new objects and request their enrichment, under a steady load (the sensor ticks every 5 s). It bounds the batches a day gets, and so the Dagster partitions (bench trickle's simulation).", minimum=0),
    _k("PIPELINE_RAW_RUN_BURST", "int", 10, "collector", "Reports the raw sensor may make in a row, 5 s apart, after a quiet spell, before PIPELINE_RAW_RUN_INTERVAL_S spaces them (a token bucket): a report arriving after a quiet spell is enriched at once.", minimum=1),
    _k("PIPELINE_RAW_SWEEP_DAYS", "int", 3, "collector", "Recent days (to tomorrow) the raw sensor's sweep lists per customer.", minimum=1),
    _k("PIPELINE_COLLECT_WORKERS", "int", None, "collector", "Processes that parse reports when a collection holds 16 MB of reports or more (default: the machine's cores; a smaller batch is parsed faster in one process than worker processes start).", minimum=1),
    # -- enrichment (Spark) ----------------------------------------------------------------------------
    _k("PIPELINE_SPARK_MASTER", "str", "local[*]", "enrich", "Spark master: `local[N]`, `spark://host:7077`, `yarn` (EMR), ..."),
    _k("PIPELINE_SPARK_DRIVER_HOST", "str", "127.0.0.1", "enrich", "Address executors reach the driver on (set it on a cluster)."),
    _k("PIPELINE_SPARK_BIND_ADDRESS", "str", "127.0.0.1", "enrich", "Address the driver listens on (`0.0.0.0` on a cluster)."),
    _k("PIPELINE_SPARK_DRIVER_MEMORY", "str", "2g", "enrich", "spark.driver.memory."),
    _k("PIPELINE_SPARK_EXECUTOR_MEMORY", "str", "1g", "enrich", "spark.executor.memory."),
    _k("PIPELINE_RAW_MAX_BYTES", "int", 512 * 1024 * 1024, "enrich", "Most bytes a raw object may decompress to; a larger one (or one that is not gzip) is quarantined whole, not read.", minimum=1024),
    _k("PIPELINE_ENRICH_BATCH_BYTES", "int", 16 * 1024 * 1024, "enrich", "Most raw (gzip) bytes in one enrichment batch: a day's new raw objects are cut into batches of at most this size, each enriched in one task pass and published as its own objects.", minimum=1024),
    _k("PIPELINE_ENRICH_LOCAL_BYTES", "int", 4 * 1024 * 1024, "enrich", "A run whose raw objects to enrich total fewer bytes is enriched in the run's own process by the same task code (a Spark session takes seconds to start; a few reports take milliseconds); 0: always Spark.", minimum=0),
    _k("PIPELINE_SPARK_SHIP_CODE", "bool", False, "enrich", "Ship the `pipeline` package to executors (when their image does not have it)."),
    # -- import: intake, planning, runs, database timeouts ---------------------------------------------
    _k("PIPELINE_INTAKE_VISIBILITY_S", "int", 120, "import", "Visibility of a message between its receive and intake's commit + delete.", minimum=1),
    _k("PIPELINE_SENSOR_MAX_MESSAGES", "int", 1000, "import", "Messages the import sensor takes in, and inbox rows it plans, per tick.", minimum=1),
    _k("PIPELINE_OBJECTS_PER_RUN", "int", 500, "import", "Objects per import run the sensor requests.", minimum=1),
    _k("PIPELINE_SENSOR_SINGLE_RUNS", "int", 100, "import", "Runs of one object (one partition each) per tick before the sensor groups objects.", minimum=0),
    _k("PIPELINE_RECONCILE_SLICES", "int", 500, "import", "Slices (one customer's day each) of the enriched prefix one import_reconciler tick sends to a reconcile run.", minimum=1),
    _k("PIPELINE_IMPORT_REFRESH", "bool", True, "import", "An import run refreshes the customers' projections as it ends, so pages follow imports at once (0: only the automation sensor's warehouse_projections runs refresh them; `bench flood` times the refresh as a stage of its own)."),
    _k("PIPELINE_IMPORT_FRESHNESS_HOURS", "float", 6.0, "import", "telemetry_events' freshness policy: failing when no object was imported for this long (warning at half of it); Dagster's freshness daemon evaluates it.", minimum=0.1),
    _k("PIPELINE_RETENTION_DAYS", "int", None, "import", "Days of telemetry the warehouse keeps: the daily warehouse_maintenance job (and `pipeline retention`) drops telemetry_events' monthly partitions whose every day is older, with their projections and their objects' ledger and inbox rows (no DELETE of events); verify and reconcile leave objects past it alone. Unset: keep everything (the local default); the production template sets 400, as its S3 lifecycle rules do.", minimum=1),
    _k("PIPELINE_PARTITION_RETENTION_DAYS", "float", 7.0, "import", "Days a settled object's partition and inbox row are kept before pruning.", minimum=0),
    _k("PIPELINE_IMPORT_STREAMS", "int", 2, "import", "Objects an importer loads at once, each on its own connection.", minimum=1),
    _k("PIPELINE_IMPORT_MAX_ATTEMPTS", "int", 5, "import", "Attempts at an inbox row before it is dead-lettered.", minimum=1),
    _k("PIPELINE_IMPORT_RETRY_BASE_S", "float", 10.0, "import", "Backoff after a failure: base * 2^(attempts-1), capped.", minimum=0),
    _k("PIPELINE_IMPORT_RETRY_MAX_S", "float", 600.0, "import", "Cap of that backoff.", minimum=0),
    _k("PIPELINE_IMPORT_LEASE_S", "float", 300.0, "import", "A worker's claim on its rows; its heartbeat renews it every third.", minimum=1),
    _k("PIPELINE_IMPORT_PLAN_LEASE_S", "float", 3600.0, "import", "How long a planned run may wait in Dagster's queue before others take its rows.", minimum=1),
    _k("PIPELINE_IMPORT_ORPHAN_GRACE_S", "float", 60.0, "import", "A run key with no run this long after planning is an orphan; its rows come free.", minimum=0),
    _k("PIPELINE_WORKER_ID", "str", None, "import", "Name of a `pipeline importer` worker (the local capacity backend sets it)."),
    _k("PIPELINE_DB_LOCK_TIMEOUT_S", "float", 60.0, "import", "lock_timeout: a key's lock held longer postpones the object (must be < the statement timeout).", minimum=0),
    _k("PIPELINE_DB_STATEMENT_TIMEOUT_S", "float", 1800.0, "import", "statement_timeout of importer connections.", minimum=0),
    _k("PIPELINE_DB_IDLE_IN_TRANSACTION_S", "float", 60.0, "import", "idle_in_transaction_session_timeout of importer connections.", minimum=0),
    _k("PIPELINE_DB_KEEPALIVE_IDLE_S", "int", 30, "import", "TCP keepalive idle time of importer connections.", minimum=1),
    _k("PIPELINE_DB_TCP_USER_TIMEOUT_S", "float", 120.0, "import", "TCP user timeout: a silent peer is cut after this long.", minimum=0),
    # -- capacity --------------------------------------------------------------------------------------
    _k("PIPELINE_CAPACITY_BACKEND", "choice", "local", "capacity", "Where importer capacity lives: local worker processes, an ECS service or an EC2 auto-scaling group.", choices=("local", "ecs", "asg")),
    _k("PIPELINE_ECS_CLUSTER", "str", None, "capacity", "Cluster of the worker service (backend ecs)."),
    _k("PIPELINE_ECS_SERVICE", "str", None, "capacity", "The worker service (backend ecs)."),
    _k("PIPELINE_ASG_NAME", "str", None, "capacity", "The worker auto-scaling group (backend asg)."),
    _k("PIPELINE_WORKERS_DIR", "str", None, "capacity", "Pid files of local workers (default `$PIPELINE_HOME/workers`)."),
    _k("PIPELINE_SCALING_TARGET_PER_WORKER", "int", 200, "capacity", "Backlog (objects) per worker the policy aims at.", minimum=1),
    _k("PIPELINE_SCALING_MIN", "int", 0, "capacity", "Fewest workers (0: scale to zero).", minimum=0),
    _k("PIPELINE_SCALING_MAX", "int", None, "capacity", "Most workers (default 10; 4 with the local backend).", minimum=0),
    _k("PIPELINE_SCALING_ACTIVATION", "int", 1, "capacity", "Backlog below which capacity may go to the minimum.", minimum=0),
    _k("PIPELINE_SCALING_COOLDOWN_S", "float", 300.0, "capacity", "Seconds of quiet before scaling in.", minimum=0),
    _k("PIPELINE_SCALING_STEP", "int", None, "capacity", "Most workers removed per scale-in decision (default: straight to the target after the cooldown).", minimum=1),
    _k("PIPELINE_CAPACITY_SENSOR_INTERVAL_S", "int", 30, "capacity", "Seconds between capacity_sensor ticks.", minimum=1),
    # -- web -------------------------------------------------------------------------------------------
    _k("PIPELINE_WEB_SECRET", "str", None, "web", "Key that signs the web application's sessions (default: random per start, which signs everyone out on restart)."),
    _k("PIPELINE_WEB_DATABASE_URL", "str", None, "web", "The web application's connection, as the pipeline_web_login role (default: the warehouse URL with that role and no password, as on the local stack)."),
    _k("PIPELINE_WEB_STATEMENT_TIMEOUT_S", "float", 30.0, "web", "statement_timeout and idle_in_transaction_session_timeout of the web application's connections.", minimum=1),
    _k("PIPELINE_WEB_SECURE_COOKIE", "bool", False, "web", "Mark the session cookie Secure (set it when the application is served over TLS, directly or behind a proxy)."),
    _k("PIPELINE_SMTP_HOST", "str", None, "web", "`pipeline digest`: the SMTP server that sends the weekly digests (unset: digests are not sent)."),
    _k("PIPELINE_SMTP_PORT", "int", 25, "web", "`pipeline digest`: the SMTP server's port.", minimum=1),
    _k("PIPELINE_SMTP_FROM", "str", "dmarc-reports@localhost", "web", "`pipeline digest`: the digests' From address."),
    _k("PIPELINE_SMTP_STARTTLS", "bool", False, "web", "`pipeline digest`: upgrade the SMTP connection with STARTTLS."),
    _k("PIPELINE_AUTOMATION", "bool", True, "web", "The automation sensor (the projections and alerts refresh after imports) and the weekly digest schedule start running (0: they start stopped, as in the tests' daemons and the import benchmarks)."),
    _k("PIPELINE_ALERTS_SCHEDULE", "bool", True, "web", "Evaluate alert rules every hour as well as after each refresh, so reports that stop arriving are noticed when nothing is imported (0: the schedule starts stopped)."),
    _k("PIPELINE_WEBHOOK_TIMEOUT_S", "float", 10.0, "web", "Alerts: the overall deadline of one webhook delivery (connect, TLS, send, status line); past it, retried at the next evaluation.", minimum=0.1),
    _k("PIPELINE_WEBHOOK_ALLOW_HTTP", "bool", False, "web", "Alerts: accept plain http:// webhook URLs (default: https only)."),
    _k("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "bool", False, "web", "Alerts: accept webhooks on loopback, private and link-local addresses (default: public addresses only; never on a shared deployment)."),
    # -- operations ------------------------------------------------------------------------------------
    _k("PIPELINE_OPS_WEBHOOK_URL", "str", None, "operations", "run_failure_alerts posts each failed Dagster run here as JSON (run id, job, stage, partitions, error); unset: logged only."),
    _k("PIPELINE_OPS_SNS_TOPIC_ARN", "str", None, "operations", "run_failure_alerts publishes each failed Dagster run to this SNS topic (production: the template's alarm topic)."),
    # -- test support (pipeline chaos) -----------------------------------------------------------------
    _k("PIPELINE_CHAOS_LATE_S", "float", 3.0, "chaos", "`pipeline chaos`: the pause of a deliberately late importer.", minimum=0),
)
# fmt: on

BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
STAGES = ("stack", "collector", "enrich", "import", "capacity", "web", "chaos")


@lru_cache(maxsize=64)
def _parsed(items: tuple[tuple[str, str], ...]) -> dict[str, object]:
    raw = dict(items)
    return {k.name: k.parse(raw.get(k.name)) for k in KNOBS if k.name in raw}


def _snapshot(environ: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    env = os.environ if environ is None else environ
    return tuple(sorted((name, env[name]) for name in BY_NAME if name in env))


def get(name: str, environ: Mapping[str, str] | None = None):
    """The value of knob ``name``: parsed once per environment, its default when unset."""
    knob = BY_NAME[name]  # a KeyError here is a programming error: add the knob to KNOBS
    snapshot = _snapshot(environ)
    if not any(n == name for n, _ in snapshot):
        return knob.default
    try:
        return _parsed(snapshot)[name]
    except ConfigurationError:
        return knob.parse(dict(snapshot)[name])  # raises the error of this knob, not of another


def errors(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every bad value in the environment, one message each."""
    env = os.environ if environ is None else environ
    found = []
    for knob in KNOBS:
        try:
            knob.parse(env.get(knob.name))
        except ConfigurationError as exc:
            found.append(str(exc))
    return found


def validate(environ: Mapping[str, str] | None = None) -> None:
    """Raise one ConfigurationError listing every bad value (a code location calls this as it loads)."""
    found = errors(environ)
    if found:
        raise ConfigurationError("bad configuration:\n  " + "\n  ".join(found))


def is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether knob ``name`` is set (not empty) rather than at its default."""
    BY_NAME[name]  # a KeyError here is a programming error: add the knob to KNOBS
    env = os.environ if environ is None else environ
    return env.get(name) not in (None, "")


def effective(environ: Mapping[str, str] | None = None) -> list[dict]:
    """Each knob with its value and where the value came from (for `pipeline config`)."""
    env = os.environ if environ is None else environ
    rows = []
    for knob in KNOBS:
        raw = env.get(knob.name)
        source = "environment" if raw not in (None, "") else "default"
        try:
            value, error = knob.parse(raw), None
        except ConfigurationError as exc:
            value, error = raw, str(exc)
        if knob.name.endswith(("SECRET", "PASSWORD")) and source == "environment":
            value = "(set)"
        rows.append(
            {
                "name": knob.name,
                "stage": knob.stage,
                "value": value,
                "default": knob.default,
                "source": source,
                "error": error,
            }
        )
    return rows


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | stage | default | what it does |", "|---|---|---|---|"]
    for knob in KNOBS:
        default = "" if knob.default is None else f"`{knob.default}`"
        if knob.kind == "bool":
            default = f"`{int(bool(knob.default))}`"
        lines.append(f"| `{knob.name}` | {knob.stage} | {default} | {knob.doc} |")
    return "\n".join(lines)
