"""``pipeline chaos``: the real pipeline over N enriched objects while faults are injected, then
the invariant of DESIGN.md section 5 is checked: every live object version is loaded exactly
once, or (a poison object) sits in the dead-letter queue with its failures recorded.

The run owns its queue pair (short visibility, maxReceiveCount 3, so poison reaches the
dead-letter queue in seconds) and a fresh customer id; it is the faulty network between S3 and
the importers: it delivers each object's notification itself, duplicated, reordered or delayed.
Importers are the Dagster path (import sensor + runs, in a child process) and `pipeline
importer` children that are killed at chosen points, lose their visibility, or talk to
PostgreSQL through a connection-resetting proxy; the embedded PostgreSQL is restarted
(immediate) mid-load.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa

from pipeline.aws import client
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import parse_s3_event
from pipeline.importer.verify import verify
from pipeline.settings import Settings, pipeline_home

log = logging.getLogger("pipeline.chaos")

VISIBILITY = 5
MAX_RECEIVE = 5  # as in production (deploy/cloudformation/pipeline.yaml)
FAULT_KINDS = (
    "kill_between_copy_and_commit",
    "kill_between_commit_and_delete",
    "kill_during_heartbeat",
    "duplicated_delivery",
    "reordered_delivery",
    "delayed_delivery",
    "visibility_expiry_two_importers",
    "postgres_restart_immediate",
    "connection_reset",
    "truncated_parquet",
    "malformed_rows",
    "poison_object",
)
WORKER_FAULTS = {
    "kill-copy": "kill_between_copy_and_commit",
    "kill-ack": "kill_between_commit_and_delete",
    "kill-heartbeat": "kill_during_heartbeat",
}


def _event(bucket: str, key: str, etag: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag}},
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
        self.kinds: dict[str, str] = {}  # key -> good | poison | truncated | malformed
        self.good_bodies: dict[str, bytes] = {}
        self.logs = pipeline_home() / "chaos" / self.tag
        self.logs.mkdir(parents=True, exist_ok=True)

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
        # Its own prefix, outside the one the bucket notifies: the run is the only deliverer.
        self.chaos = replace(
            self.settings, queue_url=queue, dead_letter_queue_url=dlq, enriched_prefix=f"chaos/{self.tag}/"
        )

    def write_objects(self) -> list[tuple[str, str]]:
        bad_each = max(1, self.objects // 40)
        kinds = ["poison"] * bad_each + ["truncated"] * bad_each + ["malformed"] * bad_each
        kinds += ["good"] * (self.objects - len(kinds))
        self.rng.shuffle(kinds)
        written = []
        for index, kind in enumerate(kinds):
            day = f"2026-10-{1 + index % 28:02d}"
            key = f"{self.chaos.enriched_prefix}customer={self.customer}/dt={day}/chaos-{index:05d}.parquet"
            table = synthetic_enriched_table(
                self.rows, seed=self.seed * 1_000_003 + index, customer_id=self.customer, report_id=f"{key}-r"
            )
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
            etag = self.s3.put_object(Bucket=self.settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
            self.kinds[key] = kind
            written.append((key, etag))
        return written

    def deliver(self, written: list[tuple[str, str]]) -> None:
        """The faulty network: every notification at least once, some twice or thrice, shuffled,
        some delayed."""
        messages = []
        for key, etag in written:
            copies = 1
            if self.rng.random() < 0.15:
                copies += self.rng.choice([1, 2])
                self.faults["duplicated_delivery"] += copies - 1
            for _ in range(copies):
                delay = 0
                if self.rng.random() < 0.1:
                    delay = self.rng.randint(1, 8)
                    self.faults["delayed_delivery"] += 1
                messages.append((_event(self.settings.enriched_bucket, key, etag), delay))
        order = list(range(len(messages)))
        self.rng.shuffle(order)
        self.faults["reordered_delivery"] += sum(1 for position, index in enumerate(order) if position != index)
        shuffled = [messages[i] for i in order]
        for start in range(0, len(shuffled), 10):
            self.sqs.send_message_batch(
                QueueUrl=self.chaos.queue_url,
                Entries=[
                    {"Id": str(i), "MessageBody": body, "DelaySeconds": delay}
                    for i, (body, delay) in enumerate(shuffled[start : start + 10])
                ],
            )

    # -- importers ------------------------------------------------------------------------------
    def _env(self, database_url: str | None = None) -> dict[str, str]:
        env = {**os.environ, **self.chaos.process_env(), "PIPELINE_HOME": str(pipeline_home())}
        env["PIPELINE_CHAOS_VISIBILITY"] = str(VISIBILITY)
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
                "SELECT count(*) FROM load_ledger WHERE event = 'loaded' AND starts_with(object_key, %s)",
                (f"{self.chaos.enriched_prefix}customer={self.customer}/",),
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
        proxy = ResettingProxy((parts.hostname or "127.0.0.1", parts.port or 5432), reset_rate=0.5, seed=self.seed)
        proxied = self._proxy_url(proxy)
        dagster = self._spawn(["pipeline.chaos.dagster_path", str(budget_s)], "dagster", self._env())
        rest = ["kill-copy", "kill-ack", "kill-heartbeat", "slow", "slow", "proxy", "proxy", "clean"]
        rest = rest * max(1, self.objects // 60)
        self.rng.shuffle(rest)
        # popped from the end: every kill first, while the queue is full, then the rest
        schedule = rest + ["kill-heartbeat", "kill-ack", "kill-copy"]
        running: list[tuple[str, subprocess.Popen]] = []
        restarted = False
        deadline = time.monotonic() + budget_s
        try:
            while (schedule or running) and time.monotonic() < deadline:
                while schedule and len(running) < 3:
                    mode = schedule.pop()
                    if mode == "proxy":
                        env, args = self._env(proxied), ["pipeline.chaos.faulty_worker", "clean", "60"]
                    else:
                        env, args = self._env(), ["pipeline.chaos.faulty_worker", mode, "60"]
                    running.append((mode, self._spawn(args, f"worker-{mode}-{len(schedule)}", env)))
                    if mode == "slow":  # a second importer for the same objects once visibility runs out
                        running.append(("clean", self._spawn(args[:1] + ["clean", "60"], f"twin-{len(schedule)}", env)))
                        self.faults["visibility_expiry_two_importers"] += 1
                time.sleep(0.5)
                for mode, child in list(running):
                    code = child.poll()
                    if code is None:
                        continue
                    running.remove((mode, child))
                    if code == -9 and mode in WORKER_FAULTS:
                        self.faults[WORKER_FAULTS[mode]] += 1
                if not restarted and self._loaded() >= self.objects // 3:
                    self.progress("restarting PostgreSQL (immediate) mid-load")
                    restarted = self._restart_postgres()
                    self.faults["postgres_restart_immediate"] += int(restarted)
        finally:
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
            proxy.close()
            dagster.terminate()
            try:
                dagster.wait(timeout=60)
            except subprocess.TimeoutExpired:
                dagster.kill()

    def settle(self, budget_s: float) -> None:
        """Clean importers until the queue is empty (delayed and in-flight messages included)."""
        from pipeline.importer.worker import run_worker

        deadline = time.monotonic() + budget_s
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.chaos.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
            pending = sum(int(v) for v in attrs.values())
            if pending == 0:
                quiet += 1
                time.sleep(1)
                continue
            quiet = 0
            run_worker(self.chaos, batch=10, drain=True, idle_polls=1, visibility=VISIBILITY)
            time.sleep(1)

    def recover(self) -> int:
        """Fix half of the truncated objects (a good copy, a new ETag), deliver, import."""
        from pipeline.importer.worker import run_worker

        fixed = 0
        for key, body in sorted(self.good_bodies.items())[: max(1, len(self.good_bodies) // 2)]:
            etag = self.s3.put_object(Bucket=self.settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
            self.sqs.send_message(
                QueueUrl=self.chaos.queue_url, MessageBody=_event(self.settings.enriched_bucket, key, etag)
            )
            self.kinds[key] = "fixed"
            fixed += 1
        run_worker(self.chaos, batch=10, drain=True, idle_polls=1, visibility=VISIBILITY)
        return fixed

    def _dead_letters(self):
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
        """`pipeline redrive` after the incident: transient faults may have dead-lettered good
        objects (maxReceiveCount failed deliveries in a row); poison goes back there by itself."""
        self.redriven_keys: set[str] = set()
        moved = 0
        for message, keys in self._dead_letters():
            self.redriven_keys |= keys
            self.sqs.send_message(QueueUrl=self.chaos.queue_url, MessageBody=message["Body"])
            self.sqs.delete_message(QueueUrl=self.chaos.dead_letter_queue_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
        return {"messages": moved}

    # -- the check ------------------------------------------------------------------------------
    def dead_lettered(self) -> set[str]:
        return {key for _, keys in self._dead_letters() for key in keys}

    def check(self, fixed: int, redriven: dict, seconds: float) -> dict:
        report = verify(self.chaos, self.customer)
        dead = self.dead_lettered()
        missing = {m["key"] for m in report["missing_objects"]} | set(report["unreadable_objects"])
        should_load = {k for k, kind in self.kinds.items() if kind in {"good", "fixed"}}
        poison = {k for k, kind in self.kinds.items() if kind in {"poison", "truncated", "malformed"}}
        lost = sorted((missing & should_load) | (poison - dead))
        recovered = len({k for k, kind in self.kinds.items() if kind == "fixed"} - missing)
        redriven_good = (getattr(self, "redriven_keys", set()) & should_load) - missing
        return {
            "objects": self.objects,
            "rows_expected": self.rows * len(should_load),
            "rows_loaded": report["rows_loaded"],
            "faults": {kind: self.faults.get(kind, 0) for kind in FAULT_KINDS},
            "lost": len(lost),
            "lost_objects": lost[:20],
            "duplicated": report["duplicates"],
            "duplicated_objects": report["duplicated_objects"][:20],
            "dead_lettered": len(dead & poison),
            "recovered": recovered + len(redriven_good),
            "fixed": fixed,
            "redriven_messages": redriven["messages"],
            "redriven_good_objects": len(redriven_good),
            "seconds": round(seconds, 1),
            "customer": self.customer,
            "logs": str(self.logs),
            "ok": not lost and report["duplicates"] == 0,
        }

    def cleanup(self) -> None:
        for url in (self.chaos.queue_url, self.chaos.dead_letter_queue_url):
            try:
                self.sqs.delete_queue(QueueUrl=url)
            except Exception as exc:
                log.warning("chaos: could not delete %s: %s", url, exc)


def run_chaos(settings: Settings, objects: int, seed: int, rows: int = 200, progress=None) -> dict:
    started = time.monotonic()
    run = ChaosRun(settings, objects, seed, rows, progress)
    say = run.progress
    run.make_queues()
    try:
        say(f"writing {objects} objects (customer {run.customer})")
        written = run.write_objects()
        say("delivering notifications: duplicated, reordered, delayed")
        run.deliver(written)
        budget = max(90.0, objects * 0.6)
        say(f"importing under faults (budget {budget:.0f}s)")
        run.import_under_faults(budget)
        say("settling: clean importers drain what is left")
        run.settle(budget)
        say("recovering: fixing truncated objects, redriving the dead-letter queue (what an operator does)")
        fixed = run.recover()
        redriven = run.redrive_dead_letters()
        run.settle(budget)
        return run.check(fixed, redriven, time.monotonic() - started)
    finally:
        run.cleanup()
