"""Assembles the stage folders of pipeline/defs into one Definitions; nothing imports this module."""

from dagster import Definitions, in_process_executor

from pipeline import config

config.validate()  # a bad knob fails the code location's load with every bad value named, first

from pipeline.defs.enriched import definitions as enriched  # noqa: E402
from pipeline.defs.importer import definitions as importer  # noqa: E402
from pipeline.defs.operations import definitions as operations  # noqa: E402
from pipeline.defs.raw import definitions as raw  # noqa: E402
from pipeline.defs.reports import definitions as reports  # noqa: E402
from pipeline.defs.resources import resource_defs  # noqa: E402
from pipeline.defs.scaling import definitions as scaling  # noqa: E402

# Runs execute their steps in the run's own process: every job here is one asset or one
# multi-asset per run, so the default multiprocess executor bought no parallelism and cost a
# second Python process (and code load) per run, ~2-3 s on every import run.
defs = Definitions.merge(
    raw.defs,
    enriched.defs,
    importer.defs,
    reports.defs,
    scaling.defs,
    operations.defs,
    Definitions(resources=resource_defs(), executor=in_process_executor),
)
