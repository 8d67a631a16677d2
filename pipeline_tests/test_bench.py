"""The benchmarks' verdicts: a figure meets its target by the target's own direction."""

from pipeline.bench import flood, importer, verdicts


def test_a_figure_meets_its_target_in_the_targets_direction():
    targets = {"speedup": (">=", 5.0), "overhead": ("<=", 0.3), "not_run": (">=", 1.0)}
    assert verdicts({"speedup": 5.0, "overhead": 0.31}, targets) == {"speedup": True, "overhead": False}
    assert verdicts({"speedup": 4.9, "overhead": 0.3, "other": 9}, targets) == {"speedup": False, "overhead": True}


def test_every_benchmark_target_names_a_direction():
    for targets in (flood.TARGETS, importer.TARGETS):
        assert targets and all(op in {">=", "<="} for op, _ in targets.values())
