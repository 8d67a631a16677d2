"""The `pipeline` command group, its logging, and the exit code of a configuration error."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import click

from pipeline import config
from pipeline.settings import ConfigurationError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
@click.option(
    "--log-level",
    default=lambda: config.get("PIPELINE_LOG_LEVEL").upper(),
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    show_default=True,
)
def cli(log_level: str) -> None:
    """DMARC telemetry pipeline: collector -> Spark enrichment -> S3/SNS/SQS -> importer -> PostgreSQL."""
    _setup_logging(log_level)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigurationError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


@contextmanager
def stdout_to_stderr():
    """Spark's JVM logs to this process's stdout: send it to stderr while Spark runs, so stdout
    holds only the command's output (one JSON object with --json)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
