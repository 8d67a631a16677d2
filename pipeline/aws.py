"""boto3 clients for the configured stack: the local moto endpoint, or real AWS."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from pipeline.settings import Settings

# Sensible client defaults: adaptive retries absorb throttling; bounded timeouts keep a sensor
# tick from hanging on a dead endpoint.
CLIENT_CONFIG = Config(
    retries={"max_attempts": 5, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)


def client(settings: Settings, service: str, config: Config | None = None) -> Any:
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config or CLIENT_CONFIG}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_access_key_id:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key
    return boto3.session.Session().client(service, **kwargs)


def client_factory(settings: Settings) -> Callable[[str], Any]:
    """``service -> client`` for one stack, from the process-wide cache below."""
    return lambda service: cached_client(settings, service)


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def cached_client(settings: Settings, service: str) -> Any:
    """One client per (service, region, endpoint, credentials) in this process: boto3 clients are
    thread-safe, and building one costs milliseconds and a connection pool (a sensor tick or a
    resource property asks for one each time)."""
    key = (
        service,
        settings.region,
        settings.aws_endpoint_url,
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
    )
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = client(settings, service)
        return _CLIENTS[key]
