"""The embedded local stack: moto in server mode + PostgreSQL, provisioned from deploy/.

``up`` is idempotent and recovers from a stale state folder (processes that died, ports taken
since). ``down`` stops what ``up`` started. Everything lives under ``$PIPELINE_HOME``.
"""

from __future__ import annotations

import fcntl
import logging
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from pipeline import config
from pipeline.aws import client_factory
from pipeline.local.ports import free_port, wait_for_port
from pipeline.local.postgres import EmbeddedPostgres, check_reachable, prepare_databases, redact_url
from pipeline.local.processes import pid_alive, read_pid, spawn_detached, stop_process
from pipeline.local.provision import STACK_NAME, provision
from pipeline.settings import DEFAULT_NAME_PREFIX, ConfigurationError, Settings, pipeline_home, read_state, write_state
from pipeline.warehouse.schema import migrate

log = logging.getLogger(__name__)

MOTO_PREFERRED_PORT = 4566
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@contextmanager
def _stack_lock(home: Path):
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _moto_answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def _start_moto(home: Path, previous: Settings | None) -> tuple[str, int]:
    pid_file = home / "moto.pid"
    pid = read_pid(pid_file)
    endpoint = previous.aws_endpoint_url if previous else None
    if pid_alive(pid) and endpoint and _moto_answers(endpoint):
        log.info("moto already running pid=%s endpoint=%s", pid, endpoint)
        return endpoint, pid
    stop_process(pid)  # alive but not answering: a wedged server from an earlier run
    preferred = int(endpoint.rsplit(":", 1)[1]) if endpoint else MOTO_PREFERRED_PORT
    port = free_port(preferred)
    pid = spawn_detached(
        [sys.executable, "-m", "pipeline.local.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        log_file=home / "moto.log",
        pid_file=pid_file,
    )
    endpoint = f"http://127.0.0.1:{port}"
    if not wait_for_port(port, timeout=30) or not _moto_answers(endpoint):
        stop_process(pid)
        raise ConfigurationError(f"moto did not start on port {port}; see {home / 'moto.log'}")
    log.info("moto started pid=%s endpoint=%s", pid, endpoint)
    return endpoint, pid


def up(home: Path | None = None, database_url: str | None = None, dagster_database_url: str | None = None) -> Settings:
    """Start (or find) the local stack; return its settings, also recorded in the state folder."""
    home = home or pipeline_home()
    with _stack_lock(home):
        previous = read_state(home)
        if database_url:
            check_reachable(database_url)  # fail before starting anything that would be left behind
        moto_was_running = pid_alive(read_pid(home / "moto.pid"))
        endpoint, moto_pid = _start_moto(home, previous)
        try:
            return _finish_up(home, previous, endpoint, moto_pid, database_url, dagster_database_url)
        except BaseException:
            if not moto_was_running:  # leave nothing behind that this failed call started
                stop_process(moto_pid)
                (home / "moto.pid").unlink(missing_ok=True)
            raise


def _finish_up(
    home: Path,
    previous: Settings | None,
    endpoint: str,
    moto_pid: int,
    database_url: str | None,
    dagster_database_url: str | None,
) -> Settings:
    """Provision the endpoint, prepare PostgreSQL, migrate, record the state (moto is running)."""
    settings = provision_stack(Settings(env="local", aws_endpoint_url=endpoint, **LOCAL_CREDENTIALS))

    preferred_pg = None
    if previous and previous.extra.get("postgres") == "embedded" and previous.database_url:
        preferred_pg = int(previous.database_url.split(":")[-1].split("/")[0])
    warehouse_url, dagster_url, embedded = prepare_databases(home, database_url, dagster_database_url, preferred_pg)
    settings.database_url = warehouse_url
    settings.dagster_database_url = dagster_url
    applied = migrate(warehouse_url)
    settings.extra = {
        "moto_pid": moto_pid,
        "postgres": "embedded" if embedded else "external",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_state(settings, home)
    log.info(
        "stack up home=%s endpoint=%s database=%s migrations_applied=%s",
        home,
        endpoint,
        redact_url(warehouse_url),
        applied or "none",
    )
    return settings


def bucket_versioning() -> str:
    """The enriched bucket's versioning for the local stack: PIPELINE_BUCKET_VERSIONING=1 enables it."""
    return "Enabled" if config.get("PIPELINE_BUCKET_VERSIONING") else "Suspended"


def provision_stack(
    settings: Settings,
    name_prefix: str = DEFAULT_NAME_PREFIX,
    versioning: str | None = None,
    stack_name: str = STACK_NAME,
) -> Settings:
    """Provision deploy/cloudformation/pipeline.yaml on ``settings``' endpoint; the names it made.

    Another ``name_prefix`` and ``stack_name`` give a second, independent data plane on the same
    endpoint (the tests run a versioned one beside the plain one).
    """
    sqs = client_factory(settings)("sqs")
    outputs = provision(
        client_factory(settings),
        parameters={"NamePrefix": name_prefix, "EnrichedBucketVersioning": versioning or bucket_versioning()},
        stack_name=stack_name,
    )
    settings = replace(settings)
    settings.raw_bucket = outputs["RawBucketName"]
    settings.enriched_bucket = outputs["EnrichedBucketName"]
    settings.enriched_prefix = outputs["EnrichedPrefix"]
    settings.topic_arn = outputs["ImportTopicArn"]
    # moto's stack outputs name queues by their AWS URL; ask for the endpoint's own.
    settings.queue_url = sqs.get_queue_url(QueueName=outputs["ImportQueueUrl"].rsplit("/", 1)[1])["QueueUrl"]
    settings.dead_letter_queue_url = sqs.get_queue_url(QueueName=outputs["ImportDeadLetterQueueUrl"].rsplit("/", 1)[1])[
        "QueueUrl"
    ]
    settings.raw_queue_url = sqs.get_queue_url(QueueName=outputs["RawQueueUrl"].rsplit("/", 1)[1])["QueueUrl"]
    return settings


def down(home: Path | None = None, purge: bool = False) -> list[str]:
    """Stop what ``up`` started; with ``purge`` also delete the state folder. Returns what stopped."""
    home = home or pipeline_home()
    stopped = []
    with _stack_lock(home):
        from pipeline.scaling.backends import LocalWorkerPool

        pool = LocalWorkerPool(home / "workers")
        if pool.workers():
            pool.stop_all()
            stopped.append("workers")
        if stop_process(read_pid(home / "moto.pid")):
            stopped.append("moto")
        (home / "moto.pid").unlink(missing_ok=True)
        if EmbeddedPostgres(home / "postgres").stop():
            stopped.append("postgres")
        state = home / "stack.json"
        state.unlink(missing_ok=True)
    if purge:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    log.info("stack down home=%s stopped=%s purge=%s", home, stopped or "nothing", purge)
    return stopped


@dataclass
class StackStatus:
    home: str
    endpoint: str | None
    moto_running: bool
    database: str | None
    database_reachable: bool
    database_error: str | None
    buckets: dict[str, int | None]
    queue_visible: int | None
    queue_in_flight: int | None
    dead_letter: int | None

    @property
    def healthy(self) -> bool:
        return self.moto_running and self.database_reachable


def _queue_depth(sqs, url: str | None) -> tuple[int | None, int | None]:
    if not url:
        return None, None
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def status(settings: Settings, home: Path | None = None) -> StackStatus:
    home = home or pipeline_home()
    endpoint = settings.aws_endpoint_url
    moto_running = bool(endpoint) and _moto_answers(endpoint) if settings.env == "local" else True
    buckets: dict[str, int | None] = {}
    visible = in_flight = dead = None
    if moto_running:
        clients = client_factory(settings)
        s3 = clients("s3")
        for bucket in (settings.raw_bucket, settings.enriched_bucket):
            try:
                buckets[bucket] = s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
            except Exception:
                buckets[bucket] = None
        visible, in_flight = _queue_depth(clients("sqs"), settings.queue_url)
        dead, dead_in_flight = _queue_depth(clients("sqs"), settings.dead_letter_queue_url)
        if dead is not None:
            dead += dead_in_flight or 0
    reachable, error = False, None
    if settings.database_url:
        try:
            with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            reachable = True
        except psycopg.Error as exc:
            error = str(exc).strip()
    return StackStatus(
        home=str(home),
        endpoint=endpoint,
        moto_running=moto_running,
        database=redact_url(settings.database_url) if settings.database_url else None,
        database_reachable=reachable,
        database_error=error,
        buckets=buckets,
        queue_visible=visible,
        queue_in_flight=in_flight,
        dead_letter=dead,
    )
