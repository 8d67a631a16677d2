"""The code location: Dagster's own loader (``load_defs``) assembles the stage folders of
pipeline/defs, each folder's ``definitions.py`` its ``defs``; nothing imports this module.

A stage folder says what it adds (assets, sensors, checks, schedules) in its ``definitions.py``;
a new folder with one is part of the code location without an edit here. The modules beside the
folders (partitions, resources) hold no definitions of their own.
"""

from dagster import Definitions, in_process_executor, load_defs

from pipeline import config

config.validate()  # a bad knob fails the code location's load with every bad value named, first

import pipeline.defs  # noqa: E402
from pipeline.defs.resources import resource_defs  # noqa: E402

# Runs execute their steps in the run's own process: every job here is one asset or one
# multi-asset per run, so the default multiprocess executor bought no parallelism and cost a
# second Python process (and code load) per run, ~2-3 s on every import run.
defs = Definitions.merge(
    load_defs(pipeline.defs),
    Definitions(resources=resource_defs(), executor=in_process_executor),
)
