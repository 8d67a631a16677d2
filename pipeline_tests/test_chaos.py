"""`pipeline chaos`: a small run of the real pipeline under every fault kind (the CI-sized version
of the figures in RELIABILITY.md), and the checker's own ability to see a violation."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import psycopg

from pipeline.project import REPO_ROOT


def test_small_chaos_run_loses_nothing_and_doubles_nothing(stack):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "chaos", "--objects", "30", "--seed", "11", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=900,
    )
    summary = json.loads(result.stdout)
    assert result.returncode == 0, summary
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["wrong_version"] == 0 and summary["ok"]
    assert summary["rows_loaded"] == summary["rows_expected"] > 0
    assert summary["dead_lettered_good"] == 0  # waiting (a held run queue) dead-letters nothing
    faults = summary["faults"]
    for planned in (
        "duplicated_delivery",
        "reordered_delivery",
        "delayed_delivery",
        "claim_expiry_two_importers",
        "truncated_parquet",
        "malformed_rows",
        "poison_object",
        "reversion",
        "run_queue_delay",
        "versioned_bucket",
        "trickle_during_backfill",
    ):
        assert faults[planned] > 0, planned
    trickle = summary["trickle_during_backfill"]
    assert trickle["ok"] and trickle["rows_loaded"] == trickle["records"] > 0, trickle
    kills = ("kill_between_copy_and_commit", "kill_between_commit_and_delete", "kill_during_heartbeat")
    assert sum(faults[k] for k in kills) >= 2, faults
    assert summary["dead_lettered"] >= 2  # the poison object and the malformed one, at least
    assert summary["recovered"] >= 1  # the truncated object, fixed


def test_the_checker_sees_loss_duplication_and_wrong_versions(stack, clients):
    from pipeline.chaos.run import ChaosRun
    from pipeline.enrich.synthetic import parquet_bytes
    from pipeline.importer.worker import run_worker

    run = ChaosRun(stack, objects=5, seed=5, rows=20)
    run.make_queues()
    try:
        messages = run.write_objects()
        good = [(k, body) for k, body in messages if run.kinds[k] == "good"]
        summary = run.check(0, {"messages": 0}, 0.0)
        assert summary["lost"] == 5 and not summary["ok"]  # nothing imported, nothing dead-lettered

        run.deliver(good)
        run_worker(run.chaos, drain=True, idle_polls=2)
        summary = run.check(0, {"messages": 0}, 0.0)
        assert summary["lost"] == 3 and summary["wrong_version"] == 0  # only the unreadable ones are missing

        key = good[1][0]  # a new version that nobody is told about: the warehouse holds the old one
        index = int(key.rsplit("-", 1)[1].split(".")[0])
        run.put(key, parquet_bytes(run._table(key, index, 1)), "good")
        summary = run.check(0, {"messages": 0}, 0.0)
        assert summary["wrong_version"] == 1 and not summary["ok"]
        with psycopg.connect(stack.database_url) as conn:  # one load's rows twice
            conn.execute(
                """INSERT INTO telemetry_events SELECT (jsonb_populate_record(e, jsonb_build_object(
                       'event_id', md5(e.event_id::text || '-dup')))).* FROM telemetry_events e
                   WHERE e.ledger_id = (SELECT max(ledger_id) FROM load_ledger
                                        WHERE event = 'loaded' AND object_key = %s)""",
                (good[0][0],),
            )
        summary = run.check(0, {"messages": 0}, 0.0)
        assert summary["duplicated"] > 0 and not summary["ok"]
    finally:
        run.cleanup()


def test_fault_injection_is_not_reachable_from_production_code():
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        if "chaos" in path.relative_to(REPO_ROOT).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith("pipeline.chaos") for n in names):
                # only the `pipeline chaos` command itself, lazily, inside its function
                assert path.parent.name == "cli" and node.col_offset > 0, f"{path}: imports {names}"
