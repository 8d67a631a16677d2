"""Capacity backends: where importer workers come from (DESIGN.md section 6).

One interface, three backends:

* ``local``: real ``pipeline importer`` worker processes on this machine, supervised through
  pid files in ``$PIPELINE_HOME/workers``. Scale-in sends SIGTERM (the worker finishes the
  object in hand and gives back the messages it has not started) and never to a protected
  (busy) worker.
* ``ecs``: the desired count of the ECS service that runs the workers; busy workers protect
  their own task (ECS task scale-in protection).
* ``asg``: the desired capacity of the EC2 auto-scaling group the workers (and the run tasks of
  ``EcsRunLauncher``) are placed on; busy workers protect their own instance.

The controller (``pipeline.scaling.controller``) decides; a backend only observes and applies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("pipeline.scaling")

BACKENDS = ("local", "ecs", "asg")


class CapacityError(RuntimeError):
    """The capacity API refused or did not answer; the message names the backend and the call."""


@dataclass(frozen=True)
class Capacity:
    desired: int  # what the backend was last asked for
    running: int  # workers that are up and not on their way out
    protected: int  # of those, protected from scale-in


class CapacityBackend(Protocol):
    name: str  # local | ecs | asg
    key: str  # this capacity pool: the key of its scaling state, decisions and protection leases

    def capacity(self) -> Capacity: ...

    def set_desired(self, desired: int, protected: frozenset[str] = frozenset()) -> None: ...

    def protect(self, worker_id: str, protected: bool) -> None: ...


def _aws_call(backend: str, what: str, fn, **kwargs):
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise CapacityError(f"{backend}: {what} failed: {exc}") from exc


class EcsServiceBackend:
    """Workers as the tasks of one ECS service; capacity is the service's desired count."""

    name = "ecs"

    def __init__(self, ecs, cluster: str, service: str):
        self.ecs, self.cluster, self.service = ecs, cluster, service
        self.key = f"ecs:{cluster}/{service}"

    def _service(self) -> dict:
        found = _aws_call(
            self.name, "DescribeServices", self.ecs.describe_services, cluster=self.cluster, services=[self.service]
        )
        services = [s for s in found.get("services", []) if s.get("status") != "INACTIVE"]
        if not services:
            raise CapacityError(
                f"ecs: service {self.service!r} not found in cluster {self.cluster!r}; "
                "check PIPELINE_ECS_CLUSTER / PIPELINE_ECS_SERVICE (deploy/cloudformation/compute.yaml creates it)."
            )
        return services[0]

    def capacity(self) -> Capacity:
        service = self._service()
        # Protection is per task (UpdateTaskProtection, by the worker itself); the controller
        # counts the workers' leases, so no per-task listing here (and no ListTasks permission).
        return Capacity(int(service["desiredCount"]), int(service.get("runningCount", 0)), 0)

    def set_desired(self, desired: int, protected: frozenset[str] = frozenset()) -> None:
        # ECS never stops a task with scale-in protection; the controller also keeps the desired
        # count at or above the number of protected workers.
        self._service()  # a missing service is a configuration error: say which one
        _aws_call(
            self.name,
            "UpdateService",
            self.ecs.update_service,
            cluster=self.cluster,
            service=self.service,
            desiredCount=desired,
        )

    def protect(self, worker_id: str, protected: bool) -> None:
        kwargs = {"cluster": self.cluster, "tasks": [worker_id], "protectionEnabled": protected}
        if protected:
            kwargs["expiresInMinutes"] = 60
        _aws_call(self.name, "UpdateTaskProtection", self.ecs.update_task_protection, **kwargs)


