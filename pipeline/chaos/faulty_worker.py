"""A `pipeline importer` that fails on purpose, in its own process only:

    python -m pipeline.chaos.faulty_worker MODE [SECONDS]

MODE:
  clean           no fault
  kill-copy       SIGKILL after COPY, before COMMIT (the load's transaction dies with it)
  kill-ack        SIGKILL after intake's COMMIT, before the SQS delete (the messages come back)
  kill-heartbeat  SIGKILL right after renewing its inbox claims
  slow            no claim heartbeat and a pause before each load: its claims lapse, so another
                  importer takes the same objects at the same time
  late            a pause between fetching an object and its transaction, so a newer write of
                  the key can be loaded meanwhile (the late load must come out ``stale``)

Settings come from the environment like `pipeline importer` (the chaos run points them at its
own queues and bucket, and possibly at a proxy in front of PostgreSQL).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time

import pipeline.importer.batch as batch
import pipeline.importer.intake as intake
import pipeline.importer.load as load
from pipeline import config
from pipeline.importer.worker import run_worker
from pipeline.settings import load_settings

MODES = ("clean", "kill-copy", "kill-ack", "kill-heartbeat", "slow", "late")
log = logging.getLogger("pipeline.chaos")


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _delay_loads(seconds: float) -> None:
    original = batch.load_object

    def slow_load(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    batch.load_object = slow_load


def arm(mode: str, lease_s: float) -> None:
    if mode == "kill-copy":
        original_settle = load.inbox.settle

        def settle_or_die(conn_or_cursor, inbox_id, outcome, ledger_id=None):
            if outcome == "loaded":  # inside the load's transaction, after its COPY
                die()
            return original_settle(conn_or_cursor, inbox_id, outcome, ledger_id)

        load.inbox.settle = settle_or_die
    elif mode == "kill-ack":
        intake.delete = die
    elif mode == "kill-heartbeat":
        original_renew = batch.inbox.renew

        def renew_then_die(*args, **kwargs):
            original_renew(*args, **kwargs)
            die()

        batch.inbox.renew = renew_then_die
        _delay_loads(lease_s / 3 + 1.5)
    elif mode == "slow":

        class NoHeartbeat(batch.ClaimHeartbeat):
            def __enter__(self):
                return self

        batch.ClaimHeartbeat = NoHeartbeat
        _delay_loads(lease_s + 1.5)
    elif mode == "late":
        original_lock = load._lock_key

        def late_lock(cur, version):
            log.warning("late load of s3://%s/%s version=%s", version.bucket, version.key, version.version)
            time.sleep(config.get("PIPELINE_CHAOS_LATE_S"))
            return original_lock(cur, version)

        load._lock_key = late_lock
    elif mode != "clean":
        raise SystemExit(f"unknown mode {mode!r}; one of {', '.join(MODES)}")


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "clean"
    lease_s = config.get("PIPELINE_IMPORT_LEASE_S")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {mode} %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # the chaos run asks a hung worker where it hangs
    arm(mode, lease_s)
    max_seconds = float(argv[1]) if len(argv) > 1 else None
    stats = run_worker(
        load_settings(), batch=5, drain=True, idle_polls=1, max_seconds=max_seconds, worker_id=f"chaos-{mode}"
    )
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
