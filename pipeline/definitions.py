"""Assembles the stage folders of pipeline/defs into one Definitions; nothing imports this module."""

from dagster import Definitions

from pipeline.defs.enriched import definitions as enriched
from pipeline.defs.raw import definitions as raw
from pipeline.defs.resources import resource_defs
from pipeline.defs.scaling import definitions as scaling
from pipeline.defs.warehouse import definitions as warehouse

defs = Definitions.merge(raw.defs, enriched.defs, warehouse.defs, scaling.defs, Definitions(resources=resource_defs()))
