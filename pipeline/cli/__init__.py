"""The ``pipeline`` command: one module per stage, each command parses, calls its stage, prints.

``app`` holds the group; importing the stage modules registers their commands on it.
"""

from pipeline.cli import bench, chaos, collect, demo, enrich, importer, scaling, stack, web  # noqa: F401
from pipeline.cli.app import cli, main

__all__ = ["cli", "main"]
