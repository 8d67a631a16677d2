"""The rua mailbox over IMAP, against a real Dovecot the tests start: messages move to Archive
or Invalid only once their reports are safe, and a connection dropped in the middle of a batch
loses no report and collects none twice."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from pipeline.collector.generate import mail_shapes
from pipeline.collector.spool import Spool
from pipeline_tests.support import REPORTS, SAMPLES, Dovecot, traversable_tmpdir

pytestmark = pytest.mark.skipif(not os.path.exists(Dovecot.BINARY), reason="Dovecot is not installed")

NOT_A_REPORT = b"From: someone@example.net\nTo: dmarc-rua@example.com\nSubject: hello\n\nNot a report.\n"


@pytest.fixture
def dovecot():
    root = traversable_tmpdir("dovecot-")
    server = Dovecot(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def deliver_reports(server: Dovecot) -> None:
    first, second = (mail_shapes((SAMPLES / name).read_bytes()) for name in REPORTS)
    server.deliver(first["single-part-gzip.eml"])
    server.deliver(second["forwarded.eml"])
    server.deliver(first["crlf.eml"])  # the same report as the first, a second copy
    server.deliver(NOT_A_REPORT)


def raw_keys(s3, bucket: str, customer_id: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"raw/customer={customer_id}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_collect_imap_archives_reports_and_moves_the_rest_to_invalid(stack, clients, dovecot, tmp_path):
    cid = f"i{uuid.uuid4().hex[:8]}"
    deliver_reports(dovecot)
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path / "home"), **stack.process_env(), **dovecot.env()}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "collect", "--customer", cid, "--imap", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = json.loads(run.stdout)
    assert run.returncode == 1, run.stderr  # one message is no report
    assert (out["reports"], len(out["archived"]), len(out["invalid"])) == (2, 3, 1)
    assert out["rejected"][0]["input"].startswith(f"imap://{dovecot.user}@127.0.0.1/INBOX/")
    assert dovecot.folder("INBOX") == [] and len(dovecot.folder("Archive")) == 3
    assert dovecot.folder("Invalid") == [NOT_A_REPORT.replace(b"\n", b"\r\n")]
    assert len(raw_keys(clients("s3"), stack.raw_bucket, cid)) == 2


@pytest.mark.parametrize("drop_after", ["FETCH", "MOVE"])
def test_a_connection_dropped_mid_batch_loses_nothing_and_collects_nothing_twice(
    stack, clients, dovecot, tmp_path, monkeypatch, drop_after
):
    """The server drops the session (doveadm kick) after the first FETCH, or after the first MOVE:
    the run fails; the next run reads what is left, and S3 ends with each report once."""
    import pipeline.collector.imap as module

    for name, value in dovecot.env().items():
        monkeypatch.setenv(name, value)
    cid = f"i{uuid.uuid4().hex[:8]}"
    deliver_reports(dovecot)
    original = imaplib.IMAP4.uid
    calls = {"n": 0}

    def uid_then_drop(self, command, *args):
        result = original(self, command, *args)
        if command.upper() == drop_after:
            calls["n"] += 1
            if calls["n"] == 1:
                dovecot.kick()
                # doveadm kick ends the session when the server gets to it: on a busy machine the
                # client had sent the next command by then. The drop happens here, every time.
                self.sock.shutdown(socket.SHUT_RDWR)
        return result

    monkeypatch.setattr(imaplib.IMAP4, "uid", uid_then_drop)
    spool = Spool(tmp_path / "spool")
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        module.collect_imap(module.ImapMailbox.from_config(), cid, stack, spool)
    left = dovecot.folder("INBOX")
    assert len(left) == (4 if drop_after == "FETCH" else 3)  # nothing moved before its report was safe

    monkeypatch.setattr(imaplib.IMAP4, "uid", original)
    again = module.collect_imap(module.ImapMailbox.from_config(), cid, stack, spool)
    assert dovecot.folder("INBOX") == [] and len(dovecot.folder("Archive")) == 3 and len(again.invalid) == 1
    keys = raw_keys(clients("s3"), stack.raw_bucket, cid)
    assert len(keys) == 2  # no report lost, none twice


def test_the_service_watches_the_imap_folder_until_sigterm(stack, clients, dovecot, tmp_path):
    import signal
    import time

    cid = f"i{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path / "home"), **stack.process_env(), **dovecot.env()}
    service = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "collect", "--customer", cid, "--imap", "--watch", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        dovecot.deliver(mail_shapes((SAMPLES / REPORTS[1]).read_bytes())["octet-stream.eml"])  # arrives later
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not dovecot.folder("Archive"):
            time.sleep(0.5)
        assert len(dovecot.folder("Archive")) == 1 and dovecot.folder("INBOX") == []
        assert len(raw_keys(clients("s3"), stack.raw_bucket, cid)) == 1
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=60)
    assert service.returncode == 0, err[-2000:]
    status = json.loads((tmp_path / "home" / "collector-status.json").read_text())
    assert status["state"] == "stopped" and status["collected_reports"] == 1
    assert status["source"] == f"imap://{dovecot.user}@127.0.0.1/INBOX"


def test_missing_imap_settings_are_named(stack, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_IMAP_")}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "collect", "--customer", "acme", "--imap"],
        capture_output=True,
        text=True,
        env={**env, "PIPELINE_HOME": str(tmp_path / "home"), **stack.process_env()},
        timeout=120,
    )
    assert run.returncode == 2
    assert "PIPELINE_IMAP_HOST" in run.stderr and "PIPELINE_IMAP_PASSWORD" in run.stderr
