"""The Dagster code location loads, in-process and through Dagster's own CLI."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.local.dotenv import dagster_home
from pipeline.project import REPO_ROOT
from pipeline_tests.support import private_queue


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


def test_the_warehouse_url_is_an_env_var_never_a_value(stack, monkeypatch):
    """Dagster shows resource config in the UI: the URL (it may hold a password) reaches the
    warehouse resource as EnvVar("DATABASE_URL"), resolved when the resource is built."""
    from dagster import EnvVar

    from pipeline.defs.resources import resource_defs

    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    warehouse = resource_defs()["warehouse"]
    assert isinstance(warehouse.url, EnvVar) and warehouse.url.env_var_name == "DATABASE_URL"
    with warehouse.process_config_and_initialize().connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def dagster_project(stack, tmp_path, clients=None):
    """A copy of the project's entry files with the .env `pipeline up` writes, and an environment
    that says nothing of the stack: what a Dagster user has in the project root. With
    ``clients``, the stack's queue and raw bucket are private ones, so that the sensors of a
    `dagster dev` take nothing of other tests' work, and no importer worker is started."""
    import dataclasses
    import shutil
    import uuid

    from pipeline.local.dotenv import write_dotenv

    project = tmp_path / "project"
    project.mkdir()
    for name in ("workspace.yaml", "dagster.yaml"):
        shutil.copyfile(REPO_ROOT / name, project / name)
    if clients is not None:
        name = f"dev-{uuid.uuid4().hex[:8]}"
        clients("s3").create_bucket(Bucket=name)
        stack = dataclasses.replace(stack, queue_url=private_queue(clients("sqs"), name), raw_bucket=name)
    assert write_dotenv(stack, project, tmp_path / "home")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPELINE_", "DAGSTER_", "AWS_")) and k not in {"DATABASE_URL"}
    }
    return project, {**clean, "PYTHONPATH": str(REPO_ROOT), "PIPELINE_SCALING_MAX": "0"}


def test_plain_dagster_commands_work_in_the_project_root_after_up(stack, tmp_path):
    project, env = dagster_project(stack, tmp_path)
    validate = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validate.returncode == 0, validate.stdout[-3000:] + validate.stderr[-3000:]
    assert "All code locations passed validation" in validate.stdout + validate.stderr


def test_dagster_dev_serves_the_code_location_from_the_project_root(stack, clients, tmp_path):
    import json
    import time
    import urllib.request

    from pipeline.local.ports import free_port

    project, env = dagster_project(stack, tmp_path, clients)
    port = free_port(3300)
    dev = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
        env=env,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    query = json.dumps({"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"})
    try:
        deadline = time.monotonic() + 180
        names = None
        while time.monotonic() < deadline and names is None:
            time.sleep(2)
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=query.encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    nodes = json.load(response)["data"]["repositoriesOrError"].get("nodes")
                names = [n["name"] for n in nodes] if nodes else None
            except OSError:
                continue
        assert names == ["__repository__"], names
    finally:
        import signal

        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)


def test_assets_carry_dagsters_standard_metadata():
    """The UI's Columns tab and column search (dagster/column_schema, from the fields the code
    writes) and each asset's link to its code (dagster/code_references)."""
    from pipeline.definitions import defs
    from pipeline.importer.load import EVENT_COLUMNS
    from pipeline.telemetry import ENRICHED_FIELDS, RAW_FIELDS

    graph = defs.get_repository_def().asset_graph
    metadata = {key.to_user_string(): graph.get(key).metadata for key in graph.get_all_asset_keys()}
    columns = {
        name: [c.name for c in md["dagster/column_schema"].columns]
        for name, md in metadata.items()
        if "dagster/column_schema" in md
    }
    assert columns == {
        "raw_telemetry": list(RAW_FIELDS),
        "enriched_telemetry": list(ENRICHED_FIELDS),
        "telemetry_events": ["ledger_id", *EVENT_COLUMNS],  # as the importer's COPY writes them
        "daily_domain_compliance": columns["daily_domain_compliance"],  # checked against the warehouse below
        "daily_source_summary": columns["daily_source_summary"],
        "customer_alerts": columns["customer_alerts"],
    }
    coded = {name for name, md in metadata.items() if "dagster/code_references" in md}
    assert coded == set(metadata) - {"raw_telemetry"}  # the collector's objects: written outside Dagster


def test_the_projections_column_schemas_are_their_tables(stack):
    """The read models' columns in the UI are the tables the migrations create, name and type."""
    import psycopg
    from dagster import AssetKey

    from pipeline.definitions import defs

    graph = defs.get_repository_def().asset_graph
    with psycopg.connect(stack.database_url) as conn:
        for key in ("daily_domain_compliance", "daily_source_summary", "customer_alerts"):
            metadata = graph.get(AssetKey(key)).metadata
            table = metadata["dagster/table_name"]
            actual = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            declared = [(c.name, c.type) for c in metadata["dagster/column_schema"].columns]
            assert declared == [tuple(row) for row in actual], key
            assert all(c.description for c in metadata["dagster/column_schema"].columns), key
