"""The import sensor's and the enrichment's planning, as pure functions: no stack, no Dagster
instance, so every rule has a fast test of its own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.defs.importer.sensors import RANGE_END, RANGE_START, plan_runs, run_key
from pipeline.enrich.groups import CHUNK_BYTES, Group, balance, chunks
from pipeline.importer.batch import ImportItem
from pipeline.importer.events import ObjectVersion, version_identity
from pipeline.importer.partitions import partition_key


def item(n: int, key: str | None = None) -> ImportItem:
    version = ObjectVersion("b", f"enriched/k{n}.parquet", f"v{n}", f"v{n}")
    return ImportItem(version, key or f"k{n}", inbox_id=n)


def test_new_keys_share_range_runs_and_known_keys_run_alone():
    items = [item(n) for n in range(7)]
    requests, left = plan_runs(items, first_seen={f"k{n}" for n in range(5)}, objects_per_run=2)
    ranges = [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests]
    assert ranges == [("k0", "k1"), ("k2", "k3"), ("k4", "k4"), ("k5", "k5"), ("k6", "k6")]
    assert left == []
    assert all(r.tags["pipeline/inbox"] == "1" for r in requests)


def test_single_runs_per_tick_are_bounded_and_the_rest_waits():
    items = [item(n) for n in range(5)]
    requests, left = plan_runs(items, first_seen=set(), single_runs=2)
    assert len(requests) == 2 and [i.inbox_id for i in left] == [2, 3, 4]


def test_versions_of_one_key_stay_in_one_run_in_order():
    first, again = item(1, "same"), item(2, "same")
    [request], _ = plan_runs([first, again], first_seen={"same"})
    config = request.run_config["ops"]["telemetry_events"]["config"]["items"]
    assert [c["inbox_id"] for c in config] == [1, 2]


def test_a_row_planned_again_gets_a_new_run_key():
    items = [item(1), item(2)]
    assert run_key(items, {1: 1, 2: 1}) == run_key(list(reversed(items)), {1: 1, 2: 1})  # order does not matter
    assert run_key(items, {1: 1, 2: 1}) != run_key(items, {1: 2, 2: 1})  # Dagster never reruns a run key


@given(st.text(min_size=1, max_size=1200))
def test_partition_keys_are_safe_bounded_and_distinct(name):
    key = partition_key("bucket", f"enriched/{name}", "enriched/")
    assert "," not in key and "..." not in key and len(key) <= 93
    assert all(c.isalnum() or c in "=._/-~" for c in key)
    assert key != partition_key("bucket", f"enriched/{name}x", "enriched/")


def test_identity_is_the_version_id_else_the_etag():
    assert version_identity("3HL4kqtJlcpXroDTDmJ", "abc") == "3HL4kqtJlcpXroDTDmJ"
    assert version_identity("null", "abc") == "abc"  # a suspended bucket answers "null"
    assert version_identity(None, "abc") == "abc"
    with pytest.raises(ValueError):
        version_identity(None, None)
    by_etag = ObjectVersion("b", "k", "abc", "abc")
    assert by_etag.version_id is None and by_etag.same_object("abc", "abc")
    # a load recorded by version id is not provably this ETag-only event's version (X again is a
    # new version with X's ETag), but S3 holding those bytes now is what the event names
    assert not by_etag.same_object("v9", "abc") and by_etag.is_current("v9", "abc")
    assert not by_etag.is_current("v9", "abd")
    by_id = ObjectVersion("b", "k", "v9", "abc")
    assert by_id.version_id == "v9" and by_id.same_object("v9", None) and not by_id.same_object("v8", "abc")


def group(n: int, size: int) -> Group:
    return Group("acme", f"2026-11-{1 + n % 28:02d}", (f"raw/{n}.jsonl.gz",), size)


@given(st.lists(st.integers(1, 10_000_000), min_size=1, max_size=60), st.integers(1, 8))
def test_tasks_get_every_group_once_and_loads_stay_balanced(sizes, slices):
    groups = [group(n, size) for n, size in enumerate(sizes)]
    tasks = balance(groups, slices)
    dealt = [g for task in tasks for g in task]
    assert sorted(dealt, key=id) == sorted(groups, key=id) and len(tasks) <= slices
    loads = [sum(g.size + 1 for g in task) for task in tasks]
    assert max(loads) - min(loads) <= max(sizes) + 1  # the LPT bound: never off by more than one group


def test_a_task_enriches_its_groups_in_bounded_passes():
    groups = [group(n, CHUNK_BYTES // 3) for n in range(7)]
    passes = chunks(groups)
    assert [len(p) for p in passes] == [3, 3, 1]
    assert [g for p in passes for g in p] == groups
    assert chunks([group(0, CHUNK_BYTES * 5)]) == [[group(0, CHUNK_BYTES * 5)]]  # a big group is one pass
