"""The Dagster half of a chaos run, in its own process: tick import_queue_sensor and execute the
runs it requests, until ``seconds`` have passed. Errors of a tick or run (the database restarted
under it, say) are reported and the loop goes on, as the daemon would.

``run_queue_delay``: the runs of every other planning tick (the first included) are held queued
for ``delay`` seconds (longer than the queue's visibility timeout) while the sensor keeps
ticking, as when Dagster's run queue or capacity starting from zero keeps a run waiting.
Nothing may be redelivered, dead-lettered or planned twice because of it.

    python -m pipeline.chaos.dagster_path SECONDS [DELAY_SECONDS]
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("pipeline.chaos")


def main(seconds: float, delay: float = 0.0) -> int:
    from pipeline.defs.importer.sensors import import_queue_sensor
    from pipeline.local.inprocess import apply, local_instance, tick

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s dagster %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # the chaos run ends this path: report first
    deadline = time.monotonic() + seconds
    instance, runs, errors, delayed, ticks, planned = None, 0, 0, 0, 0, 0
    lock = threading.Lock()

    def execute(result, hold: float) -> None:
        nonlocal runs, errors
        time.sleep(hold)
        try:
            done = apply(instance, result)
            with lock:
                runs += len(done)
        except Exception as exc:
            with lock:
                errors += 1
            log.warning("dagster run error (%s): %s", type(exc).__name__, str(exc)[:300])

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="dagster-run") as pool:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                instance = instance or local_instance()
                result = tick(instance, import_queue_sensor)
                ticks += 1
                requests = getattr(result, "run_requests", None) or []
                if not requests:
                    time.sleep(1)
                    continue
                planned += 1
                hold = delay if delay and planned % 2 == 1 else 0.0
                if hold:
                    delayed += len(requests)
                    print(f"delayed_runs={delayed}", flush=True)
                pool.submit(execute, result, hold)
                time.sleep(0.5)
            except Exception as exc:  # keep going, like the daemon
                errors += 1
                log.warning("dagster path error (%s): %s", type(exc).__name__, str(exc)[:300])
                instance = None
                time.sleep(1)
    print(f"dagster runs={runs} errors={errors} ticks={ticks} delayed_runs={delayed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60, float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
