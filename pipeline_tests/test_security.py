"""The security review, as tests that fail when a protection is removed (issue #8)."""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest

from pipeline.collector.inputs import Rejected, read_report
from pipeline.importer.worker import run_worker
from pipeline.project import REPO_ROOT
from pipeline_tests.support import SAMPLES, flood, new_customer, private_queue, s3_event, with_queue

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<feedback><report_metadata><org_name>&lol4;</org_name></report_metadata></feedback>
"""


def _xxe(secret: Path) -> str:
    return f"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY leak SYSTEM "file://{secret}">]>
<feedback><report_metadata><org_name>&leak;</org_name><email>a@b.c</email>
<report_id>x</report_id><date_range><begin>1</begin><end>2</end></date_range></report_metadata>
<policy_published><domain>example.com</domain><p>none</p></policy_published>
<record><row><source_ip>192.0.2.1</source_ip><count>1</count><policy_evaluated><disposition>none</disposition>
<dkim>pass</dkim><spf>pass</spf></policy_evaluated></row><identifiers><header_from>example.com</header_from>
</identifiers><auth_results><spf><domain>example.com</domain><result>pass</result></spf></auth_results></record>
</feedback>"""


def _variants(xml: bytes) -> dict[str, bytes]:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.xml", xml)
    return {"report.xml": xml, "report.xml.gz": gzip.compress(xml), "report.zip": packed.getvalue()}


@pytest.mark.parametrize("form", ["report.xml", "report.xml.gz", "report.zip"])
def test_entity_expansion_is_refused_before_parsing(tmp_path, form):
    path = tmp_path / form
    path.write_bytes(_variants(LAUGHS.encode())[form])
    with pytest.raises(Rejected, match="declares a DTD or entities"):
        read_report(path, "acme")


def test_external_entities_never_read_local_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN-4711")
    path = tmp_path / "report.xml"
    path.write_text(_xxe(secret))
    with pytest.raises(Rejected, match="declares a DTD or entities") as raised:
        read_report(path, "acme")
    assert "TOP-SECRET" not in str(raised.value)


def test_real_reports_still_pass_the_dtd_check():
    accepted = 0
    for path in sorted(SAMPLES.iterdir()):
        try:
            read_report(path, "acme")
            accepted += 1
        except Rejected as exc:
            assert "DTD" not in str(exc), exc
    assert accepted >= 10


def test_messages_for_another_bucket_or_prefix_are_rejected_and_recorded(stack, clients):
    sqs, s3 = clients("sqs"), clients("s3")
    queue_url = private_queue(sqs, f"security-{uuid.uuid4().hex[:8]}")
    settings = with_queue(stack, queue_url)
    customer = new_customer()
    [key] = flood(settings, s3, sqs, queue_url, customer, objects=1)  # one good object beside them
    foreign = {
        "other bucket": s3_event("someone-elses-bucket", key, "abc"),
        "outside prefix": s3_event(stack.enriched_bucket, "raw/../enriched/evil.parquet", "abc"),
    }
    sent = {name: sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"] for name, body in foreign.items()}

    run_worker(settings, drain=True, idle_polls=1)

    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT message_id, reason, body_excerpt FROM rejected_messages WHERE message_id = ANY(%s)",
            (list(sent.values()),),
        ).fetchall()
        loaded = conn.execute(
            "SELECT count(*) FROM load_ledger WHERE object_key = %s AND event = 'loaded'", (key,)
        ).fetchone()[0]
    reasons = {r[0]: r[1] for r in rows}
    assert "bucket is not" in reasons[sent["other bucket"]]
    assert "outside the prefix" in reasons[sent["outside prefix"]]
    assert all("Records" in r[2] for r in rows)  # the evidence is kept
    assert loaded == 1  # the good object in the same queue is not held up
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "import-status", "--json"], capture_output=True, text=True, env=os.environ
    )
    assert json.loads(status.stdout)["rejected_messages"] >= 2
    sqs.delete_queue(QueueUrl=queue_url)


@pytest.mark.parametrize("customer", ["..", "../../tmp", "acme/../evil", "a b", ""])
def test_a_group_of_a_hostile_customer_is_refused(customer):
    from pipeline.enrich.groups import Group, enrich_group

    with pytest.raises(ValueError, match="not a group of the collector"):
        enrich_group(None, "run", Group(customer, "2026-11-01", ("raw/x.jsonl.gz",)), s3=object())


def test_enrichment_skips_raw_prefixes_that_are_not_customer_ids(stack, clients, caplog):
    """Spark tasks read S3 keys, never local paths; keys under folders that are not customer ids
    the collector writes never become groups, staging keys or quarantine keys."""
    from pipeline.enrich.groups import batch_groups, list_raw
    from pipeline.enrich.ledger import new_batches

    s3 = clients("s3")
    day = "2031-01-02"  # a day no other test writes
    evil = [
        f"{stack.raw_prefix}customer=../../escape/dt={day}/x.jsonl.gz",
        f"{stack.raw_prefix}customer=acme/dt={day}/../../../../etc/passwd.jsonl.gz",
    ]
    for key in evil:
        s3.put_object(Bucket=stack.raw_bucket, Key=key, Body=gzip.compress(b"{}\n"))
    try:
        groups = batch_groups(new_batches(list_raw(s3, stack, [day])))
    finally:
        for key in evil:
            s3.delete_object(Bucket=stack.raw_bucket, Key=key)
    assert all(g.customer != "../../escape" for g in groups)
    for group in groups:
        assert group.staging_prefix("run").startswith(f"staging/run/dt={day}/batch=")
        assert all(k.startswith(f"{stack.raw_prefix}customer={group.customer}/dt={day}/") for k in group.keys)
        assert all("passwd" not in k for k in group.keys)
    assert "skipped raw prefix" in caplog.text


def test_secrets_never_show_in_output_or_errors():
    password = "Sup3r-Secret-pw"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://pipeline:{password}@127.0.0.1:9/warehouse",
        "DAGSTER_DATABASE_URL": f"postgresql://pipeline:{password}@127.0.0.1:9/dagster",
    }
    for args in (["status"], ["status", "--json"], ["import-status"], ["verify", "--json"], ["scaling", "status"]):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode != 0, args  # the database is not there: it must say so...
        assert password not in result.stdout + result.stderr, args  # ...without the password


def _sql_built_from_strings(tree: ast.AST) -> list[int]:
    """Lines where execute()/copy() gets an f-string, a str.format() or a concatenation."""
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in {"execute", "executemany", "copy"} or not node.args:
            continue
        query = node.args[0]
        if isinstance(query, (ast.JoinedStr, ast.BinOp)) or (
            isinstance(query, ast.Call)
            and isinstance(query.func, ast.Attribute)
            and query.func.attr == "format"
            and isinstance(query.func.value, ast.Constant)
        ):
            bad.append(node.lineno)
    return bad


def test_no_sql_is_built_by_string_formatting():
    offenders = {}
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        lines = _sql_built_from_strings(ast.parse(path.read_text()))
        if lines:
            offenders[str(path.relative_to(REPO_ROOT))] = lines
    assert offenders == {}, f"use psycopg.sql composition: {offenders}"
    # and the check does catch one
    assert _sql_built_from_strings(ast.parse('conn.execute(f"DROP TABLE {name}")')) == [1]
