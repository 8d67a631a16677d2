"""The rua mailbox as a source: a real Maildir, the real stack. A message leaves the inbox only
when its report is uploaded or durably spooled; a message that is no report goes to .Invalid
with its reason; nothing is deleted, nothing collected twice."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.aws import client
from pipeline.collector.collect import COLLECTOR_CLIENT, CollectSummary, Uploader, flush
from pipeline.collector.generate import mail_shapes
from pipeline.collector.inputs import Rejected
from pipeline.collector.maildir import collect_maildir
from pipeline.collector.spool import Spool
from pipeline_tests.support import REPORTS, SAMPLES
from pipeline_tests.support import report_maildir as maildir


def folder(root: Path, name: str) -> list[str]:
    return sorted(
        p.name for sub in ("new", "cur") if (root / name / sub).is_dir() for p in (root / name / sub).iterdir()
    )


def raw_keys(s3, bucket: str, customer_id: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"raw/customer={customer_id}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_messages_are_archived_after_upload_and_the_rest_moved_to_invalid(stack, clients, tmp_path):
    cid = f"m{uuid.uuid4().hex[:8]}"
    root = maildir(tmp_path / "Maildir")
    result = collect_maildir(root, cid, stack, Spool(tmp_path / "spool"))
    assert (result.collect.reports, len(result.collect.duplicates)) == (2, 1)
    assert len(raw_keys(clients("s3"), stack.raw_bucket, cid)) == 2
    assert folder(root, ".") == []  # the inbox is empty
    assert folder(root, ".Archive") == [
        "1700000001.M1P1.host:2,S",
        "1700000002.M2P1.host:2,S",
        "1700000003.M3P1.host:2,S",
    ]
    assert folder(root, ".Invalid") == ["1700000004.M4P1.host:2,S"]
    [invalid] = result.invalid
    assert "not a DMARC aggregate report" in invalid["reason"] and str(root) in invalid["reason"]
    assert (root / ".Archive" / "maildirfolder").exists()  # a Maildir++ folder, IMAP sees it

    again = collect_maildir(root, cid, stack, Spool(tmp_path / "spool"))
    assert again.collect.files == 0 and again.archived == [] and again.invalid == []


def test_s3_down_the_messages_are_archived_because_the_spool_holds_their_reports(stack, clients, tmp_path):
    cid = f"m{uuid.uuid4().hex[:8]}"
    root = maildir(tmp_path / "Maildir")
    spool = Spool(tmp_path / "spool")
    dead = dataclasses.replace(stack, aws_endpoint_url="http://127.0.0.1:9")  # nothing listens on 9
    result = collect_maildir(root, cid, dead, spool, s3=client(dead, "s3", COLLECTOR_CLIENT))
    assert result.collect.pending_in_spool == 2 and result.exit_code == 3
    assert len(folder(root, ".Archive")) == 3 and folder(root, ".") == []
    flushed = CollectSummary()
    flush(spool, Uploader(clients("s3"), stack.raw_bucket), flushed)
    assert len(flushed.objects_written) == 2 and len(raw_keys(clients("s3"), stack.raw_bucket, cid)) == 2


def test_a_message_stays_in_the_inbox_when_collecting_fails(stack, tmp_path, monkeypatch):
    import pipeline.collector.maildir as module

    root = maildir(tmp_path / "Maildir")

    def broken(*args, **kwargs):
        raise RuntimeError("the spool's disk is full")

    monkeypatch.setattr(module, "collect", broken)
    with pytest.raises(RuntimeError):
        collect_maildir(root, "someone", stack, Spool(tmp_path / "spool"))
    assert len(folder(root, ".")) == 4 and not (root / ".Archive").exists()


def test_a_folder_that_is_no_maildir_is_refused_by_name(stack, tmp_path):
    (tmp_path / "mail").mkdir()
    with pytest.raises(Rejected, match="not a Maildir"):
        collect_maildir(tmp_path / "mail", "someone", stack, Spool(tmp_path / "spool"))


def test_cli_collects_a_maildir(stack, clients, tmp_path):
    cid = f"m{uuid.uuid4().hex[:8]}"
    root = maildir(tmp_path / "Maildir")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "collect", "--customer", cid, "--maildir", str(root), "--json"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PIPELINE_HOME": str(tmp_path / "home"), **stack.process_env()},
        timeout=300,
    )
    out = json.loads(run.stdout)
    assert run.returncode == 1, run.stderr  # one message was no report
    assert (out["reports"], len(out["archived"]), len(out["invalid"])) == (2, 3, 1)
    assert out["rejected"][0]["input"].startswith(str(root))


def test_the_service_collects_new_mail_reports_its_status_and_stops_cleanly_on_sigterm(stack, clients, tmp_path):
    import os
    import signal
    import time

    cid = f"m{uuid.uuid4().hex[:8]}"
    root = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    home = tmp_path / "home"
    env = {**os.environ, "PIPELINE_HOME": str(home), **stack.process_env()}
    service = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "collect", "--customer", cid, "--maildir", str(root), "--watch", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = mail_shapes((SAMPLES / REPORTS[0]).read_bytes())
        (root / "new" / "1700000010.M1P1.host").write_bytes(first["octet-stream.eml"])  # mail arrives later
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not folder(root, ".Archive"):
            time.sleep(0.5)
        assert folder(root, ".Archive") == ["1700000010.M1P1.host:2,S"]
        assert len(raw_keys(clients("s3"), stack.raw_bucket, cid)) == 1
        status = subprocess.run(
            [sys.executable, "-m", "pipeline", "collect", "--status", "--json"], env=env, capture_output=True, text=True
        )
        shown = json.loads(status.stdout)
        assert shown["state"] == "running" and shown["collected_reports"] == 1 and shown["last_success"]
        assert shown["pending_in_spool"] == 0 and shown["source"] == f"maildir:{root}"
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err[-2000:]
    assert json.loads((home / "collector-status.json").read_text())["state"] == "stopped"


def test_the_deploy_files_run_the_service_and_stop_it_with_sigterm():
    from pipeline.project import REPO_ROOT

    unit = (REPO_ROOT / "deploy" / "collector" / "pipeline-collector.service").read_text()
    container = (REPO_ROOT / "deploy" / "collector" / "Containerfile").read_text()
    for text in (unit, container):
        assert "pipeline collect --customer" in text and "--maildir" in text and "--watch" in text
        assert "SIGTERM" in text
    assert "Restart=on-failure" in unit and "PIPELINE_ENV=prod" in unit


def test_a_collector_refuses_a_customer_outside_its_credentials_scope(stack, tmp_path):
    import os

    root = maildir(tmp_path / "Maildir")
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path / "home"), **stack.process_env()}
    env["PIPELINE_COLLECTOR_CUSTOMER"] = "acme"
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "collect", "--customer", "globex", "--maildir", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and "'globex'" in run.stderr and "'acme'" in run.stderr, run.stderr
    assert len(folder(root, ".")) == 4 and not (root / ".Archive").exists()  # nothing read, nothing moved
