"""Benchmarks: figures measured in one run against baselines (BENCHMARKS.md)."""

from __future__ import annotations

Targets = dict[str, tuple[str, float]]  # figure -> (">=" or "<=", target)


def verdicts(figures: dict, targets: Targets) -> dict[str, bool]:
    """Whether each measured figure meets its target (figures not measured in this run are left out)."""
    out = {}
    for name, (op, target) in targets.items():
        if figures.get(name) is not None:
            out[name] = figures[name] >= target if op == ">=" else figures[name] <= target
    return out
