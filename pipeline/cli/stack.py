"""The local stack and the configuration: `pipeline up`, `down`, `status`, `config`, `dev`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import click

from pipeline import config
from pipeline.cli.app import cli
from pipeline.local.dotenv import dagster_home
from pipeline.project import REPO_ROOT
from pipeline.settings import load_settings, pipeline_home


def _print_status(st) -> None:
    ok = click.style("ok", fg="green")
    bad = click.style("DOWN", fg="red")
    click.echo(f"state folder   {st.home}")
    click.echo(f"AWS endpoint   {st.endpoint or 'real AWS'}  [{ok if st.moto_running else bad}]")
    click.echo(f"PostgreSQL     {st.database}  [{ok if st.database_reachable else bad}]")
    if st.database_error:
        click.echo(f"               {st.database_error}")
    for bucket, count in st.buckets.items():
        click.echo(f"bucket         s3://{bucket}  objects={count if count is not None else '?'}")
    click.echo(f"import queue   visible={st.queue_visible} in_flight={st.queue_in_flight}")
    click.echo(f"dead letters   {st.dead_letter}")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def config_command(as_json: bool) -> None:
    """Every knob (pipeline/config.py): its value, default and source. Exit 2 on a bad value."""
    rows = config.effective()
    bad = [r["error"] for r in rows if r["error"]]
    if as_json:
        click.echo(json.dumps({"ok": not bad, "errors": bad, "knobs": rows}, default=str))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            value = "" if r["value"] is None else r["value"]
            mark = "  <- " + r["error"] if r["error"] else ""
            click.echo(f"{r['name']:<{width}}  {r['stage']:<9} {r['source']:<11} {value}{mark}")
    if bad:
        raise SystemExit(2)


@cli.command()
def up() -> None:
    """Start the local stack (moto + PostgreSQL), provision it from deploy/, migrate the warehouse."""
    from pipeline.local import stack
    from pipeline.local.dotenv import write_dotenv

    settings = stack.up(
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )
    _print_status(stack.status(settings))
    dotenv = write_dotenv(settings, REPO_ROOT)
    if dotenv:
        click.echo(f"dagster env    {dotenv} (for `dagster dev`, `dagster definitions validate -w workspace.yaml`)")


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete the state folder (embedded database included).")
def down(purge: bool) -> None:
    """Stop the local stack started by `pipeline up`."""
    from pipeline.local import stack
    from pipeline.local.dotenv import remove_dotenv

    stopped = stack.down(purge=purge)
    remove_dotenv(REPO_ROOT)
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Endpoints, buckets, queue depth, dead letters, database reachability."""
    from pipeline.local import stack

    st = stack.status(load_settings())
    if as_json:
        click.echo(json.dumps({**asdict(st), "healthy": st.healthy}, indent=2))
    else:
        _print_status(st)
    sys.exit(0 if st.healthy else 1)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
def dev(dagster_args: tuple[str, ...]) -> None:
    """Run `dagster dev` on the local stack (UI on http://127.0.0.1:3000)."""
    settings = load_settings()
    env = {
        **os.environ,
        **settings.process_env(),
        "DAGSTER_HOME": str(dagster_home()),
        "PIPELINE_HOME": str(pipeline_home()),
    }
    if not config.is_set("PIPELINE_FIRST_DAY"):
        from pipeline.local.calendar import dev_first_day

        first, why = dev_first_day(settings.database_url)
        env["PIPELINE_FIRST_DAY"] = first.isoformat()
        click.echo(
            f"day partitions from {first} ({why}); set PIPELINE_FIRST_DAY to choose, "
            "or restart after collecting older reports"
        )
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), *dagster_args]
    click.echo(f"DAGSTER_HOME={env['DAGSTER_HOME']} {' '.join(cmd)}")
    raise SystemExit(subprocess.call(cmd, env=env, cwd=REPO_ROOT))
