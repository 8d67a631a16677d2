"""The tests' one support module: the samples, queues and objects of a test, the importer driven
through Dagster in process (pipeline.local.inprocess, the harness demo, bench and chaos use),
capacity backends with private queues, customers with loaded reports, and faults injected on
purpose. Fixtures live in conftest.py and take their helpers from here.

Nothing here is imported by the product. moto delivers exactly once and in order, so
duplicates, delays and crashes are made here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
from dagster import AssetKey, DagsterInstance

from pipeline.collector.generate import mail_shapes
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion, parse_s3_event
from pipeline.importer.load import load_object, tombstone
from pipeline.importer.queue import receive
from pipeline.local.inprocess import apply, drain_import_queue, tick
from pipeline.scaling.backends import AutoScalingGroupBackend, EcsServiceBackend, LocalWorkerPool
from pipeline.warehouse.projections import refresh

warnings.filterwarnings("ignore", category=Warning, module="dagster")


def new_customer() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def enriched_key(settings, customer_id: str, name: str, day: str = "2026-11-01") -> str:
    return f"{settings.enriched_prefix}customer={customer_id}/dt={day}/{name}"


def enriched_of(settings, customer_id: str) -> list[str]:
    """The enriched objects that hold a customer's rows: its own prefix's (objects tests write)
    and those of every enrichment batch whose manifest names it."""
    with psycopg.connect(settings.database_url) as conn:
        batches = [
            key
            for (key,) in conn.execute(
                "SELECT unnest(b.objects) FROM enrichment_batches b JOIN enrichment_manifest m USING (batch_id) "
                "WHERE m.customer_id = %s",
                (customer_id,),
            ).fetchall()
        ]
    return sorted(batches)


def put_enriched(s3, settings, key: str, rows: int = 20, seed: int = 0, customer_id: str = "acme") -> str:
    body = parquet_bytes(
        synthetic_enriched_table(rows, seed=seed, customer_id=customer_id, report_id=f"r-{key}-{seed}")
    )
    return s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')


def put_poison_and_good(s3, settings, customer_id: str, good: int, rows: int) -> str:
    """One object that is not Parquet (``poison.parquet``, returned) and ``good`` good ones."""
    poison = enriched_key(settings, customer_id, "poison.parquet")
    s3.put_object(Bucket=settings.enriched_bucket, Key=poison, Body=b"PAR1 this is not parquet")
    for n in range(good):
        put_enriched(s3, settings, enriched_key(settings, customer_id, f"good-{n}.parquet"), rows, n, customer_id)
    return poison


def sensor_tick(instance: DagsterInstance, sensor_def, cursor=None):
    return tick(instance, sensor_def, cursor)


def execute_requests(instance: DagsterInstance, result) -> list:
    return apply(instance, result)


def drain_through_dagster(instance: DagsterInstance, max_ticks: int = 20) -> list:
    return drain_import_queue(instance, max_ticks)


def materialized(instance: DagsterInstance, customer_id: str | None = None) -> set[str]:
    """Materialized object partitions (of one customer: tests share one queue and warehouse)."""
    keys = set(instance.get_materialized_partitions(AssetKey("telemetry_events")))
    return {k for k in keys if customer_id is None or k.startswith(f"customer={customer_id}/")}


def duplicate_message(sqs, queue_url: str, message: dict) -> None:
    """Deliver the same notification again (what SQS's at-least-once delivery may do)."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])


def sns_body(message: dict) -> dict:
    return json.loads(json.loads(message["Body"])["Message"])


# -- samples and queues ----------------------------------------------------------------------

# The real reports live beside the checkout (../shared), never in the repository.
SAMPLES = Path(
    os.environ.get("PIPELINE_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "samples" / "dmarc-aggregate"
)


def traversable_tmpdir(prefix: str) -> Path:
    """A temporary folder other users can traverse: the embedded PostgreSQL runs as its own
    system user when the tests run as root, and pytest keeps its own temp root at mode 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def receive_all(sqs, queue_url: str, wait: int = 1, visibility: int = 30) -> list[dict]:
    """Every message currently receivable on ``queue_url`` (left in flight, not deleted)."""
    messages: list[dict] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            VisibilityTimeout=visibility,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def messages_for(sqs, queue_url: str, customer_id: str) -> list[dict]:
    """Messages now receivable that name objects of ``customer_id`` (tests share one queue, so a
    test looks only at its own objects). Received messages are left to reappear."""
    from pipeline.importer.events import parse_s3_event

    found = []
    for message in receive_all(sqs, queue_url, wait=1, visibility=1):
        if any(f"customer={customer_id}/" in v.key for v in parse_s3_event(message["Body"]).versions):
            found.append(message)
    return found


def own_messages(sqs, queue_url: str, customer_id: str, visibility: int) -> list[dict]:
    """Receive; keep the messages naming this test's objects, give the others back at once."""
    mine = []
    for message in receive(sqs, queue_url, max_messages=100, visibility=visibility):
        if f"customer={customer_id}/" in " ".join(v.key for v in parse_s3_event(message["Body"]).versions):
            mine.append(message)
        else:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return mine


# -- capacity backends ----------------------------------------------------------------------


def private_queue(sqs, name: str) -> str:
    return sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]


def s3_event(bucket: str, key: str, etag: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-11-26T00:00:00.000Z",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 1}},
                }
            ]
        }
    )


