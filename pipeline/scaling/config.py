"""Scaling configuration, one loader for every reader: the environment (``PIPELINE_CAPACITY_*``,
``PIPELINE_ECS_*``, ``PIPELINE_ASG_NAME``, ``PIPELINE_SCALING_*``: pipeline/config.py), then the
run launcher's own config in dagster.yaml over it. The launcher, the capacity sensor and the CLI
all call :meth:`ScalingConfig.for_instance` (or ``from_env`` where there is no instance), so they
decide with the same policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from pipeline import config
from pipeline.scaling.backends import (
    BACKENDS,
    AutoScalingGroupBackend,
    CapacityBackend,
    EcsServiceBackend,
    LocalWorkerPool,
)
from pipeline.scaling.policy import ScalingPolicy
from pipeline.settings import ConfigurationError, Settings, pipeline_home

LOCAL_MAX_WORKERS = 4

_POLICY_ENV = {
    "PIPELINE_SCALING_TARGET_PER_WORKER": "target_per_worker",
    "PIPELINE_SCALING_MIN": "min_capacity",
    "PIPELINE_SCALING_MAX": "max_capacity",
    "PIPELINE_SCALING_ACTIVATION": "activation_threshold",
    "PIPELINE_SCALING_COOLDOWN_S": "scale_in_cooldown_s",
    "PIPELINE_SCALING_STEP": "scale_in_step",
}


@dataclass(frozen=True)
class ScalingConfig:
    backend: str = "local"
    ecs_cluster: str | None = None
    ecs_service: str | None = None
    asg_name: str | None = None
    workers_dir: str | None = None
    policy: ScalingPolicy = field(default_factory=ScalingPolicy)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"capacity backend {self.backend!r} is unknown: use one of {', '.join(BACKENDS)} "
                "(PIPELINE_CAPACITY_BACKEND, or run_launcher.config.backend in dagster.yaml)."
            )

    @classmethod
    def from_env(cls, **overrides) -> ScalingConfig:
        policy = ScalingPolicy()
        for var, name in _POLICY_ENV.items():
            value = config.get(var)
            if value is not None:
                policy = replace(policy, **{name: value})
        values = {
            "backend": config.get("PIPELINE_CAPACITY_BACKEND"),
            "ecs_cluster": config.get("PIPELINE_ECS_CLUSTER"),
            "ecs_service": config.get("PIPELINE_ECS_SERVICE"),
            "asg_name": config.get("PIPELINE_ASG_NAME"),
            "workers_dir": config.get("PIPELINE_WORKERS_DIR"),
            "policy": policy,
        }
        if values["backend"] == "local" and config.get("PIPELINE_SCALING_MAX") is None:
            values["policy"] = replace(policy, max_capacity=LOCAL_MAX_WORKERS)  # processes share this machine
        known = {f.name for f in fields(cls)}
        policy_fields = {f.name for f in fields(ScalingPolicy)}
        policy_overrides = {k: v for k, v in overrides.items() if k in policy_fields and v is not None}
        if policy_overrides:
            values["policy"] = replace(values["policy"], **policy_overrides)
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        return cls(**values)

    @classmethod
    def for_instance(cls, instance=None) -> ScalingConfig:
        """What the instance's run launcher decides with: the environment, then the launcher's
        config in dagster.yaml over it (a launcher that is not ours adds nothing)."""
        launcher = instance.run_launcher if instance is not None else None
        return cls.from_env(**dict(getattr(launcher, "scaling_overrides", None) or {}))

    def workers_folder(self) -> Path:
        return Path(self.workers_dir) if self.workers_dir else pipeline_home() / "workers"


def make_backend(config: ScalingConfig, settings: Settings) -> CapacityBackend:
    from pipeline.aws import client

    if config.backend == "ecs":
        if not (config.ecs_cluster and config.ecs_service):
            raise ConfigurationError("capacity backend ecs needs PIPELINE_ECS_CLUSTER and PIPELINE_ECS_SERVICE.")
        return EcsServiceBackend(client(settings, "ecs"), config.ecs_cluster, config.ecs_service)
    if config.backend == "asg":
        if not config.asg_name:
            raise ConfigurationError("capacity backend asg needs PIPELINE_ASG_NAME.")
        return AutoScalingGroupBackend(client(settings, "autoscaling"), config.asg_name)
    env = dict(os.environ)
    env.update(settings.process_env())
    env.setdefault("PIPELINE_HOME", str(pipeline_home()))
    return LocalWorkerPool(config.workers_folder(), env=env)


def build_controller(settings: Settings, config: ScalingConfig | None = None):
    from pipeline.aws import client
    from pipeline.scaling.controller import CapacityController

    config = config or ScalingConfig.from_env()
    if not settings.database_url or not settings.queue_url:
        raise ConfigurationError("scaling needs the warehouse (DATABASE_URL) and the import queue URL.")
    return CapacityController(
        make_backend(config, settings),
        config.policy,
        settings.database_url,
        client(settings, "sqs"),
        settings.queue_url,
    )
