"""Assembles the stage folders of pipeline/defs into one Definitions; nothing imports this module."""

from dagster import Definitions, in_process_executor

from pipeline.defs.enriched import definitions as enriched
from pipeline.defs.raw import definitions as raw
from pipeline.defs.resources import resource_defs
from pipeline.defs.scaling import definitions as scaling
from pipeline.defs.warehouse import definitions as warehouse

# Runs execute their steps in the run's own process: every job here is one asset or one
# multi-asset per run, so the default multiprocess executor bought no parallelism and cost a
# second Python process (and code load) per run, ~2-3 s on every import run.
defs = Definitions.merge(
    raw.defs,
    enriched.defs,
    warehouse.defs,
    scaling.defs,
    Definitions(resources=resource_defs(), executor=in_process_executor),
)
