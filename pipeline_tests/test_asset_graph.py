"""A snapshot of the asset graph (keys, dependencies, partitions, checks, automation, groups,
kinds, sensors, jobs): an accidental change to what users see in the Dagster UI shows up in
review as a diff of pipeline_tests/snapshots/asset_graph.json. After an intended change:
PIPELINE_UPDATE_SNAPSHOTS=1 pytest pipeline_tests/test_asset_graph.py, and commit the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph() -> dict:
    from pipeline.definitions import defs

    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": type(partitions).__name__ if partitions else None,
            "partitions_name": getattr(partitions, "name", None),
            "checks": sorted(c.name for c in node.check_keys),
            "automation": type(node.automation_condition).__name__ if node.automation_condition else None,
            "backfill_policy": str(node.backfill_policy.policy_type) if node.backfill_policy else None,
            "materializable": node.is_materializable,
        }
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in repository.sensor_defs),
        "schedules": sorted(s.name for s in repository.schedule_defs),
        "resources": sorted(repository.get_top_level_resources()),
    }


def test_the_asset_graph_matches_its_snapshot():
    current = graph()
    if os.environ.get("PIPELINE_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    assert current == recorded, (
        "the asset graph changed; if that is intended, run "
        "PIPELINE_UPDATE_SNAPSHOTS=1 pytest pipeline_tests/test_asset_graph.py and commit the snapshot"
    )
