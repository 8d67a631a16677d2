"""Enrichment as a distributed job on a real Spark standalone cluster (a master and two workers,
separate processes, each worker with its own folders): executors read the raw objects from S3
themselves and stage the output; the published objects are byte-identical to local mode's."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

from pipeline.collector.collect import collect
from pipeline.collector.generate import generate_reports
from pipeline.collector.spool import Spool
from pipeline_tests.enrich.standalone import StandaloneCluster
from pipeline_tests.support import enriched_of


def enrich(master: str, days: list[str], env: dict, *extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "enrich", "--days", ",".join(days), "--master", master, "--json", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def published(s3, stack, customer: str) -> dict[str, str]:
    return {k: s3.head_object(Bucket=stack.enriched_bucket, Key=k)["ETag"] for k in enriched_of(stack, customer)}


def test_a_standalone_cluster_publishes_the_same_bytes_as_local_mode(stack, clients, tmp_path):
    s3 = clients("s3")
    customer = f"c{uuid.uuid4().hex[:8]}"
    reports = generate_reports(tmp_path / "reports", 1, 6, seed=33, start=dt.date(2016, 3, 1))
    collect([tmp_path / "reports" / reports[0].customer_id], customer, stack, Spool(tmp_path / "spool"))
    days = sorted({dt.datetime.fromtimestamp(r.begin, dt.UTC).date().isoformat() for r in reports})
    env = {**os.environ, "PIPELINE_SPARK_EXECUTOR_MEMORY": "512m", "TMPDIR": str(tmp_path)}

    local = enrich("local[2]", days, env, "--customers", customer)
    before = published(s3, stack, customer)
    assert len(before) == len(days)  # one batch object per day; the command checked the row counts

    with StandaloneCluster(workers=2, cores=1, memory="1g") as cluster:
        remote = enrich(cluster.url, days, env, "--customers", customer, "--reprocess")
        logs = cluster.executor_logs()
    # The same bytes: every object is already there, nothing is written, nothing removed.
    assert sum(len(d["unchanged"]) for d in remote["days"]) == len(before)
    assert all(not d["written"] and not d["removed"] for d in remote["days"])
    assert published(s3, stack, customer) == before
    assert sum(d["enriched_rows"] for d in remote["days"]) == sum(d["enriched_rows"] for d in local["days"]) > 0
    assert logs, "no executor ran on the workers"
    assert not s3.list_objects_v2(Bucket=stack.enriched_bucket, Prefix=f"staging/{remote['run_id']}/").get("KeyCount")
