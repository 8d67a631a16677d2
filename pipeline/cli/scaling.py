"""Capacity: `pipeline scaling status|reconcile|stop-workers` and `pipeline simulate`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings


@cli.command()
@click.option("--policy", type=click.Choice(["queue-depth", "cpu", "both"]), default="both", show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=Path("simulation.png"),
    show_default=True,
    help="Where to write the PNG (queue depth, capacity, cost over a day).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def simulate(policy: str, plot_path: Path, as_json: bool) -> None:
    """Simulate a day of Spark floods: CPU-triggered scaling (min 1) vs queue depth (min 0)."""
    from pipeline.scaling import simulate as sim

    names = ["cpu", "queue-depth"] if policy == "both" else [policy]
    results = [sim.run(name) for name in names]
    sim.plot([trace for trace, _ in results], plot_path)
    table = sim.summaries_as_dict([summary for _, summary in results])
    if as_json:
        click.echo(json.dumps(table if policy == "both" else table[policy], indent=2))
        return
    click.echo(f"{'policy':12} {'drain min (mean/max)':>22} {'machine-min':>12} {'idle machine-min':>17} {'cost $':>8}")
    for row in table.values():
        click.echo(
            f"{row['policy']:12} {row['drain_minutes']:>10} / {row['max_drain_minutes']:<9} "
            f"{row['machine_minutes']:>12} {row['idle_machine_minutes']:>17} {row['cost']:>8}"
        )
    click.echo(f"plot: {plot_path}")


@cli.group()
def scaling() -> None:
    """Queue-depth autoscaling of importer workers (backend: $PIPELINE_CAPACITY_BACKEND)."""


def _controller():
    from pipeline.scaling.config import ScalingConfig, build_controller

    return build_controller(load_settings(), ScalingConfig.from_env())


@scaling.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--decisions", default=10, show_default=True, help="How many recent decisions to show.")
def scaling_status(as_json: bool, decisions: int) -> None:
    """Backlog, desired and actual capacity, and the last decisions with their inputs."""
    from pipeline.scaling.backends import CapacityError
    from pipeline.scaling.controller import recent_decisions

    controller = _controller()
    backlog = controller.backlog()
    try:
        capacity, error = controller.backend.capacity(), None
    except CapacityError as exc:
        capacity, error = None, str(exc)
    recent = recent_decisions(controller.database_url, controller.backend.key, decisions)
    data = {
        "backend": controller.backend.key,
        "policy": asdict(controller.policy),
        "backlog": {**asdict(backlog), "total": backlog.total},
        "capacity": asdict(capacity) if capacity else None,
        "capacity_error": error,
        "decisions": recent,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    p = controller.policy
    click.echo(
        f"backend    {data['backend']}  (target {p.target_per_worker}/worker, [{p.min_capacity}, {p.max_capacity}], "
        f"cooldown {p.scale_in_cooldown_s:.0f}s)"
    )
    click.echo(
        f"backlog    {backlog.total}  (queue visible {backlog.visible}, in flight {backlog.in_flight}, "
        f"import inbox {backlog.inbox}; not counted: backfill partitions {backlog.pending_partitions}, "
        "imported by their runs)"
    )
    if capacity:
        click.echo(f"capacity   desired {capacity.desired}  running {capacity.running}  protected {capacity.protected}")
    else:
        click.secho(f"capacity   unavailable: {error}", fg="red")
    click.echo("last decisions:" if recent else "no decisions yet (the launcher and capacity_sensor make them)")
    for d in recent:
        flag = "" if d["applied"] else click.style(f"  NOT APPLIED: {d['error']}", fg="red")
        click.echo(
            f"  {d['decided_at']:%Y-%m-%d %H:%M:%S}  {d['trigger'][:40]:40}  backlog {d['backlog']:>6}  "
            f"{d['current_capacity']} -> {d['desired']}  {d['reason']}{flag}"
        )


@scaling.command("reconcile")
def scaling_reconcile() -> None:
    """Make one scaling decision now (what capacity_sensor does on its schedule)."""
    record = _controller().reconcile("cli")
    click.echo(json.dumps(record.as_dict(), indent=2))
    sys.exit(0 if record.applied else 1)


@scaling.command("stop-workers")
def scaling_stop_workers() -> None:
    """Stop every local worker process (they finish the object in hand first)."""
    from pipeline.scaling.backends import LocalWorkerPool
    from pipeline.scaling.config import ScalingConfig

    pool = LocalWorkerPool(ScalingConfig.from_env().workers_folder())
    count = len(pool.workers())
    pool.stop_all()
    click.echo(f"stopped {count} local worker(s)")
