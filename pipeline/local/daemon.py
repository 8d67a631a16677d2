"""`dagster-daemon` as deployed, for a while: the shipped dagster.yaml (queued run coordinator,
QueueDepthRunLauncher around the default launcher, each run its own process), a scratch Dagster
database beside the warehouse, one code location. `pipeline bench import` (W2, W3) and the
launcher's tests run the daemon through this; `pipeline.local.inprocess` is its in-process twin
(the same sensors ticked and their runs executed in this process)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from pipeline.local.postgres import ensure_database, sibling_database_url
from pipeline.names import IMPORT_SENSOR
from pipeline.project import REPO_ROOT
from pipeline.settings import Settings, dagster_sqlalchemy_url

IMPORT_LOCATION = "pipeline.locations.import_path"  # the import path only: no Spark for raw objects


@dataclass
class Daemon:
    process: subprocess.Popen
    home: Path
    dagster_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def workers(self) -> Path:
        """Pid files of the local importer workers its launcher starts."""
        return Path(self.env["PIPELINE_WORKERS_DIR"])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def check(self) -> None:
        """Raise with the end of its log if the daemon has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited: {self.log_tail()}")

    def query(self, statement: str) -> tuple:
        """One row from the daemon's Dagster database (a literal statement: no parameters)."""
        with psycopg.connect(self.dagster_url) as conn:
            return conn.execute(statement).fetchone()

    def sensor_ticks(self, sensor: str = IMPORT_SENSOR) -> int:
        """Ticks of ``sensor`` so far (0 while the storage is not created yet)."""
        try:
            return self.query(f"SELECT count(*) FROM job_ticks WHERE type = 'SENSOR' AND tick_body LIKE '%{sensor}%'")[
                0
            ]
        except psycopg.errors.UndefinedTable:
            return 0


@contextmanager
def running_daemon(
    settings: Settings, env: Mapping[str, str] | None = None, location: str = IMPORT_LOCATION
) -> Iterator[Daemon]:
    """The daemon on ``settings``' stack with ``env`` over it (scaling knobs, a private queue),
    stopped with its local workers, its folder and its Dagster database at the end."""
    from pipeline.scaling.backends import LocalWorkerPool

    name = f"dagster_scratch_{uuid.uuid4().hex[:8]}"
    ensure_database(settings.database_url, name)
    dagster_url = sibling_database_url(settings.database_url, name)
    home = Path(tempfile.mkdtemp(prefix="dagster-daemon-"))
    home.chmod(0o755)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    workspace = home / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_module:\n      module_name: {location}\n      working_directory: {REPO_ROOT}\n"
    )
    full_env = {
        **os.environ,
        **settings.process_env(),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DATABASE_URL": dagster_sqlalchemy_url(dagster_url),
        "PIPELINE_WORKERS_DIR": str(home / "workers"),
        **(env or {}),
    }
    log_path = home / "daemon.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            env=full_env,
            # not the checkout: Dagster reads a .env in its working directory, and the one
            # `pipeline up` leaves there names the developer's stack, not this one
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(process, home, dagster_url, log_path, full_env)
    try:
        yield daemon
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        LocalWorkerPool(daemon.workers).stop_all()
        shutil.rmtree(home, ignore_errors=True)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
