"""The Dagster half of a chaos run, in its own process: tick import_queue_sensor and execute the
runs it requests, until ``seconds`` have passed. Errors of a tick or run (the database restarted
under it, say) are reported and the loop goes on, as the daemon would."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pipeline.chaos")


def main(seconds: float) -> int:
    from pipeline.local.inprocess import drain_import_queue, local_instance

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s dagster %(levelname)s %(message)s")
    deadline = time.monotonic() + seconds
    instance, runs, errors = None, 0, 0
    while time.monotonic() < deadline:
        try:
            instance = instance or local_instance()
            done = drain_import_queue(instance, max_ticks=5)
            runs += len(done)
            if not done:
                time.sleep(1)
        except Exception as exc:  # keep going, like the daemon
            errors += 1
            log.warning("dagster path error (%s): %s", type(exc).__name__, str(exc)[:300])
            instance = None
            time.sleep(1)
    print(f"dagster runs={runs} errors={errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60))
