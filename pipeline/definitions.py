"""Assembles the stage folders of pipeline/defs into one Definitions; nothing imports this module."""

from dagster import Definitions

from pipeline.defs.resources import resource_defs

defs = Definitions(resources=resource_defs())