class AutoScalingGroupBackend:
    """Workers as the instances of one EC2 auto-scaling group (min size 0)."""

    name = "asg"

    def __init__(self, autoscaling, group: str):
        self.autoscaling, self.group = autoscaling, group
        self.key = f"asg:{group}"

    def _group(self) -> dict:
        found = _aws_call(
            self.name,
            "DescribeAutoScalingGroups",
            self.autoscaling.describe_auto_scaling_groups,
            AutoScalingGroupNames=[self.group],
        )["AutoScalingGroups"]
        if not found:
            raise CapacityError(
                f"asg: auto-scaling group {self.group!r} not found; check PIPELINE_ASG_NAME "
                "(deploy/cloudformation/compute.yaml creates it)."
            )
        return found[0]

    def capacity(self) -> Capacity:
        group = self._group()
        live = [i for i in group.get("Instances", []) if i.get("LifecycleState", "InService") == "InService"]
        protected = sum(1 for i in live if i.get("ProtectedFromScaleIn"))
        return Capacity(int(group["DesiredCapacity"]), len(live), protected)

    def set_desired(self, desired: int, protected: frozenset[str] = frozenset()) -> None:
        # The group terminates only unprotected instances when the desired capacity drops.
        self._group()  # a missing group is a configuration error: say which one
        _aws_call(
            self.name,
            "SetDesiredCapacity",
            self.autoscaling.set_desired_capacity,
            AutoScalingGroupName=self.group,
            DesiredCapacity=desired,
            HonorCooldown=False,
        )

    def protect(self, worker_id: str, protected: bool) -> None:
        _aws_call(
            self.name,
            "SetInstanceProtection",
            self.autoscaling.set_instance_protection,
            AutoScalingGroupName=self.group,
            InstanceIds=[worker_id],
            ProtectedFromScaleIn=protected,
        )


class LocalWorkerPool:
    """Real ``pipeline importer`` processes on this machine, one pid file per worker."""

    name = "local"

    def __init__(self, folder: Path, env: dict[str, str] | None = None, command: list[str] | None = None):
        self.folder = Path(folder).absolute()
        self.key = f"local:{self.folder}"
        self.env = env
        self.command = command or [sys.executable, "-m", "pipeline", "importer"]
        self._children: dict[int, subprocess.Popen] = {}

    # -- observation -------------------------------------------------------------------------
    def _pidfiles(self) -> list[Path]:
        return sorted(self.folder.glob("*.pid")) if self.folder.exists() else []

    def _alive(self, pid: int) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in {"Z", "X"}

    def workers(self) -> list[tuple[str, int, bool]]:
        """(worker id, pid, stopping) of live workers; forgets the ones that have exited."""
        live = []
        for path in self._pidfiles():
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if not self._alive(pid):
                path.unlink(missing_ok=True)
                path.with_suffix(".stopping").unlink(missing_ok=True)
                continue
            live.append((path.stem, pid, path.with_suffix(".stopping").exists()))
        return live

    def capacity(self) -> Capacity:
        desired_file = self.folder / "desired"
        desired = int(desired_file.read_text()) if desired_file.exists() else 0
        running = [w for w in self.workers() if not w[2]]
        protected = sum(1 for w in running if (self.folder / f"{w[0]}.busy").exists())
        return Capacity(desired, len(running), protected)

    # -- actions -----------------------------------------------------------------------------
    def set_desired(self, desired: int, protected: frozenset[str] = frozenset()) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "desired").write_text(str(desired))
        running = [w for w in self.workers() if not w[2]]
        for _ in range(desired - len(running)):
            self._spawn()
        excess = len(running) - desired
        if excess <= 0:
            return
        busy = set(protected) | {w[0] for w in running if (self.folder / f"{w[0]}.busy").exists()}
        # newest first, never a busy worker: like an ASG with instance protection
        for worker_id, pid, _ in sorted(running, key=lambda w: w[0], reverse=True):
            if excess <= 0:
                break
            if worker_id in busy:
                continue
            (self.folder / f"{worker_id}.stopping").touch()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            excess -= 1

    def _spawn(self) -> str:
        worker_id = f"local-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
        env = dict(self.env if self.env is not None else os.environ)
        env.update(PIPELINE_CAPACITY_BACKEND="local", PIPELINE_WORKER_ID=worker_id)
        env.setdefault("PIPELINE_WORKERS_DIR", str(self.folder))
        logfile = open(self.folder / f"{worker_id}.log", "ab")  # noqa: SIM115 - the child owns it
        child = subprocess.Popen(
            [*self.command, "--worker-id", worker_id],
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the daemon that scaled it out; stopped by SIGTERM
        )
        logfile.close()
        self._children[child.pid] = child
        (self.folder / f"{worker_id}.pid").write_text(str(child.pid))
        log.info("local: started worker %s pid=%d", worker_id, child.pid)
        return worker_id

    def protect(self, worker_id: str, protected: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / f"{worker_id}.busy"
        if protected:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (busy ones too) and wait for them: for `pipeline down` and tests."""
        (self.folder / "desired").write_text("0") if self.folder.exists() else None
        workers = self.workers()
        for _, pid, _ in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.workers():
            time.sleep(0.2)
        for _, pid, _ in self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
