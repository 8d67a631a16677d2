"""``pipeline simulate``: the original system's scenario, as a discrete-event simulation.

A Spark job floods the import queue a few times a day; importing is IO-bound (a busy importer
uses little CPU). Two ways to size the importer fleet:

* ``cpu``: add a machine when average CPU > 40 % for 5 minutes, remove one when < 20 % for
  15 minutes, never fewer than one machine (the usual auto-scaling-group setting);
* ``queue-depth``: ``pipeline.scaling.policy`` (backlog per worker, down to zero).

Machines take ``boot_s`` to start working. The simulation reports drain time after each flood,
machine-minutes and idle machine-minutes, and draws queue depth, capacity and cost over a day.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.scaling.policy import ScalingPolicy, ScalingState, decide


@dataclass(frozen=True)
class Scenario:
    hours: float = 24.0
    step_s: float = 10.0
    floods_at_h: tuple[float, ...] = (2.0, 8.0, 14.0, 20.0)
    flood_objects: int = 20_000  # enriched objects one Spark run publishes
    flood_minutes: float = 10.0  # ... over this long
    trickle_per_min: float = 1.0
    objects_per_worker_s: float = 2.0  # IO-bound: one importer's rate
    busy_cpu: float = 0.30  # CPU share of a busy importer (waiting on S3 and PostgreSQL)
    boot_s: float = 120.0
    max_machines: int = 20
    machine_cost_per_h: float = 0.20


@dataclass
class Trace:
    policy: str
    t_min: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    capacity: list[int] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    policy: str
    drain_minutes: float  # mean, over floods, of minutes from flood start until the backlog is 0
    max_drain_minutes: float
    machine_minutes: float
    idle_machine_minutes: float
    cost: float


def _arrivals(s: Scenario, t: float) -> float:
    per_step = s.trickle_per_min * s.step_s / 60
    for start in s.floods_at_h:
        begin = start * 3600
        if begin <= t < begin + s.flood_minutes * 60:
            per_step += s.flood_objects * s.step_s / (s.flood_minutes * 60)
    return per_step


def run(policy_name: str, s: Scenario = Scenario(), policy: ScalingPolicy | None = None) -> tuple[Trace, Summary]:
    # 600 objects per worker (five minutes of one importer's work); an activation threshold of 20
    # lets the trickle between floods wait for a machine instead of keeping one up all day.
    policy = policy or ScalingPolicy(
        target_per_worker=600, max_capacity=s.max_machines, activation_threshold=20, scale_in_cooldown_s=300
    )
    trace = Trace(policy_name)
    backlog = 0.0
    machines: list[float] = [] if policy_name == "queue-depth" else [0.0]  # boot-complete times
    state = ScalingState()
    cpu_high_since = cpu_low_since = None
    cost = machine_s = idle_s = 0.0
    drains: list[float] = []
    flood_open: float | None = None
    t = 0.0
    while t < s.hours * 3600:
        backlog += _arrivals(s, t)
        if any(abs(t - h * 3600) < s.step_s / 2 for h in s.floods_at_h) and flood_open is None:
            flood_open = t
        working = [m for m in machines if m <= t]
        done = min(backlog, len(working) * s.objects_per_worker_s * s.step_s)
        backlog -= done
        busy_share = done / (len(working) * s.objects_per_worker_s * s.step_s) if working else 0.0
        cpu = busy_share * s.busy_cpu
        if flood_open is not None and backlog < 1:
            drains.append((t - flood_open) / 60)
            flood_open = None
        if policy_name == "queue-depth":
            decision = decide(policy, state, math.ceil(backlog), t)
            state = decision.state
            want = decision.desired
        else:  # cpu
            cpu_high_since = (cpu_high_since if cpu_high_since is not None else t) if cpu > 0.40 else None
            cpu_low_since = (cpu_low_since if cpu_low_since is not None else t) if cpu < 0.20 else None
            want = len(machines)
            if cpu_high_since is not None and t - cpu_high_since >= 300:
                want, cpu_high_since = len(machines) + 1, None
            elif cpu_low_since is not None and t - cpu_low_since >= 900:
                want, cpu_low_since = len(machines) - 1, None
            want = max(1, min(s.max_machines, want))
        while len(machines) < want:
            machines.append(t + s.boot_s)
        while len(machines) > want:
            machines.pop()  # the newest first; busy ones are protected in the real backends
        machine_s += len(machines) * s.step_s
        idle_s += len(machines) * s.step_s * (1 - busy_share) if machines else 0.0
        cost += len(machines) * s.step_s / 3600 * s.machine_cost_per_h
        trace.t_min.append(t / 60)
        trace.backlog.append(backlog)
        trace.capacity.append(len(machines))
        trace.cost.append(cost)
        t += s.step_s
    if flood_open is not None:
        drains.append(float("inf"))  # still draining when the day ended
    summary = Summary(
        policy=policy_name,
        drain_minutes=round(sum(drains) / len(drains), 1) if drains else 0.0,
        max_drain_minutes=round(max(drains), 1) if drains else 0.0,
        machine_minutes=round(machine_s / 60, 1),
        idle_machine_minutes=round(idle_s / 60, 1),
        cost=round(cost, 2),
    )
    return trace, summary


def plot(traces: list[Trace], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for trace in traces:
        hours = [m / 60 for m in trace.t_min]
        axes[0].plot(hours, trace.backlog, label=trace.policy)
        axes[1].step(hours, trace.capacity, where="post", label=trace.policy)
        axes[2].plot(hours, trace.cost, label=trace.policy)
    axes[0].set_ylabel("queue depth (objects)")
    axes[1].set_ylabel("importer machines")
    axes[2].set_ylabel("cumulative cost ($)")
    axes[2].set_xlabel("hour of day")
    axes[0].set_title("Import backlog and capacity: CPU trigger (min 1) vs queue depth (min 0)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summaries_as_dict(summaries: list[Summary]) -> dict:
    return {s.policy: asdict(s) for s in summaries}
