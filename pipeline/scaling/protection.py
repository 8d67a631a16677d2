"""Scale-in protection held by a busy worker (``pipeline importer --worker-id``).

While a worker has messages in hand it holds a lease in ``worker_protection`` (the controller
never asks for fewer workers than there are leases) and the backend's native protection (ASG
instance protection, ECS task protection, a marker file for local workers). It lets go when a
poll comes back empty, and on exit. The lease expires by itself if the worker dies.
"""

from __future__ import annotations

import logging

from pipeline.scaling.backends import CapacityBackend
from pipeline.scaling.controller import set_protection

log = logging.getLogger("pipeline.scaling")


class WorkerProtection:
    def __init__(self, database_url: str, backend: CapacityBackend, worker_id: str):
        self.database_url, self.backend, self.worker_id = database_url, backend, worker_id
        self.held = False

    def hold(self) -> None:
        set_protection(self.database_url, self.backend.key, self.worker_id, True)  # renews the lease
        if not self.held:
            self._native(True)
            self.held = True

    def release(self) -> None:
        if self.held:
            self._native(False)
            set_protection(self.database_url, self.backend.key, self.worker_id, False)
            self.held = False

    def _native(self, on: bool) -> None:
        try:
            self.backend.protect(self.worker_id, on)
        except Exception as exc:  # the lease still protects it from our own controller
            log.warning("worker %s: %s protection %s failed: %s", self.worker_id, self.backend.name, on, exc)


def worker_identity() -> str | None:
    """This worker's id in its capacity backend when it runs as an ECS task: the task ARN (from
    the task metadata endpoint), which ECS task protection takes. None elsewhere."""
    import json
    import os
    import urllib.request

    base = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not base:
        return None
    try:
        with urllib.request.urlopen(f"{base}/task", timeout=2) as response:
            return json.loads(response.read()).get("TaskARN")
    except (OSError, ValueError) as exc:
        log.warning("ECS task metadata unavailable (%s): running without task protection", exc)
        return None


def worker_protection(settings, worker_id: str | None) -> WorkerProtection | None:
    """Scale-in protection for the importer worker ``worker_id`` (local id, ECS task ARN, EC2
    instance id) in the configured capacity backend; None for a worker outside any backend."""
    if not worker_id:
        return None
    from pipeline.scaling.config import ScalingConfig, make_backend

    backend = make_backend(ScalingConfig.from_env(), settings)
    log.info("worker %s started (capacity backend %s)", worker_id, backend.name)
    return WorkerProtection(settings.database_url, backend, worker_id)
