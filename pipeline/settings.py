"""Where the pipeline runs: one place decides the environment, every resource keys off it.

Two environments:

* ``local`` (default): the embedded stack started by ``pipeline up``. Its endpoints, names and
  DSNs are recorded in ``$PIPELINE_HOME/stack.json`` so that every later command, the tests and
  ``dagster dev`` find the same stack.
* ``prod``: real AWS and a real PostgreSQL, configured from the environment (ECS task
  definitions in deploy/ set these variables; secrets come from Secrets Manager).

Environment variables always win over the recorded state, so an operator can point one command
at another stack without editing files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pipeline import config
from pipeline.config import ConfigurationError

__all__ = ["ConfigurationError", "Settings", "load_settings", "pipeline_home"]

STATE_FILE = "stack.json"
DEFAULT_REGION = "us-east-1"
DEFAULT_NAME_PREFIX = "dmarc-pipeline"
DEFAULT_ENRICHED_PREFIX = "enriched/"
DEFAULT_RAW_PREFIX = "raw/"


def pipeline_home() -> Path:
    """The local state folder: ``$PIPELINE_HOME``, or ``.pipeline`` in the working directory."""
    return Path(config.get("PIPELINE_HOME") or Path.cwd() / ".pipeline").absolute()


def environment() -> str:
    return config.get("PIPELINE_ENV")


@dataclass
class Settings:
    """Everything a component needs to reach the stack. Plain data: JSON in, JSON out."""

    env: str = "local"
    region: str = DEFAULT_REGION
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    database_url: str | None = None
    dagster_database_url: str | None = None
    raw_bucket: str = f"{DEFAULT_NAME_PREFIX}-raw"
    enriched_bucket: str = f"{DEFAULT_NAME_PREFIX}-enriched"
    raw_prefix: str = DEFAULT_RAW_PREFIX
    enriched_prefix: str = DEFAULT_ENRICHED_PREFIX
    topic_arn: str | None = None
    queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    raw_queue_url: str | None = None  # the raw bucket's notifications (the raw sensor's intake)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def process_env(self) -> dict[str, str]:
        """The variables that hand these settings to a child process (dagster dev, workers)."""
        pairs = {
            "PIPELINE_ENV": self.env,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "PIPELINE_AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "DATABASE_URL": self.database_url,
            "DAGSTER_DATABASE_URL": dagster_sqlalchemy_url(self.dagster_database_url),
            "PIPELINE_RAW_BUCKET": self.raw_bucket,
            "PIPELINE_ENRICHED_BUCKET": self.enriched_bucket,
            "PIPELINE_ENRICHED_PREFIX": self.enriched_prefix,
            "PIPELINE_IMPORT_QUEUE_URL": self.queue_url,
            "PIPELINE_DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
            "PIPELINE_RAW_QUEUE_URL": self.raw_queue_url,
            "PIPELINE_TOPIC_ARN": self.topic_arn,
            # Dagster stores events that carry batch metadata (an import run's per-object
            # materializations, a range run's planned events) in one write each (BENCHMARKS.md).
            "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "1000"),
        }
        return {k: v for k, v in pairs.items() if v}


# Environment variable -> Settings field. Applied over the recorded state.
_ENV_OVERRIDES = {
    "AWS_REGION": "region",
    "PIPELINE_AWS_ENDPOINT_URL": "aws_endpoint_url",
    "DATABASE_URL": "database_url",
    "DAGSTER_DATABASE_URL": "dagster_database_url",
    "PIPELINE_RAW_BUCKET": "raw_bucket",
    "PIPELINE_ENRICHED_BUCKET": "enriched_bucket",
    "PIPELINE_ENRICHED_PREFIX": "enriched_prefix",
    "PIPELINE_IMPORT_QUEUE_URL": "queue_url",
    "PIPELINE_DEAD_LETTER_QUEUE_URL": "dead_letter_queue_url",
    "PIPELINE_RAW_QUEUE_URL": "raw_queue_url",
    "PIPELINE_TOPIC_ARN": "topic_arn",
}


def state_path(home: Path | None = None) -> Path:
    return (home or pipeline_home()) / STATE_FILE


def read_state(home: Path | None = None) -> Settings | None:
    path = state_path(home)
    if not path.exists():
        return None
    return Settings.from_dict(json.loads(path.read_text()))


def write_state(settings: Settings, home: Path | None = None) -> Path:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(settings.to_json())
    tmp.replace(path)
    return path


def load_settings(home: Path | None = None) -> Settings:
    """Settings for this process: the recorded local stack (if any), overridden by the environment."""
    env = environment()
    settings = (read_state(home) if env == "local" else None) or Settings(env=env)
    settings.env = env
    for var, name in _ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            setattr(settings, name, value)
    if env == "local" and not settings.aws_endpoint_url:
        raise ConfigurationError(
            f"No local stack is recorded in {state_path(home)}. Run `pipeline up` first "
            "(or set PIPELINE_ENV=prod to use real AWS)."
        )
    return settings


def dagster_sqlalchemy_url(url: str | None) -> str | None:
    """dagster-postgres speaks through SQLAlchemy with psycopg2: say so in the URL scheme, since
    SQLAlchemy 2.1 picks psycopg 3 for a bare ``postgresql://``, and dagster-postgres's NOTIFY
    with a bound parameter fails there."""
    if not url:
        return url
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare) :]
    return url
