"""Spark enrichment on a real local Spark session and the real local stack."""

from __future__ import annotations

import uuid

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance

from pipeline.collector.collect import collect
from pipeline.collector.generate import generate_reports
from pipeline.collector.normalize import read_raw_object
from pipeline.collector.spool import Spool
from pipeline.enrich.spark import enrich_days, spark_session
from pipeline.enrich.transform import enrich_frame
from pipeline_tests.support import enriched_of, receive_all


@pytest.fixture(autouse=True)
def spark_whatever_the_size(monkeypatch):
    """These tests are of Spark: their few reports would otherwise be enriched in process."""
    monkeypatch.setenv("PIPELINE_ENRICH_LOCAL_BYTES", "0")


@pytest.fixture(scope="session")
def spark():
    return spark_session("local[2]")


def enriched_objects(s3, stack, customer_id: str) -> dict[str, pd.DataFrame]:
    """The customer's rows of each batch object that holds some."""
    out = {}
    for key in enriched_of(stack, customer_id):
        body = s3.get_object(Bucket=stack.enriched_bucket, Key=key)["Body"].read()
        frame = pq.read_table(pa_buffer(body)).to_pandas()
        out[key] = frame[frame["customer_id"] == customer_id]
    return out


def pa_buffer(body: bytes):
    import pyarrow as pa

    return pa.BufferReader(body)


@pytest.fixture(scope="module")
def generated(stack, tmp_path_factory):
    """Synthetic reports of one customer, collected."""
    folder = tmp_path_factory.mktemp("reports")
    cid = f"e{uuid.uuid4().hex[:8]}"
    reports = generate_reports(folder, 1, 8, seed=21)
    collect([folder / reports[0].customer_id], cid, stack, Spool(folder / "spool"))
    days = sorted({r.path.split("!")[2] for r in reports})
    import datetime as dt

    return cid, reports, sorted({dt.datetime.fromtimestamp(int(d), dt.UTC).date().isoformat() for d in days})


def test_enrichment_adds_reference_data_alignment_and_categories(spark, stack, clients, generated, empty_queues):
    cid, reports, days = generated
    results = enrich_days(spark, stack, clients("s3"), days, "test-run-1")
    assert all(r.rows_match and r.null_event_ids == 0 for r in results)
    frames = enriched_objects(clients("s3"), stack, cid)
    assert len(frames) == len(days)  # one batch object per day
    enriched = pd.concat(frames.values())
    expected = [(rec.source_ip, rec.kind) for r in reports for rec in r.records]
    assert len(enriched) == len(expected)
    by_ip = dict(zip(enriched["source_ip"], enriched["sender_category"]))
    assert all(by_ip[ip] == kind for ip, kind in expected if kind != "forwarder" or by_ip[ip] == "forwarder")
    assert sum(by_ip[ip] == kind for ip, kind in expected) >= 0.9 * len(expected)
    assert set(enriched["sender_category"]) >= {"authorized", "forwarder", "misconfigured", "spoof"}
    services = set(enriched["service_name"].dropna())
    assert any(s.startswith("Google") for s in services) and "Microsoft" in services
    assert {"Amazon", "Twilio SendGrid"} & services
    assert enriched["asn"].notna().all() and enriched["country"].notna().all()
    assert enriched["event_id"].is_unique and (enriched["model_version"] == "sender-v1").all()
    # The notifications name exactly the published objects, nothing staged.
    keys = sorted(r.key for r in _versions(clients, stack, set(frames)))
    assert keys == sorted(frames)


def _versions(clients, stack, keys: set[str]):
    """The object versions notified for ``keys`` (consumed; other tests' messages too)."""
    from pipeline.importer.events import parse_s3_event

    messages = receive_all(clients("sqs"), stack.queue_url, wait=1)
    return [
        v
        for m in messages
        for v in parse_s3_event(m["Body"], stack.enriched_bucket, stack.enriched_prefix).versions
        if v.key in keys  # other tests' messages may come back from flight
    ]


def test_rerun_is_byte_stable_and_removes_stale_objects(spark, stack, clients, generated, empty_queues):
    cid, _reports, days = generated
    s3 = clients("s3")
    enrich_days(spark, stack, s3, days, "test-run-2", customers=[cid], reprocess=True)
    before = {k: s3.head_object(Bucket=stack.enriched_bucket, Key=k)["ETag"] for k in enriched_of(stack, cid)}
    _versions(clients, stack, set(before))  # drain
    again = enrich_days(spark, stack, s3, days, "test-run-3", reprocess=True)
    assert all(not r.written and not r.removed for r in again)
    assert _versions(clients, stack, set(before)) == []  # nothing re-published, nobody notified
    # The customer's raw data of the first day goes away: its rows must leave the enriched objects.
    raw = s3.list_objects_v2(Bucket=stack.raw_bucket, Prefix=f"raw/customer={cid}/dt={days[0]}/")["Contents"]
    for obj in raw:
        s3.delete_object(Bucket=stack.raw_bucket, Key=obj["Key"])
    [first, *_] = enrich_days(spark, stack, s3, days, "test-run-4", customers=[cid])
    first_day = sorted(k for k in before if f"dt={days[0]}/" in k)
    assert first.reenriched_batches >= 1 and sorted(first.removed + first.written) == first_day
    assert all(frame.empty for key, frame in enriched_objects(s3, stack, cid).items() if f"dt={days[0]}/" in key)
    notified = _versions(clients, stack, set(first_day))
    assert sorted(v.key for v in notified) == first_day
    assert [v.key for v in notified if v.removed] == first.removed


