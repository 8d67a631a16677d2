"""The `.env` that `pipeline up` leaves in the project root, so that Dagster's own commands work
there as a Dagster user expects: `dagster dev`, `dagster definitions validate -w workspace.yaml`,
`dagster asset materialize ...`. Dagster reads a `.env` in its working directory before it looks
for DAGSTER_HOME; this one names the local stack (endpoints, buckets, queues, DSNs with the
psycopg2 scheme dagster-postgres needs) and a DAGSTER_HOME holding the project's dagster.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.project import REPO_ROOT
from pipeline.settings import Settings, pipeline_home

MARKER = "# written by `pipeline up` for Dagster's own commands; `pipeline down` removes it"


def dagster_home(project: Path = REPO_ROOT, home: Path | None = None) -> Path:
    """$PIPELINE_HOME/dagster holding the project's dagster.yaml (storage in PostgreSQL)."""
    folder = (home or pipeline_home()) / "dagster"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project / "dagster.yaml", folder / "dagster.yaml")
    return folder


def dotenv_lines(settings: Settings, project: Path, home: Path | None = None) -> list[str]:
    home = home or pipeline_home()
    values = {
        **settings.process_env(),
        "PIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home(project, home)),
    }
    return [MARKER, *(f"{name}={value}" for name, value in sorted(values.items()))]


def write_dotenv(settings: Settings, project: Path, home: Path | None = None) -> Path | None:
    """Write ``project``/.env for the stack; None when ``project`` is not a checkout of this
    project (no workspace.yaml there), or holds a .env of someone else's (left alone)."""
    if not (project / "workspace.yaml").exists():
        return None
    path = project / ".env"
    if path.exists() and not path.read_text().startswith(MARKER):
        return None
    path.write_text("\n".join(dotenv_lines(settings, project, home)) + "\n")
    path.chmod(0o600)  # it may hold a database password
    return path


def remove_dotenv(project: Path) -> bool:
    path = project / ".env"
    if path.exists() and path.read_text().startswith(MARKER):
        path.unlink()
        return True
    return False
