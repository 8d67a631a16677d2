"""The Dagster code location loads, in-process and through Dagster's own CLI."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.cli import REPO_ROOT, dagster_home


def test_definitions_load_in_process():
    from pipeline.definitions import defs

    repo = defs.get_repository_def()
    assert {"stack", "object_store", "import_queue", "warehouse"} <= set(repo.get_top_level_resources())


def test_dagster_definitions_validate(stack):
    env = {**os.environ, **stack.process_env(), "DAGSTER_HOME": str(dagster_home())}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_resources_reach_the_stack(stack):
    from pipeline.defs.resources import resource_defs

    resources = resource_defs()
    assert resources["import_queue"].url() == stack.queue_url
    with resources["warehouse"].connect() as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 3
    s3 = resources["object_store"].s3
    assert s3.head_bucket(Bucket=resources["object_store"].enriched_bucket_name())
