"""``pipeline demo``: the pipeline end to end on the local stack, with a summary at the end."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass

import psycopg

from pipeline.aws import client_factory
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion, parse_s3_event
from pipeline.importer.load import load_object
from pipeline.settings import Settings


@dataclass
class RoundTrip:
    key: str
    etag: str
    message_id: str
    ledger_id: int
    rows_written: int
    rows_in_warehouse: int
    seconds: float


def round_trip(settings: Settings, rows: int = 5, timeout: float = 30.0) -> RoundTrip:
    """One enriched object written to S3 arrives through SNS -> SQS and lands in PostgreSQL."""
    clients = client_factory(settings)
    s3, sqs = clients("s3"), clients("sqs")
    started = time.monotonic()
    day = dt.date.today()
    name = f"roundtrip-{uuid.uuid4().hex[:12]}.parquet"
    key = f"{settings.enriched_prefix}customer=demo/dt={day.isoformat()}/{name}"
    body = parquet_bytes(
        synthetic_enriched_table(rows, seed=int(time.time()), day=day, report_id=f"roundtrip-{uuid.uuid4().hex}")
    )
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = sqs.receive_message(
            QueueUrl=settings.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=2,
            VisibilityTimeout=30,
        )
        for message in response.get("Messages", []):
            parsed = parse_s3_event(message["Body"], settings.enriched_bucket, settings.enriched_prefix)
            ours = [v for v in parsed.versions if v.key == key]
            if not ours:
                # Not this demo's object: hand it back at once for whoever imports it.
                sqs.change_message_visibility(
                    QueueUrl=settings.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
                continue
            version: ObjectVersion = ours[0]
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                result = load_object(conn, s3, version, worker="demo")
                in_warehouse = conn.execute(
                    "SELECT count(*) FROM telemetry_events WHERE ledger_id = %s", (result.ledger_id,)
                ).fetchone()[0]
            sqs.delete_message(QueueUrl=settings.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return RoundTrip(
                key,
                etag,
                message["MessageId"],
                result.ledger_id,
                rows,
                in_warehouse,
                time.monotonic() - started,
            )
    raise TimeoutError(
        f"No notification for s3://{settings.enriched_bucket}/{key} reached {settings.queue_url} "
        f"within {timeout:.0f}s: check `pipeline status` (bucket notification, subscription)."
    )
