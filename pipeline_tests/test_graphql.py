"""Through the Dagster webserver's GraphQL API (the path the UI itself uses): the asset graph
reads raw -> enriched -> warehouse, and imported object partitions show as materialized with
their metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from pipeline.local.ports import free_port
from pipeline.project import REPO_ROOT
from pipeline_tests.support import enriched_key, new_customer, put_enriched

QUERY = """
{
  assetNodes { assetKey { path } dependencyKeys { path } }
  assetNodeOrError(assetKey: {path: ["telemetry_events"]}) {
    ... on AssetNode {
      assetMaterializations(limit: 200) {
        partition
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } }
      }
    }
  }
}
"""


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        doc = json.loads(response.read())
    assert "errors" not in doc, doc["errors"]
    return doc["data"]


@pytest.fixture
def webserver(stack, restored_environ):
    from pipeline.local.inprocess import local_instance

    local_instance()  # exports DAGSTER_HOME and the stack's variables, like `pipeline dev`
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=dict(os.environ),
        cwd=os.environ["DAGSTER_HOME"],  # not the checkout: a developer's .env there would point elsewhere
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("dagster-webserver did not come up")
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def test_ui_shows_lineage_and_materialized_object_partitions(stack, clients, empty_queues, webserver):
    from pipeline.local.inprocess import drain_import_queue, local_instance

    cid = new_customer()
    for i in range(3):
        put_enriched(clients("s3"), stack, enriched_key(stack, cid, f"ui-{i}.parquet"), rows=7, seed=i, customer_id=cid)
    runs = drain_import_queue(local_instance())
    assert runs and all(r.success for r in runs)

    data = graphql(webserver, QUERY)
    deps = {
        "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in data["assetNodes"]
    }
    assert deps["enriched_telemetry"] == {"raw_telemetry"}
    assert deps["telemetry_events"] == {"enriched_telemetry"}
    ours = [
        m for m in data["assetNodeOrError"]["assetMaterializations"] if m["partition"].startswith(f"customer={cid}/")
    ]
    assert len(ours) == 3
    for materialization in ours:
        entries = {e["label"]: e.get("intValue", e.get("text")) for e in materialization["metadataEntries"]}
        assert entries["rows"] == 7 and entries["outcome"] == "loaded"