def flood(settings, s3, sqs, queue_url: str, customer_id: str, objects: int, rows: int = 20) -> list[str]:
    """Write ``objects`` enriched objects and notify ``queue_url`` of each (the bucket's own
    notifications go to the shared queue; the caller drops them there)."""
    keys = []
    for n in range(objects):
        key = enriched_key(settings, customer_id, f"part-{n:04d}.parquet")
        etag = put_enriched(s3, settings, key, rows=rows, seed=n, customer_id=customer_id)
        sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings.enriched_bucket, key, etag))
        keys.append(key)
    return keys


def make_backend(kind: str, clients, settings, folder) -> object:
    suffix = uuid.uuid4().hex[:8]
    if kind == "local":
        env = {**os.environ, **settings.process_env(), "PIPELINE_HOME": os.environ["PIPELINE_HOME"]}
        return LocalWorkerPool(folder, env=env)
    if kind == "ecs":
        ecs = clients("ecs")
        cluster = f"workers-{suffix}"
        ecs.create_cluster(clusterName=cluster)
        ecs.register_task_definition(
            family=f"importer-{suffix}",
            containerDefinitions=[{"name": "importer", "image": "pipeline:latest", "memory": 512}],
        )
        ecs.create_service(cluster=cluster, serviceName="importer", taskDefinition=f"importer-{suffix}", desiredCount=0)
        return EcsServiceBackend(ecs, cluster, "importer")
    ec2, autoscaling = clients("ec2"), clients("autoscaling")
    template = f"importer-{suffix}"
    ec2.create_launch_template(
        LaunchTemplateName=template, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.medium"}
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=f"importers-{suffix}",
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        MinSize=0,
        MaxSize=10,
        DesiredCapacity=0,
        AvailabilityZones=[f"{settings.region}a"],
    )
    return AutoScalingGroupBackend(autoscaling, f"importers-{suffix}")


def with_queue(settings, queue_url: str):
    return replace(settings, queue_url=queue_url)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- customers with loaded reports (projections, web) ----------------------------------------


def put_and_load(settings, s3, customer: str, name: str, rows: int, seed: int, day: str = "2026-11-01") -> str:
    """Write one enriched object and import it with the real loader (as an importer would)."""
    import datetime as dt

    key = f"{settings.enriched_prefix}customer={customer}/dt={day}/{name}"
    table = synthetic_enriched_table(
        rows, seed=seed, customer_id=customer, day=dt.date.fromisoformat(day), report_id=f"{customer}-{name}-{seed}"
    )
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))["ETag"].strip('"')
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag))
    return key


def delete_and_load(settings, s3, key: str, sequence: int) -> None:
    s3.delete_object(Bucket=settings.enriched_bucket, Key=key)
    version = ObjectVersion(settings.enriched_bucket, key, f"removed@{sequence}", event_name="ObjectRemoved:Delete")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        tombstone(conn, version)


def customer_with_reports(settings, s3, customer: str, objects: int = 3, rows: int = 40) -> list[str]:
    keys = [
        put_and_load(settings, s3, customer, f"r{i}.parquet", rows, seed=i, day=f"2026-11-0{1 + i % 3}")
        for i in range(objects)
    ]
    refresh(settings.database_url)
    return keys


# -- a rua mailbox ---------------------------------------------------------------------------

REPORTS = ["usssa.com!example.com!1538784000!1538870399.xml", "veeam.com!example.com!1530133200!1530219600.xml"]