def raw_row(customer_id: str, day: str, **fields) -> dict:
    """A raw telemetry record as the collector writes it (the fields the enrichment needs)."""
    return {
        "customer_id": customer_id,
        "report_org": "x.example",
        "record_index": 0,
        "schema_version": 1,
        "report_begin": f"{day}T00:00:00+00:00",
        "report_end": f"{day}T23:59:59+00:00",
        "dkim_auth": "[]",
        "spf_auth": "[]",
        **fields,
    }


def put_raw_lines(s3, stack, customer_id: str, day: str, lines: list[str], records: int) -> None:
    import gzip

    s3.put_object(
        Bucket=stack.raw_bucket,
        Key=f"raw/customer={customer_id}/dt={day}/x_{uuid.uuid4().hex[:6]}.jsonl.gz",
        Body=gzip.compress(("\n".join(lines) + "\n").encode()),
        Metadata={"records": str(records)},
    )


def test_malformed_rows_are_rescued_not_dropped(spark, stack, clients):
    import gzip
    import json

    s3 = clients("s3")
    cid, day = f"q{uuid.uuid4().hex[:8]}", "2026-10-15"
    good = raw_row(cid, day, report_id="r1", source_ip="8.8.8.8", message_count=3)
    bad_ip = {**good, "record_index": 1, "source_ip": "not-an-ip"}
    put_raw_lines(s3, stack, cid, day, [json.dumps(good), json.dumps(bad_ip), "{this is not json"], records=3)
    [result] = enrich_days(spark, stack, s3, [day], "test-run-5")
    assert (result.enriched_rows, result.rescued_rows, result.rows_match) == (1, 2, True)
    quarantine = s3.list_objects_v2(Bucket=stack.enriched_bucket, Prefix=f"quarantine/customer={cid}/")["Contents"]
    body = gzip.decompress(s3.get_object(Bucket=stack.enriched_bucket, Key=quarantine[0]["Key"])["Body"].read())
    reasons = [json.loads(line)["reason"] for line in body.decode().splitlines()]
    assert any("not an IP address" in r for r in reasons) and any("not valid JSON" in r for r in reasons)


def test_spark_and_single_process_enrichment_agree(spark, stack, clients, generated):
    cid, _reports, days = generated
    s3 = clients("s3")
    raw = []
    for obj in s3.list_objects_v2(Bucket=stack.raw_bucket, Prefix=f"raw/customer={cid}/")["Contents"]:
        raw += read_raw_object(s3.get_object(Bucket=stack.raw_bucket, Key=obj["Key"])["Body"].read())
    local = enrich_frame(pd.DataFrame(raw)).sort_values("event_id").reset_index(drop=True)
    spark_side = pd.concat(enriched_objects(s3, stack, cid).values()).sort_values("event_id").reset_index(drop=True)
    columns = ["event_id", "sender_category", "trust_score", "asn", "service_name", "dmarc_pass"]
    pd.testing.assert_frame_equal(local[columns], spark_side[columns], check_dtype=False)


def test_asset_check_fails_when_rows_go_missing(stack, clients, spark):
    """Through Dagster: a raw object that holds fewer rows than the collector recorded."""
    import json

    from dagster import RunRequest, SensorResult

    from pipeline.local.inprocess import apply

    s3 = clients("s3")
    cid, day = f"m{uuid.uuid4().hex[:8]}", "2026-10-20"
    row = raw_row(cid, day, report_id="r9", source_ip="8.8.4.4", message_count=1)
    put_raw_lines(s3, stack, cid, day, [json.dumps(row)], records=3)  # the collector said 3 records
    instance = DagsterInstance.ephemeral()
    request = RunRequest(
        asset_selection=[AssetKey("enriched_telemetry")],
        tags={"dagster/asset_partition_range_start": day, "dagster/asset_partition_range_end": day},
    )
    [run] = apply(instance, SensorResult(run_requests=[request]))
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in run.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {"enriched_rows_match_raw": False, "no_null_event_id": True, "rows_match_their_object_key": True}
