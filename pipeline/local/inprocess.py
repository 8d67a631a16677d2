"""Sensors and their runs, in this process, against a real Dagster instance.

``pipeline demo``, the benchmarks and the tests drive the same sensors the daemon runs, and
apply what they ask for the way the daemon does: asset events first, then dynamic partitions,
then the runs (here executed in process instead of launched).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    build_sensor_context,
)

from pipeline import names

warnings.filterwarnings("ignore", category=Warning, module=r"dagster.*")


def local_instance() -> DagsterInstance:
    """The instance `pipeline dev` uses (storage in the stack's PostgreSQL)."""
    from pipeline.local.dotenv import dagster_home
    from pipeline.settings import load_settings

    settings = load_settings()
    os.environ.update(settings.process_env())
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    return DagsterInstance.get()  # the shipped dagster.yaml: pooled storage (pipeline/instance.py)


def tick(instance: DagsterInstance, sensor_def, cursor: str | None = None):
    from pipeline.defs.resources import resource_defs

    with build_sensor_context(
        instance=instance, resources=resource_defs(), cursor=cursor, sensor_name=sensor_def.name
    ) as context:
        return sensor_def(context)


def apply(instance: DagsterInstance, result, on_run: Callable | None = None) -> list:
    """Apply a SensorResult (or SkipReason) like the daemon; returns the in-process run results."""
    from pipeline.definitions import defs

    for event in getattr(result, "asset_events", None) or []:
        instance.report_runless_asset_event(event)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    job = defs.resolve_implicit_global_asset_job_def()
    results = []
    for request in getattr(result, "run_requests", None) or []:
        tags = dict(request.tags)
        if request.run_key:  # as the daemon tags a sensor's runs
            tags[names.RUN_KEY_TAG] = request.run_key
        if request.job_name:  # a sensor that targets a job of its own (import_reconciler)
            run = defs.resolve_job_def(request.job_name).execute_in_process(
                instance=instance, run_config=request.run_config, tags=tags, raise_on_error=False
            )
        else:
            run = job.execute_in_process(
                instance=instance,
                run_config=request.run_config,
                tags=tags,
                asset_selection=request.asset_selection,
                raise_on_error=False,
            )
        results.append(run)
        if on_run:
            on_run(run)
    return results


def drain_import_queue(
    instance: DagsterInstance, max_ticks: int = 100, on_run: Callable | None = None, concurrent_runs: bool = False
) -> list:
    """Tick import_queue_sensor and run what it asks for until it asks for nothing.

    With ``concurrent_runs`` the runs execute on a worker thread while the sensor keeps
    receiving, as with the daemon (sensor ticks and launched runs overlap); otherwise each
    tick's runs finish before the next tick.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from pipeline.defs.importer.sensors import import_queue_sensor

    runs: list = []
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagster-run") as pool:
        for _ in range(max_ticks):
            result = tick(instance, import_queue_sensor)
            if not getattr(result, "run_requests", None) and not getattr(result, "dynamic_partitions_requests", None):
                break
            if concurrent_runs:
                pending.append(pool.submit(apply, instance, result, on_run))
            else:
                runs.extend(apply(instance, result, on_run))
        for future in pending:
            runs.extend(future.result())
    return runs
