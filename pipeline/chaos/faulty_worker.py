"""A `pipeline importer` that fails on purpose, in its own process only:

    python -m pipeline.chaos.faulty_worker MODE

MODE: clean | kill-copy (SIGKILL after COPY, before COMMIT) | kill-ack (after COMMIT, before the
SQS delete) | kill-heartbeat (SIGKILL right after a visibility heartbeat) | slow (no heartbeat and
a pause before each load: its messages' visibility runs out, so another importer takes the same
object at the same time).

Settings come from the environment like `pipeline importer` (the chaos run points them at its
own queues, and possibly at a connection-resetting proxy in front of PostgreSQL).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time

import psycopg

import pipeline.importer.batch as batch
import pipeline.importer.queue as queue
from pipeline.importer.worker import run_worker
from pipeline.settings import load_settings

MODES = ("clean", "kill-copy", "kill-ack", "kill-heartbeat", "slow")


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _delay_loads(seconds: float) -> None:
    original = batch.load_object

    def slow_load(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    batch.load_object = slow_load


def arm(mode: str, visibility: int) -> None:
    if mode == "kill-copy":
        original = psycopg.Transaction.__exit__

        def exit_then_die(self, exc_type, exc, tb):
            if exc_type is None:
                die()
            return original(self, exc_type, exc, tb)

        psycopg.Transaction.__exit__ = exit_then_die
    elif mode == "kill-ack":
        batch.acknowledge = die
    elif mode == "kill-heartbeat":
        original_batch = queue.VisibilityHeartbeat._run

        def beat_then_die(self):
            self.interval = 0.5
            time.sleep(0.6)
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": self.visibility}
                    for i, h in enumerate(self.handles[:10])
                ],
            )
            die()
            original_batch(self)

        queue.VisibilityHeartbeat._run = beat_then_die
        _delay_loads(1.5)
    elif mode == "slow":

        class NoHeartbeat(queue.VisibilityHeartbeat):
            def __enter__(self):
                return self

        batch.VisibilityHeartbeat = NoHeartbeat
        _delay_loads(visibility + 1.5)
    elif mode != "clean":
        raise SystemExit(f"unknown mode {mode!r}; one of {', '.join(MODES)}")


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "clean"
    visibility = int(os.environ.get("PIPELINE_CHAOS_VISIBILITY", "5"))
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {mode} %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # the chaos run asks a hung worker where it hangs
    arm(mode, visibility)
    max_seconds = float(argv[1]) if len(argv) > 1 else None
    stats = run_worker(
        load_settings(), batch=5, drain=True, idle_polls=1, visibility=visibility, max_seconds=max_seconds
    )
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
