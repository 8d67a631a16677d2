"""The scaling study: queue depth (min 0) against a CPU trigger (min 1) on the original scenario."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline.scaling.simulate import Scenario, run


def test_queue_depth_drains_faster_and_idles_less_than_cpu():
    cpu_trace, cpu = run("cpu")
    qd_trace, qd = run("queue-depth")
    assert qd.drain_minutes * 5 < cpu.drain_minutes  # minutes against hours
    assert qd.idle_machine_minutes < cpu.idle_machine_minutes and qd.cost < cpu.cost
    assert min(cpu_trace.capacity) == 1  # the CPU fleet never goes below one machine
    # Between floods the queue-depth fleet is at zero, but for a machine that takes the trickle
    # each time it reaches the activation threshold.
    between = [c for t, c in zip(qd_trace.t_min, qd_trace.capacity) if 5 * 60 <= t < 7.5 * 60]
    assert max(between) <= 1 and between.count(0) > 0.6 * len(between)
    assert max(qd_trace.capacity) <= Scenario().max_machines


def test_cli_writes_table_and_png(tmp_path):
    png = tmp_path / "sim.png"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "simulate", "--json", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert set(table) == {"cpu", "queue-depth"}
    assert {"drain_minutes", "machine_minutes", "idle_machine_minutes"} <= set(table["cpu"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
