"""``pipeline chaos``: the real pipeline over N enriched objects while faults are injected, then
the promise is checked against the **current** S3 state of every key: the live rows of each key
are its current object's, exactly once (or, for an object that cannot be read, it is
dead-lettered with its failures recorded), and nothing else is in the warehouse.

The run owns its queue pair (short visibility, production's maxReceiveCount), a versioned bucket
and a fresh customer id; it is the faulty network between S3 and the importers: it delivers each
notification itself, duplicated, reordered or delayed, half of them with the S3 version id and
half without (an ETag only). While importers run it writes keys again: X -> Y -> X reversions
and delete -> re-create, and it rewrites keys that a deliberately late importer holds, so that
the late load must come out ``stale``. Importers are the Dagster path (the import sensor and its
runs, some held queued past the visibility timeout, in a child process) and `pipeline importer`
children that are killed at chosen points, lose their claims, or reach PostgreSQL through a
proxy that resets connections or goes silent; the embedded PostgreSQL is restarted (immediate)
mid-load. Then ``trickle_during_backfill`` (pipeline/chaos/trickle.py): reports arrive for a
day while its reprocessing runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa

from pipeline.aws import client
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer import inbox
from pipeline.importer.events import parse_s3_event
from pipeline.importer.verify import verify
from pipeline.settings import Settings, pipeline_home

log = logging.getLogger("pipeline.chaos")

VISIBILITY = 5
MAX_RECEIVE = 5  # as in production (deploy/cloudformation/pipeline.yaml)
RUN_QUEUE_DELAY = VISIBILITY + 4  # runs held queued longer than the visibility timeout
FAULT_KINDS = (
    "kill_between_copy_and_commit",
    "kill_between_commit_and_delete",
    "kill_during_heartbeat",
    "duplicated_delivery",
    "reordered_delivery",
    "delayed_delivery",
    "claim_expiry_two_importers",
    "postgres_restart_immediate",
    "connection_reset",
    "silent_partition",
    "truncated_parquet",
    "malformed_rows",
    "poison_object",
    "reversion",
    "late_older_load",
    "run_queue_delay",
    "versioned_bucket",
    "trickle_during_backfill",
)
WORKER_FAULTS = {
    "kill-copy": "kill_between_copy_and_commit",
    "kill-ack": "kill_between_commit_and_delete",
    "kill-heartbeat": "kill_during_heartbeat",
}
# Short leases, backoffs and timeouts, so that a run of minutes exercises what takes hours in
# production; every importer of the run (children included) gets these.
CHAOS_ENV = {
    "PIPELINE_IMPORT_LEASE_S": "5",
    "PIPELINE_INTAKE_VISIBILITY_S": str(VISIBILITY),
    "PIPELINE_IMPORT_RETRY_BASE_S": "1",
    "PIPELINE_IMPORT_RETRY_MAX_S": "4",
    "PIPELINE_IMPORT_PLAN_LEASE_S": "120",
    "PIPELINE_IMPORT_ORPHAN_GRACE_S": "15",
    "PIPELINE_DB_LOCK_TIMEOUT_S": "8",
    "PIPELINE_DB_STATEMENT_TIMEOUT_S": "10",
    "PIPELINE_DB_IDLE_IN_TRANSACTION_S": "5",
    "PIPELINE_DB_KEEPALIVE_IDLE_S": "5",
    "PIPELINE_DB_TCP_USER_TIMEOUT_S": "15",
    "PIPELINE_CHAOS_LATE_S": "3",
}


def _event(bucket: str, key: str, etag: str | None, version_id: str | None, removed: bool = False) -> str:
    obj: dict = {"key": key}
    if not removed:
        obj["eTag"] = etag
    if version_id:
        obj["versionId"] = version_id
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectRemoved:DeleteMarkerCreated" if removed else "ObjectCreated:Put",
                    "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime()) + f"{time.time_ns() % 10**9:09d}Z",
                    "s3": {"bucket": {"name": bucket}, "object": obj},
                }
            ]
        }
    )


def _malformed(table: pa.Table, rng: random.Random) -> pa.Table:
    """Rows that break the warehouse's constraints: a few event ids are null."""
    ids = table.column("event_id").to_pylist()
    for index in rng.sample(range(len(ids)), k=max(1, len(ids) // 20)):
        ids[index] = None
    return table.set_column(table.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))


class ChaosRun:
    def __init__(self, settings: Settings, objects: int, seed: int, rows: int, progress=None):
        self.settings, self.objects, self.seed, self.rows = settings, objects, seed, rows
        self.rng = random.Random(seed)
        self.progress = progress or (lambda message: None)
        self.sqs, self.s3 = client(settings, "sqs"), client(settings, "s3")
        self.tag = f"{seed}-{uuid.uuid4().hex[:6]}"
        self.customer = f"chaos-{self.tag}"
        self.faults: Counter = Counter()
        self.kinds: dict[
            str, str
        ] = {}  # key -> what S3 holds now: good | fixed | poison | truncated | malformed | deleted
        self.good_bodies: dict[str, bytes] = {}
        self.written: dict[str, tuple[str, str | None]] = {}  # key -> (etag, version id) S3 holds now
        self.logs = pipeline_home() / "chaos" / self.tag
        self.logs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- set-up ---------------------------------------------------------------------------------
    def make_queues(self) -> None:
        dlq = self.sqs.create_queue(QueueName=f"chaos-{self.tag}-dlq")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue = self.sqs.create_queue(
            QueueName=f"chaos-{self.tag}",
            Attributes={
                "VisibilityTimeout": str(VISIBILITY),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE)}),
            },
        )["QueueUrl"]
        # Its own versioned bucket, which notifies nobody: the run is the only deliverer.
        bucket = f"chaos-{self.tag}".lower()
        self.s3.create_bucket(Bucket=bucket)
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        self.faults["versioned_bucket"] += 1
        self.chaos = replace(
            self.settings,
            queue_url=queue,
            dead_letter_queue_url=dlq,
            enriched_bucket=bucket,
            enriched_prefix=f"chaos/{self.tag}/",
        )

    def _key(self, index: int) -> str:
        day = f"2026-10-{1 + index % 28:02d}"
        return f"{self.chaos.enriched_prefix}customer={self.customer}/dt={day}/chaos-{index:05d}.parquet"

    def _table(self, key: str, index: int, generation: int = 0) -> pa.Table:
        # Generations of a key share its report (so their event ids overlap), not its row count.
        return synthetic_enriched_table(
            self.rows + 7 * generation,
            seed=self.seed * 1_000_003 + index + 5 * generation,
            customer_id=self.customer,
            report_id=f"{key}-r",
        )

    def put(self, key: str, body: bytes, kind: str) -> tuple[str, str | None]:
        response = self.s3.put_object(Bucket=self.chaos.enriched_bucket, Key=key, Body=body)
        written = (response["ETag"].strip('"'), response.get("VersionId"))
        with self._lock:
            self.kinds[key] = kind
            self.written[key] = written
        return written

    def notification(self, key: str, written: tuple[str, str | None] | None) -> str:
        """The event S3 would send: half carry the version id, half only the ETag."""
        if written is None:
            return _event(self.chaos.enriched_bucket, key, None, None, removed=True)
        etag, version_id = written
        return _event(self.chaos.enriched_bucket, key, etag, version_id if self.rng.random() < 0.5 else None)

    def write_objects(self) -> list[tuple[str, str]]:
        bad_each = max(1, self.objects // 40)
        kinds = ["poison"] * bad_each + ["truncated"] * bad_each + ["malformed"] * bad_each
        kinds += ["good"] * (self.objects - len(kinds))
        self.rng.shuffle(kinds)
        messages = []
        for index, kind in enumerate(kinds):
            key = self._key(index)
            table = self._table(key, index)
            body = parquet_bytes(table)
            if kind == "poison":
                body = b"this is not parquet\n" * 40
            elif kind == "truncated":
                self.good_bodies[key] = body
                body = body[: len(body) // 2]
            elif kind == "malformed":
                body = parquet_bytes(_malformed(table, self.rng))
            if kind != "good":
                self.faults[
                    {"poison": "poison_object", "truncated": "truncated_parquet"}.get(kind, "malformed_rows")
                ] += 1
            messages.append((key, self.notification(key, self.put(key, body, kind))))
        return messages

    def deliver(self, messages: list[tuple[str, str]]) -> None:
        """The faulty network: every notification at least once, some twice or thrice, shuffled,
        some delayed."""
        out = []
        for _key, body in messages:
            copies = 1
            if self.rng.random() < 0.15:
                copies += self.rng.choice([1, 2])
                self.faults["duplicated_delivery"] += copies - 1
            for _ in range(copies):
                delay = 0
                if self.rng.random() < 0.1:
                    delay = self.rng.randint(1, 8)
                    self.faults["delayed_delivery"] += 1
                out.append((body, delay))
        order = list(range(len(out)))
        self.rng.shuffle(order)
        self.faults["reordered_delivery"] += sum(1 for position, index in enumerate(order) if position != index)
        shuffled = [out[i] for i in order]
        for start in range(0, len(shuffled), 10):
            self.sqs.send_message_batch(
                QueueUrl=self.chaos.queue_url,
                Entries=[
                    {"Id": str(i), "MessageBody": body, "DelaySeconds": delay}
                    for i, (body, delay) in enumerate(shuffled[start : start + 10])
                ],
            )

    # -- writes while importing -----------------------------------------------------------------
    def _good_keys(self) -> list[str]:
        with self._lock:
            return sorted(k for k, kind in self.kinds.items() if kind == "good")

    def reversions(self, stop: threading.Event) -> None:
        """X -> Y -> X on some keys (the same bytes again), delete -> re-create on others, each
        write's notification delivered (twice, for two importers to race on)."""
        keys = self._good_keys()
        self.rng.shuffle(keys)
        count = max(2, self.objects // 25)
        for n, key in enumerate(keys[:count]):
            if stop.wait(self.rng.uniform(0.5, 2.0)):
                return
            index = int(key.rsplit("-", 1)[1].split(".")[0])
            x = parquet_bytes(self._table(key, index))
            if n % 3 == 2:  # delete, then the same bytes again
                self.s3.delete_object(Bucket=self.chaos.enriched_bucket, Key=key)
                with self._lock:
                    self.kinds[key], self.written[key] = "deleted", None
                bodies = [self.notification(key, None)]
            else:
                bodies = [self.notification(key, self.put(key, parquet_bytes(self._table(key, index, 1)), "good"))]
            bodies.append(self.notification(key, self.put(key, x, "good")))
            for body in bodies + bodies:
                self.sqs.send_message(QueueUrl=self.chaos.queue_url, MessageBody=body)
            self.faults["reversion"] += 1

    def rewrite_late_loads(self, stop: threading.Event) -> None:
        """Write a new version of every key a late importer has started but not settled: its load,
        fetched before the write, must come out stale when it commits."""
        seen: set[int] = set()
        generation = 2
        while not stop.wait(0.3):
            try:
                with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
                    rows = conn.execute(
                        """SELECT inbox_id, object_key FROM import_inbox
                           WHERE bucket = %s AND state = 'pending' AND starts_with(claimed_by, 'worker:chaos-late')
                             AND started_at IS NOT NULL AND NOT (inbox_id = ANY(%s))""",
                        (self.chaos.enriched_bucket, sorted(seen)),
                    ).fetchall()
            except psycopg.Error:
                continue
            for inbox_id, key in rows:
                seen.add(inbox_id)
                with self._lock:
                    if self.kinds.get(key) != "good":
                        continue
                index = int(key.rsplit("-", 1)[1].split(".")[0])
                generation += 1
                written = self.put(key, parquet_bytes(self._table(key, index, generation)), "good")
                self.sqs.send_message(QueueUrl=self.chaos.queue_url, MessageBody=self.notification(key, written))

    # -- importers ------------------------------------------------------------------------------
    def _env(self, database_url: str | None = None) -> dict[str, str]:
        env = {**os.environ, **self.chaos.process_env(), **CHAOS_ENV, "PIPELINE_HOME": str(pipeline_home())}
        if database_url:
            env["DATABASE_URL"] = database_url
        return env

    def _spawn(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        log_file = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        child = subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        log_file.close()
        return child

    def _proxy_url(self, proxy) -> str:
        parts = urlsplit(self.settings.database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{proxy.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def _loaded(self) -> int:
        with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
            return conn.execute(
                "SELECT count(*) FROM load_ledger WHERE event = 'loaded' AND bucket = %s",
                (self.chaos.enriched_bucket,),
            ).fetchone()[0]

    def _restart_postgres(self) -> bool:
        from pipeline.local.postgres import EmbeddedPostgres, _binaries

        server = EmbeddedPostgres(pipeline_home() / "postgres")
        port = server.running_port()
        if not port or urlsplit(self.settings.database_url).port != port:
            log.warning("chaos: PostgreSQL is not the embedded server of this stack; not restarting it")
            return False
        result = server._pg(
            _binaries(),
            "pg_ctl",
            "-D",
            str(server.data_dir),
            "-l",
            str(server.log_file),
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port}",
            "restart",
            check=False,
        )
        if result.returncode != 0:
            log.error("chaos: PostgreSQL restart failed: %s", result.stderr.strip() or result.stdout.strip())
            return False
        return True

    def import_under_faults(self, budget_s: float) -> None:
        from pipeline.chaos.proxy import ResettingProxy

        parts = urlsplit(self.settings.database_url)
        proxy = ResettingProxy(
            (parts.hostname or "127.0.0.1", parts.port or 5432), reset_rate=0.35, seed=self.seed, silence_rate=0.15
        )
        proxied = self._proxy_url(proxy)
        dagster = None
        rest = ["kill-copy", "kill-ack", "kill-heartbeat", "slow", "slow", "proxy", "proxy", "late", "clean"]
        rest = rest * max(1, self.objects // 60)
        self.rng.shuffle(rest)
        # popped from the end: a late importer and every kill first, while the inbox is full
        schedule = rest + ["kill-heartbeat", "kill-ack", "kill-copy", "late"]
        running: list[tuple[str, subprocess.Popen]] = []
        restarted = False
        deadline = time.monotonic() + budget_s
        stop = threading.Event()
        writers = [
            threading.Thread(target=self.reversions, args=(stop,), name="chaos-reversions", daemon=True),
            threading.Thread(target=self.rewrite_late_loads, args=(stop,), name="chaos-late", daemon=True),
        ]
        for writer in writers:
            writer.start()
        try:
            while (schedule or running) and time.monotonic() < deadline:
                while schedule and len(running) < 3:
                    mode = schedule.pop()
                    if mode == "proxy":
                        env, args = self._env(proxied), ["pipeline.chaos.faulty_worker", "clean", "60"]
                    else:
                        env, args = self._env(), ["pipeline.chaos.faulty_worker", mode, "60"]
                    running.append((mode, self._spawn(args, f"worker-{mode}-{len(schedule)}", env)))
                    if mode == "slow":  # a second importer for the same objects once the claims lapse
                        running.append(("clean", self._spawn(args[:1] + ["clean", "60"], f"twin-{len(schedule)}", env)))
                        self.faults["claim_expiry_two_importers"] += 1
                time.sleep(0.5)
                if dagster is None:  # the Dagster path joins once the first importers hold work
                    time.sleep(1.5)
                    dagster = self._spawn(
                        ["pipeline.chaos.dagster_path", str(budget_s), str(RUN_QUEUE_DELAY)], "dagster", self._env()
                    )
                for mode, child in list(running):
                    code = child.poll()
                    if code is None:
                        continue
                    running.remove((mode, child))
                    if code == -9 and mode in WORKER_FAULTS:
                        self.faults[WORKER_FAULTS[mode]] += 1
                # Mid-load: a third of the objects in, or the last importers running, whichever first.
                if not restarted and (self._loaded() >= self.objects // 3 or (not schedule and self._loaded() > 0)):
                    self.progress("restarting PostgreSQL (immediate) mid-load")
                    restarted = self._restart_postgres()
                    self.faults["postgres_restart_immediate"] += int(restarted)
        finally:
            stop.set()
            for writer in writers:
                writer.join(timeout=30)
            for mode, child in running:
                try:
                    child.wait(timeout=max(5.0, deadline + 90 - time.monotonic()))
                except subprocess.TimeoutExpired:  # hung: say where, then it is one more kill
                    child.send_signal(signal.SIGUSR1)
                    time.sleep(1)
                    child.kill()
                    child.wait()
                    log.warning("chaos: %s importer pid %d hung; killed (stack in its log)", mode, child.pid)
            self.faults["connection_reset"] += proxy.resets
            self.faults["silent_partition"] += proxy.silences
            proxy.close()
            if dagster is not None:
                dagster.send_signal(signal.SIGTERM)
                try:
                    dagster.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    dagster.kill()
            found = re.findall(r"delayed_runs=(\d+)", (self.logs / "dagster.log").read_text(errors="replace"))
            self.faults["run_queue_delay"] += max(map(int, found), default=0)

    def _pending(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.chaos.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
            box = inbox.counts(conn, self.chaos.enriched_bucket)
        return sum(int(v) for v in attrs.values()) + box.pending

    def settle(self, budget_s: float) -> None:
        """Clean importers until the queue and the inbox are empty (delayed, backing-off and
        claimed work included)."""
        from pipeline.importer.worker import run_worker

        deadline = time.monotonic() + budget_s
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            if self._pending() == 0:
                quiet += 1
                time.sleep(1)
                continue
            quiet = 0
            run_worker(self.chaos, batch=10, drain=True, idle_polls=1)
            time.sleep(1)

    def recover(self) -> int:
        """Fix half of the truncated objects (a good copy, a new version), deliver, import."""
        from pipeline.importer.worker import run_worker

        fixed = 0
        for key, body in sorted(self.good_bodies.items())[: max(1, len(self.good_bodies) // 2)]:
            written = self.put(key, body, "fixed")
            self.sqs.send_message(QueueUrl=self.chaos.queue_url, MessageBody=self.notification(key, written))
            fixed += 1
        run_worker(self.chaos, batch=10, drain=True, idle_polls=1)
        return fixed

    def _dead_letter_messages(self):
        """Every message now on the dead-letter queue (each taken for a minute), with its keys."""
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.chaos.dead_letter_queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=60,
            ).get("Messages", [])
            if not got:
                return
            for message in got:
                yield message, {v.key for v in parse_s3_event(message["Body"]).versions}

    def redrive_dead_letters(self) -> dict[str, int]:
        """`pipeline redrive` after the incident: the inbox's dead objects and the dead-letter
        queue's messages get another chance; what is still poison goes back there by itself."""
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            self.redriven_keys = {
                r["object_key"] for r in inbox.dead_letters(conn, 100_000, self.chaos.enriched_bucket)
            }
            revived = inbox.redrive(conn, self.chaos.enriched_bucket)
        moved = 0
        for message, keys in self._dead_letter_messages():
            self.redriven_keys |= keys
            self.sqs.send_message(QueueUrl=self.chaos.queue_url, MessageBody=message["Body"])
            self.sqs.delete_message(QueueUrl=self.chaos.dead_letter_queue_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
        return {"messages": moved, "inbox": revived}

    # -- the check ------------------------------------------------------------------------------
    def dead_lettered(self) -> set[str]:
        """Keys whose current version is in the dead letters (the inbox's, or the queue's)."""
        with psycopg.connect(self.settings.database_url) as conn:
            rows = inbox.dead_letters(conn, 100_000, self.chaos.enriched_bucket)
        dead = set()
        for row in rows:
            etag, version_id = self.written.get(row["object_key"]) or (None, None)
            if row["object_version"] in {etag, version_id}:
                dead.add(row["object_key"])
        return dead | {key for _, keys in self._dead_letter_messages() for key in keys}

    def check(self, fixed: int, redriven: dict, seconds: float) -> dict:
        report = verify(self.chaos, self.customer)
        dead = self.dead_lettered()
        missing = {m["key"] for m in report["missing_objects"]} | set(report["unreadable_objects"])
        should_load = {k for k, kind in self.kinds.items() if kind in {"good", "fixed"}}
        poison = {k for k, kind in self.kinds.items() if kind in {"poison", "truncated", "malformed"}}
        lost = sorted((missing & should_load) | (poison - dead))
        recovered = len({k for k, kind in self.kinds.items() if kind == "fixed"} - missing)
        redriven_good = (getattr(self, "redriven_keys", set()) & should_load) - missing
        # What S3 holds now decides: the rows of every readable current object that should load.
        rows_expected = report["rows_expected"] - sum(
            m["rows"] for m in report["missing_objects"] if m["key"] in poison
        )
        with psycopg.connect(self.settings.database_url) as conn:
            stale_late = conn.execute(
                """SELECT count(*) FROM import_inbox WHERE bucket = %s AND outcome = 'stale'
                   AND starts_with(claimed_by, 'worker:chaos-late')""",
                (self.chaos.enriched_bucket,),
            ).fetchone()[0]
        self.faults["late_older_load"] += stale_late
        return {
            "objects": self.objects,
            "keys_deleted": sum(1 for kind in self.kinds.values() if kind == "deleted"),
            "rows_expected": rows_expected,
            "rows_loaded": report["rows_loaded"],
            "faults": {kind: self.faults.get(kind, 0) for kind in FAULT_KINDS},
            "lost": len(lost),
            "lost_objects": lost[:20],
            "duplicated": report["duplicates"],
            "duplicated_objects": report["duplicated_objects"][:20],
            "wrong_version": report["wrong_version"],
            "wrong_version_objects": report["wrong_version_objects"][:20],
            "dead_lettered": len(dead & poison),
            "dead_lettered_good": len(dead & should_load),
            "recovered": recovered + len(redriven_good),
            "fixed": fixed,
            "redriven_messages": redriven["messages"],
            "redriven_inbox": redriven.get("inbox", 0),
            "redriven_good_objects": len(redriven_good),
            "seconds": round(seconds, 1),
            "customer": self.customer,
            "bucket": self.chaos.enriched_bucket,
            "logs": str(self.logs),
            "ok": not lost and report["duplicates"] == 0 and report["wrong_version"] == 0,
        }

    def cleanup(self) -> None:
        for url in (self.chaos.queue_url, self.chaos.dead_letter_queue_url):
            try:
                self.sqs.delete_queue(QueueUrl=url)
            except Exception as exc:
                log.warning("chaos: could not delete %s: %s", url, exc)


def run_chaos(settings: Settings, objects: int, seed: int, rows: int = 200, progress=None) -> dict:
    os.environ.update(CHAOS_ENV)  # the settle phase's importers run in this process (the command's own)
    started = time.monotonic()
    run = ChaosRun(settings, objects, seed, rows, progress)
    say = run.progress
    run.make_queues()
    try:
        say(f"writing {objects} objects (customer {run.customer}, versioned bucket {run.chaos.enriched_bucket})")
        messages = run.write_objects()
        say("delivering notifications: duplicated, reordered, delayed")
        run.deliver(messages)
        budget = max(90.0, objects * 0.6)
        say(f"importing under faults, writing keys again meanwhile (budget {budget:.0f}s)")
        run.import_under_faults(budget)
        say("settling: clean importers drain what is left")
        run.settle(budget)
        say("recovering: fixing truncated objects, redriving the dead letters (what an operator does)")
        fixed = run.recover()
        redriven = run.redrive_dead_letters()
        run.settle(budget)
        summary = run.check(fixed, redriven, time.monotonic() - started)
    finally:
        run.cleanup()
    from pipeline.chaos.trickle import trickle_during_backfill

    trickle = trickle_during_backfill(settings, seed, say)
    summary["faults"]["trickle_during_backfill"] = trickle["runs_during_backfill"]
    summary["trickle_during_backfill"] = trickle
    for key in ("lost", "duplicated", "wrong_version"):
        summary[key] += trickle[key]
    summary["ok"] = summary["ok"] and trickle["ok"]
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
