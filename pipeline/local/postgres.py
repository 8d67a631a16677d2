"""PostgreSQL for the local stack: the server in ``DATABASE_URL``, or an embedded one.

The embedded server runs the PostgreSQL binaries shipped by the ``pgserver`` wheel (so a machine
without PostgreSQL still works), or the system's ``pg_ctl``/``initdb`` when the wheel has none.
It lives in ``$PIPELINE_HOME/postgres``, listens on 127.0.0.1 only, on a free port, and keeps
running after ``pipeline up`` returns until ``pipeline down``. PostgreSQL refuses to run as
root, so as root it runs as a dedicated system user.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from pipeline.local.ports import free_port
from pipeline.local.processes import pid_alive
from pipeline.settings import ConfigurationError

log = logging.getLogger(__name__)

EMBEDDED_USER = "pipelinepg"
DEFAULT_PORT = 54329
WAREHOUSE_DB = "warehouse"
DAGSTER_DB = "dagster"


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def check_reachable(url: str, what: str = "DATABASE_URL") -> None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"{what}={redact_url(url)} is set but PostgreSQL there cannot be used: "
            f"{str(exc).strip()}. Check that the server runs, the host, port, database name and "
            f"credentials; or unset {what} to let `pipeline up` start its embedded server."
        ) from None


def sibling_database_url(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def ensure_database(server_url: str, dbname: str) -> None:
    """CREATE DATABASE ``dbname`` on the server of ``server_url`` unless it exists."""
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def _pgserver():
    """The pgserver package, imported quietly (it warns about XDG_RUNTIME_DIR on import)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver._commands
        import pgserver.utils
    return pgserver


def _binaries() -> Path:
    try:
        POSTGRES_BIN_PATH = _pgserver()._commands.POSTGRES_BIN_PATH  # noqa: N806

        if (Path(POSTGRES_BIN_PATH) / "pg_ctl").exists():
            return Path(POSTGRES_BIN_PATH)
    except ImportError:
        pass
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise ConfigurationError(
        "No PostgreSQL binaries found for the embedded server: install the project "
        "(`pip install -e .` brings the pgserver wheel) or PostgreSQL's server package, "
        "or set DATABASE_URL to a running server."
    )


@dataclass
class EmbeddedPostgres:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    # -- running as a non-root user ---------------------------------------------------------
    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        entry = _pgserver().utils.ensure_user_exists(EMBEDDED_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _prepare_permissions(self, bindir: Path) -> None:
        if os.geteuid() != 0:
            return
        utils = _pgserver().utils
        ensure_folder_permissions, ensure_prefix_permissions = (
            utils.ensure_folder_permissions,
            utils.ensure_prefix_permissions,
        )
        entry = pwd.getpwnam(EMBEDDED_USER)
        ensure_prefix_permissions(self.root)
        ensure_prefix_permissions(bindir)
        ensure_folder_permissions(bindir, 0o755)
        if (bindir.parent / "lib").exists():
            ensure_folder_permissions(bindir.parent / "lib", 0o644)
        for path in [self.root, *self.root.rglob("*")]:
            os.lchown(path, entry.pw_uid, entry.pw_gid)

    def _pg(self, bindir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=check,
            env=env,
            cwd="/",
            **self._run_as(),
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if pid > 0 else None  # a negative pid marks a single-user backend (initdb), not a server

    def running_port(self) -> int | None:
        pid = self.postmaster_pid()
        if not pid_alive(pid):
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (ValueError, IndexError):
            return None

    def start(self, preferred_port: int | None = None) -> int:
        """Initialise (once) and start the server; return its port. Harmless when running."""
        port = self.running_port()
        if port:
            return port
        bindir = _binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        self._run_as()  # creates the system user when running as root
        self._prepare_permissions(bindir)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)  # a half-made folder from an interrupted initdb
            self._pg(
                bindir,
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# pipeline embedded server\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = ''\n"
                    "max_connections = 200\n"
                    "shared_buffers = 256MB\n"
                )
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and not pid_alive(self.postmaster_pid()):
            stale.unlink()  # left by a crashed server; PostgreSQL would refuse to start
        port = free_port(preferred_port or DEFAULT_PORT)
        self._prepare_permissions(bindir)
        result = self._pg(
            bindir,
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port}",
            "start",
            check=False,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ConfigurationError(
                f"The embedded PostgreSQL in {self.data_dir} did not start: "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )
        return port

    def stop(self) -> bool:
        if not pid_alive(self.postmaster_pid()):
            return False
        bindir = _binaries()
        self._pg(bindir, "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
        return True

    def url(self, port: int, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{dbname}"


def prepare_databases(
    home: Path,
    database_url: str | None,
    dagster_database_url: str | None,
    preferred_port: int | None = None,
) -> tuple[str, str, EmbeddedPostgres | None]:
    """Return (warehouse_url, dagster_url, embedded_or_None), starting the embedded server if needed."""
    if database_url:
        check_reachable(database_url)
        if not dagster_database_url:
            dbname = urlsplit(database_url).path.lstrip("/") or "postgres"
            dagster_database_url = sibling_database_url(database_url, f"{dbname}_dagster")
            try:
                ensure_database(database_url, f"{dbname}_dagster")
            except psycopg.Error as exc:
                raise ConfigurationError(
                    f"Could not create the Dagster database {dbname}_dagster next to "
                    f"DATABASE_URL={redact_url(database_url)}: {exc}. Create it, or set "
                    "DAGSTER_DATABASE_URL to a database Dagster may use."
                ) from None
        check_reachable(dagster_database_url, "DAGSTER_DATABASE_URL")
        return database_url, dagster_database_url, None
    embedded = EmbeddedPostgres(home / "postgres")
    port = embedded.start(preferred_port)
    admin = embedded.url(port, "postgres")
    ensure_database(admin, WAREHOUSE_DB)
    ensure_database(admin, DAGSTER_DB)
    return embedded.url(port, WAREHOUSE_DB), embedded.url(port, DAGSTER_DB), embedded
