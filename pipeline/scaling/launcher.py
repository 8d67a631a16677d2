"""QueueDepthRunLauncher: a RunLauncher that sizes worker capacity from the backlog, then
hands the run to the real launcher (DefaultRunLauncher here, EcsRunLauncher in production).

dagster.yaml::

    run_launcher:
      module: pipeline.scaling.launcher
      class: QueueDepthRunLauncher
      config:
        inner_launcher:            # the launcher that really starts the run
          module: dagster.core.launcher
          class: DefaultRunLauncher
        backend: local             # local | ecs | asg (default: $PIPELINE_CAPACITY_BACKEND)
        scale_in_cooldown_s: 300   # any ScalingPolicy field; default from PIPELINE_SCALING_*

Each launch records one scaling decision (with its inputs) before delegating; the decision is
also written to the run's event log, so the Dagster UI shows why capacity moved. A capacity API
that fails is retried and reported, and the run is launched regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import yaml
from dagster import Field, IntSource, Permissive, Shape, StringSource
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, ResumeRunContext, RunLauncher
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from pipeline.scaling.config import ScalingConfig, build_controller

log = logging.getLogger("pipeline.scaling")

_DEFAULT_INNER = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher", "config": {}}


SIZE_TAGS = ("ecs/cpu", "ecs/memory")  # what EcsRunLauncher reads to size a run's task


def run_stage(tags: Mapping[str, str], asset_keys) -> str | None:
    """A run's stage: its pipeline/stage tag (the sensors set it), else what it materializes (a
    backfill from the UI carries no stage tag)."""
    from pipeline import names

    if names.STAGE_TAG in tags:
        return tags[names.STAGE_TAG]
    paths = {"/".join(key.path) for key in asset_keys}
    if names.ENRICHED_TELEMETRY in paths:
        return "enrich"
    if names.TELEMETRY_EVENTS in paths:
        return "import"
    return None


def size_tags(tags: Mapping[str, str], asset_keys, task_sizes: Mapping[str, Mapping]) -> dict[str, str]:
    """The ecs/cpu and ecs/memory tags a run of this stage gets, those it does not carry already."""
    size = task_sizes.get(run_stage(tags, asset_keys) or "") or {}
    wanted = {"ecs/cpu": size.get("cpu"), "ecs/memory": size.get("memory")}
    return {tag: str(value) for tag, value in wanted.items() if value is not None and tag not in tags}


class QueueDepthRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(
        self, inst_data: ConfigurableClassData | None = None, inner_launcher=None, task_sizes=None, **scaling: Any
    ):
        super().__init__()
        self._inst_data = inst_data
        self._task_sizes = dict(task_sizes or {})
        spec = inner_launcher or _DEFAULT_INNER
        self._inner: RunLauncher = ConfigurableClassData(
            spec["module"], spec["class"], yaml.dump(spec.get("config") or {}, default_flow_style=False)
        ).rehydrate(as_type=RunLauncher)
        self._scaling = {k: v for k, v in scaling.items() if v is not None}
        self._controller = None

    # -- ConfigurableClass ---------------------------------------------------------------------
    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {
            "inner_launcher": Field(
                Shape({"module": str, "class": str, "config": Field(Permissive(), is_required=False)}),
                is_required=False,
                description="The launcher that starts runs (default: DefaultRunLauncher).",
            ),
            "backend": Field(StringSource, is_required=False, description="local | ecs | asg"),
            "ecs_cluster": Field(StringSource, is_required=False),
            "ecs_service": Field(StringSource, is_required=False),
            "asg_name": Field(StringSource, is_required=False),
            "target_per_worker": Field(IntSource, is_required=False),
            "min_capacity": Field(IntSource, is_required=False),
            "max_capacity": Field(IntSource, is_required=False),
            "activation_threshold": Field(IntSource, is_required=False),
            "scale_in_cooldown_s": Field(IntSource, is_required=False),
            "task_sizes": Field(
                Permissive(),
                is_required=False,
                description="Per stage (enrich, import, ...): {cpu, memory} of the run's ECS task, given to every "
                "run of that stage as the ecs/cpu and ecs/memory tags EcsRunLauncher sizes tasks by, unless the "
                "run carries its own (a sensor's runs, a backfill from the UI, a CLI launch alike).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        self._inner.register_instance(instance)

    @property
    def inner(self) -> RunLauncher:
        return self._inner

    # -- scaling --------------------------------------------------------------------------------
    @property
    def scaling_overrides(self) -> dict:
        """This launcher's scaling settings from dagster.yaml (ScalingConfig.for_instance reads them)."""
        return dict(self._scaling)

    def controller(self):
        if self._controller is None:
            from pipeline.settings import load_settings

            self._controller = build_controller(load_settings(), ScalingConfig.from_env(**self.scaling_overrides))
        return self._controller

    def scale(self, trigger: str, run=None):
        """Decide and apply capacity; report the decision on the run. Never raises."""
        try:
            record = self.controller().reconcile(trigger, instance=self._instance)
        except Exception as exc:  # no capacity decision is worth a lost launch
            log.exception("scaling: no decision for %s", trigger)
            message = f"capacity not adjusted ({type(exc).__name__}: {exc}); launching the run anyway"
            record = None
        else:
            message = (
                f"capacity {record.backend}: backlog {record.backlog.total} -> desired {record.desired} "
                f"({record.reason})"
            )
            if not record.applied:
                message += f"; NOT applied after {record.attempts} attempts: {record.error}; launching anyway"
        if run is not None and self.has_instance:
            try:
                self._instance.report_engine_event(message, run, cls=self.__class__)
            except Exception:
                log.exception("scaling: could not report the decision on run %s", run.run_id)
        return record

    # -- RunLauncher ----------------------------------------------------------------------------
    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        sizing = size_tags(run.tags, run.asset_selection or (), self._task_sizes)
        if sizing and self.has_instance:
            self._instance.add_run_tags(run.run_id, sizing)
            run = self._instance.get_run_by_id(run.run_id)
            context = LaunchRunContext(dagster_run=run, workspace=context.workspace)
        self.scale(f"launch {run.run_id}", run)
        self._inner.launch_run(context)

    def terminate(self, run_id: str) -> bool:
        return self._inner.terminate(run_id)

    def dispose(self) -> None:
        self._inner.dispose()

    def join(self, timeout: int = 30) -> None:
        self._inner.join(timeout)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self._inner.supports_check_run_worker_health

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        return self._inner.check_run_worker_health(run)

    def get_run_worker_debug_info(self, run, include_container_logs: bool | None = True) -> str | None:
        return self._inner.get_run_worker_debug_info(run, include_container_logs)

    @property
    def supports_resume_run(self) -> bool:
        return self._inner.supports_resume_run

    def resume_run(self, context: ResumeRunContext) -> None:
        self._inner.resume_run(context)
