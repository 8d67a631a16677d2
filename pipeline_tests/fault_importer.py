"""Test support: an importer that SIGKILLs itself at a chosen point. Run as a child process:

python -m pipeline_tests.fault_importer copy   # after COPY, before COMMIT
python -m pipeline_tests.fault_importer ack    # after COMMIT, before the SQS delete
"""

from __future__ import annotations

import os
import signal
import sys

import psycopg

import pipeline.importer.batch as batch
from pipeline.importer.worker import run_worker
from pipeline.settings import load_settings


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def main(fault: str) -> None:
    if fault == "copy":
        original = psycopg.Transaction.__exit__

        def exit_then_die(self, exc_type, exc, tb):
            if exc_type is None:
                die()
            return original(self, exc_type, exc, tb)

        psycopg.Transaction.__exit__ = exit_then_die
    elif fault == "ack":
        batch.acknowledge = die
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    run_worker(load_settings(), batch=10, drain=True, visibility=2)


if __name__ == "__main__":
    main(sys.argv[1])