def report_maildir(root: Path) -> Path:
    """A Maildir as a delivery agent leaves it: two report e-mails in new/ (a single-part one and
    a forwarded one), one read report in cur/, and a message that is no report."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    first, second = (mail_shapes((SAMPLES / name).read_bytes()) for name in REPORTS)
    (root / "new" / "1700000001.M1P1.host").write_bytes(first["single-part-gzip.eml"])
    (root / "new" / "1700000002.M2P1.host").write_bytes(second["forwarded.eml"])
    (root / "cur" / "1700000003.M3P1.host:2,S").write_bytes(first["crlf.eml"])  # the same report again
    (root / "new" / "1700000004.M4P1.host").write_bytes(
        b"From: someone@example.net\nTo: dmarc-rua@example.com\nSubject: hello\n\nNot a report.\n"
    )
    return root


# -- a real IMAP server ------------------------------------------------------------------------


class Dovecot:
    """Debian's Dovecot on a free loopback port with its own configuration and state, one account
    (``user``/``password``), mail in Maildir under a folder the test owns. Plain IMAP on loopback:
    the TLS default of the collector is set off by the test (PIPELINE_IMAP_TLS=0)."""

    BINARY = "/usr/sbin/dovecot"

    def __init__(self, root: Path, user: str = "dmarc", password: str = "secret-rua"):
        import pwd
        import subprocess

        from pipeline.local.ports import free_port, wait_for_port

        self.root, self.user, self.password = root, user, password
        self.port = free_port(14300)
        mail_owner = pwd.getpwnam("nobody")
        for sub in ("run", "state", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "users").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        os.chown(root / "home", mail_owner.pw_uid, mail_owner.pw_gid)
        (root / "dovecot.conf").write_text(
            f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {mail_owner.pw_uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={mail_owner.pw_uid} gid={mail_owner.pw_gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
        )
        self.process = subprocess.Popen([self.BINARY, "-F", "-c", str(root / "dovecot.conf")])
        if not wait_for_port(self.port, timeout=30):
            self.stop()
            log = root / "dovecot.log"
            raise RuntimeError(f"dovecot did not start: {log.read_text() if log.exists() else 'no log'}")

    def env(self) -> dict[str, str]:
        return {
            "PIPELINE_IMAP_HOST": "127.0.0.1",
            "PIPELINE_IMAP_PORT": str(self.port),
            "PIPELINE_IMAP_USER": self.user,
            "PIPELINE_IMAP_PASSWORD": self.password,
            "PIPELINE_IMAP_TLS": "0",
        }

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        import imaplib

        with imaplib.IMAP4("127.0.0.1", self.port) as conn:
            conn.login(self.user, self.password)
            status, _ = conn.append(f'"{folder}"', None, None, raw)
            assert status == "OK", status

    def folder(self, name: str) -> list[bytes]:
        import imaplib

        with imaplib.IMAP4("127.0.0.1", self.port) as conn:
            conn.login(self.user, self.password)
            status, _ = conn.select(f'"{name}"', readonly=True)
            if status != "OK":
                return []
            uids = conn.uid("SEARCH", None, "ALL")[1][0].split()
            return [next(p[1] for p in conn.uid("FETCH", u, "(BODY.PEEK[])")[1] if isinstance(p, tuple)) for u in uids]

    def kick(self) -> None:
        """Drop every connection of the account, as a server restart or a network cut would."""
        import subprocess

        subprocess.run(["/usr/bin/doveadm", "-c", str(self.root / "dovecot.conf"), "kick", self.user], check=False)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()


# -- the web application ---------------------------------------------------------------------


def csrf_of(html: str) -> str:
    import re

    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def web_sign_in(client, token: str):
    """Sign in as a browser does: fetch the form (and its CSRF token), then post it."""
    form = client.get("/login")
    response = client.post("/login", data={"token": token, "csrf": csrf_of(form.text)}, follow_redirects=False)
    assert response.status_code == 303, response.text[:300]
    return client


def parsedmarc_aggregate(path: Path) -> dict | None:
    """parsedmarc's reading of an aggregate report file (an independent oracle), or None."""
    import warnings

    import parsedmarc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parsedmarc.parse_report_file(path.read_bytes(), offline=True, always_use_local_files=True)
    except Exception:
        return None
    return parsed if parsed.get("report_type") == "aggregate" else None


# -- local servers the tests talk to -----------------------------------------------------------


@contextmanager
def webhook_receiver(port_hint: int = 8700):
    """A real HTTP receiver on loopback: yields (its URL, the (headers, body) pairs it got), each
    POST answered 204."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.local.ports import free_port

    received: list[tuple[dict, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port(port_hint)), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()


@contextmanager
def served(app, port_hint: int = 8600):
    """The web application under uvicorn on loopback, as `pipeline web` serves it: yields its URL."""
    import threading

    import uvicorn

    from pipeline.local.ports import free_port

    port = free_port(port_hint)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def smtp_server(env, port_hint: int = 8950):
    """A real SMTP server (aiosmtpd) on loopback; ``env`` (a MonkeyPatch) points PIPELINE_SMTP_*
    at it. Yields the messages it receives."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from pipeline.local.ports import free_port

    inbox: list = []

    class Keep(Message):
        def handle_message(self, message):
            inbox.append(message)

    port = free_port(port_hint)
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    env.setenv("PIPELINE_SMTP_HOST", "127.0.0.1")
    env.setenv("PIPELINE_SMTP_PORT", str(port))
    try:
        yield inbox
    finally:
        controller.stop()
