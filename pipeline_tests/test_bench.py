"""The benchmarks' verdicts: a figure meets its target by the target's own direction."""

from pipeline.bench import flood, history, importer, trickle, verdicts


def test_a_figure_meets_its_target_in_the_targets_direction():
    targets = {"speedup": (">=", 5.0), "overhead": ("<=", 0.3), "not_run": (">=", 1.0)}
    assert verdicts({"speedup": 5.0, "overhead": 0.31}, targets) == {"speedup": True, "overhead": False}
    assert verdicts({"speedup": 4.9, "overhead": 0.3, "other": 9}, targets) == {"speedup": False, "overhead": True}


def test_every_benchmark_target_names_a_direction():
    for targets in (flood.TARGETS, importer.TARGETS, trickle.TARGETS, history.TARGETS):
        assert targets and all(op in {">=", "<="} for op, _ in targets.values())


def _bench(*args: str) -> dict:
    """`pipeline bench ... --json` in its own process: its figures."""
    import json
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_a_small_trickle_copies_and_reads_each_record_once(stack, empty_queues):
    """`pipeline bench trickle` at a small scale (no daemon): its JSON keys, and the figures the
    incremental design promises, exactly: each record enriched and copied once outside the backfill."""
    args = ["--customers", "3", "--reports", "8", "--wave-size", "4", "--held", "500", "--page-reports", "0"]
    figures = _bench("trickle", *args, "--production-customers", "20")
    assert figures["write_amplification"] == figures["enrich_amplification"] == 1.0
    assert figures["rows_copied"] == figures["records_received"] > 0 and figures["verify_ok"]
    assert figures["backfill"]["rows_copied"] > 0 and figures["runs_failed"] == 0
    for key in ("wave_cost_growth", "raw_tick_growth", "partitions_at_production_load"):
        assert figures[key] > 0 and key in figures["targets_met"]


def test_the_run_interval_is_what_bounds_the_partitions_in_the_simulation():
    """The raw sensor ticks every 5 s; its real gate (PIPELINE_RAW_RUN_INTERVAL_S) spaces the
    reports that make batches. Without it, the partitions held grow with the tick rate."""
    from pipeline.bench.partitions import simulate

    load = {"customers": 1000, "reports_per_day": 200, "retention_days": 0.5, "arrival_hours": 12.0}
    gated = simulate(**load, run_interval_s=30)
    ungated = simulate(**load, run_interval_s=0)
    assert gated["model"]["tick_seconds"] == 5
    assert gated["partitions_per_raw_object"] == ungated["partitions_per_raw_object"]  # the same arrivals
    assert gated["partitions_at_production_load"] * 4 < ungated["partitions_at_production_load"]


def test_a_small_flood_runs_the_whole_flow_and_prints_its_keys(stack, empty_queues):
    """`pipeline bench flood --workloads w5` at a small scale: every stage runs (the import into
    its scratch warehouse needs the batches' manifests, which a test of the figures alone missed),
    every record is imported, and the collector's figures of issue 23 are printed."""
    figures = _bench("flood", "--workloads", "w5", "--scale", "0.01")
    assert figures["w5_reports"] == 40 and figures["w5_records"] > 0 and figures["w5_objects"] > 0
    assert set(figures["stage_seconds"]) == {"collect", "enrich", "import", "project"}
    for key in ("max_stage_vs_import", "w5_collect_vs_import"):
        assert figures[key] > 0 and key in figures["targets_met"]


def test_a_small_history_times_a_new_days_refresh_on_both_warehouses(stack):
    """`pipeline bench history` at a small scale: the history is written and refreshed, a new day
    is timed on each warehouse, and its figures are printed with refresh_vs_empty's verdict."""
    figures = _bench(
        "history", "--days", "12", "--recurring", "30", "--tail", "20", "--repeats", "2", "--customers", "2",
        "--import-objects", "3",
    )  # fmt: skip
    assert figures["history_events"] == 2 * 12 * 50 and figures["history_days"] == 12
    assert len(figures["refresh_empty_s"]) == len(figures["refresh_history_s"]) == 2
    assert figures["refresh_vs_empty"] > 0 and "refresh_vs_empty" in figures["targets_met"]
    assert figures["table_bytes_per_event"] > 0
    # W1's workload on both warehouses, and the oldest month dropped by retention: the whole
    # history is that month here, with the new days timed on it (the empty warehouse's customers'
    # first days are there too)
    assert figures["import_rate_vs_empty"] > 0 and "import_rate_vs_empty" in figures["targets_met"]
    assert figures["retention_rows_removed"] == 2 * 12 * 50 + 2 * 50 + 2 * 50 and figures["retention_drop_s"] > 0


def test_the_upgrade_to_partitions_is_timed_on_a_populated_warehouse(stack):
    """`pipeline bench history --migration N`: N events in a warehouse from before partitioning,
    migrated (0019 and what follows), every event moved, the time per million printed."""
    figures = _bench("history", "--migration", "2000")
    assert figures["migration_events"] == 2000
    assert figures["migrations_applied"][0] == 19 and figures["migration_s"] > 0
    # migration_s is rounded to a tenth: 0.05 s of 2,000 events is 25 s a million
    assert abs(figures["migration_s_per_million"] - figures["migration_s"] * 500) <= 25.1


def test_bench_web_over_a_longer_history_against_a_smaller_one(stack):
    """`pipeline bench web --days D --versus N`: the events spread over D days ending on the bench's
    last day (so its week window has data), the pages timed at both sizes, and the p95 ratio."""
    figures = _bench(
        "web", "--events", "6000", "--customers", "2", "--days", "6", "--clients", "2", "--rounds", "1",
        "--versus", "3000",
    )  # fmt: skip
    assert figures["events"] == 6000 and figures["days"] == 6 and figures["baseline"]["events"] == 3000
    assert figures["web_p95_vs_baseline"] == round(figures["page_p95_ms"] / figures["baseline"]["page_p95_ms"], 2)
    assert "web_p95_vs_baseline" in figures["targets_met"] and figures["windowed_page_p95_ms"] > 0


def test_the_disaster_recovery_drill_rebuilds_an_empty_warehouse_from_s3(stack):
    """`pipeline bench history --drill N`: N events in S3 only, an empty warehouse rebuilt from them
    by the reconciler, and verify holds it to S3 (every row once)."""
    figures = _bench("history", "--drill", "3000")
    assert figures["drill_events"] == 3000 and figures["drill_failed"] == 0 and figures["drill_objects"] == 1
    assert figures["verify_ok"] is True and figures["rebuild_events_per_s"] > 0
    assert figures["heap_bytes_per_event"] > 0 and figures["index_bytes_per_event"] > 0
