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
