"""Assembles the stage folders of pipeline/defs into one Definitions; nothing imports this module."""

from dagster import Definitions

from pipeline.defs.enriched.definitions import defs as enriched_defs
from pipeline.defs.raw.definitions import defs as raw_defs
from pipeline.defs.resources import resource_defs
from pipeline.defs.warehouse.definitions import defs as warehouse_defs

defs = Definitions.merge(raw_defs, enriched_defs, warehouse_defs, Definitions(resources=resource_defs()))
