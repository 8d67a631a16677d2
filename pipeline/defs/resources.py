"""Dagster resources shared by every stage.

Each resource is one class for both deployments: its fields are optional overrides, and what is
left unset comes from ``pipeline.settings.load_settings()`` (the recorded local stack, or the
environment in production). Secrets reach a resource only through ``EnvVar`` (the warehouse's
URL), so the UI shows a variable's name, never a value. AWS clients are cached per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from pipeline.aws import cached_client
from pipeline.settings import Settings, load_settings


class StackResource(ConfigurableResource):
    """Where the pipeline's stack is. Unset fields come from the environment / `pipeline up`."""

    aws_endpoint_url: str | None = Field(
        default=None, description="AWS endpoint override (the local moto server); unset for real AWS."
    )
    region_name: str | None = Field(default=None, description="AWS region.")

    def settings(self) -> Settings:
        settings = load_settings()
        if self.aws_endpoint_url:
            settings.aws_endpoint_url = self.aws_endpoint_url
        if self.region_name:
            settings.region = self.region_name
        return settings

    def client(self, service: str) -> Any:
        """A client of ``service`` on this stack, cached per process (pipeline.aws.cached_client)."""
        return cached_client(self.settings(), service)


class ObjectStoreResource(ConfigurableResource):
    """The raw and enriched telemetry buckets (S3)."""

    stack: StackResource
    raw_bucket: str | None = None
    enriched_bucket: str | None = None

    @property
    def s3(self) -> Any:
        return self.stack.client("s3")

    def raw_bucket_name(self) -> str:
        return self.raw_bucket or self.stack.settings().raw_bucket

    def enriched_bucket_name(self) -> str:
        return self.enriched_bucket or self.stack.settings().enriched_bucket


class ImportQueueResource(ConfigurableResource):
    """The SQS import queue that S3 -> SNS notifications land in, and its dead-letter queue."""

    stack: StackResource
    queue_url: str | None = None
    dead_letter_queue_url: str | None = None

    @property
    def sqs(self) -> Any:
        return self.stack.client("sqs")

    def settings(self) -> Settings:
        """The stack's settings with this resource's queue overrides: receiving, deleting and
        dead-lettering all use the same queues."""
        settings = self.stack.settings()
        if self.queue_url:
            settings.queue_url = self.queue_url
        if self.dead_letter_queue_url:
            settings.dead_letter_queue_url = self.dead_letter_queue_url
        return settings

    def url(self) -> str:
        return self.settings().queue_url

    def dead_letter_url(self) -> str:
        return self.settings().dead_letter_queue_url


class WarehouseResource(ConfigurableResource):
    """The PostgreSQL warehouse. The URL is a secret: ``EnvVar("DATABASE_URL")`` where that is set
    (the UI shows the variable's name, never its value), else what `pipeline up` recorded."""

    url: str | None = Field(default=None, description="The warehouse's URL (set it with EnvVar, never as a value).")
    connect_timeout: int = Field(default=10, description="Seconds to wait for a connection.")

    def database_url(self) -> str:
        return self.url or load_settings().database_url

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.database_url(), connect_timeout=self.connect_timeout) as conn:
            yield conn


def resource_defs() -> dict[str, Any]:
    stack = StackResource()
    return {
        "stack": stack,
        "object_store": ObjectStoreResource(stack=stack),
        "import_queue": ImportQueueResource(stack=stack),
        "warehouse": WarehouseResource(url=EnvVar("DATABASE_URL"))
        if os.environ.get("DATABASE_URL")
        else WarehouseResource(),
    }
