"""Shared fixtures: one real local stack (moto server + PostgreSQL) for the whole session.

The stack is started exactly as `pipeline up` starts it, under a temporary PIPELINE_HOME, so the
tests never touch a developer's own stack. DATABASE_URL, when set, is used as `up` would use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pytest

from pipeline.aws import client_factory
from pipeline.local import stack as local_stack
from pipeline.settings import Settings
from pipeline_tests.support import SAMPLES, receive_all, traversable_tmpdir

# The hourly alerts schedule starts stopped in the tests' Dagster daemons: a run it launched at
# a quarter past would join the runs that the scaling tests count. (Its default is tested.)
os.environ.setdefault("PIPELINE_ALERTS_SCHEDULE", "0")
# Likewise the automation sensor and the digest schedule (their defaults are tested, and a
# real daemon test turns them on).
os.environ.setdefault("PIPELINE_AUTOMATION", "0")
# The raw sensor reports what is new at every tick (tests tick it back to back); the gate that
# spaces its reports in production is tested with its own value.
os.environ.setdefault("PIPELINE_RAW_RUN_INTERVAL_S", "0")


@pytest.fixture(autouse=True, scope="session")
def _samples_present():
    if not SAMPLES.is_dir():
        pytest.fail(
            f"The DMARC report samples are not at {SAMPLES}: check out the project beside shared/ "
            "(../shared/samples/dmarc-aggregate) or set PIPELINE_SAMPLES to that folder.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pipeline_home() -> Path:
    home = traversable_tmpdir("pipeline-test-home-")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(pipeline_home: Path) -> Settings:
    old = os.environ.get("PIPELINE_HOME")
    os.environ["PIPELINE_HOME"] = str(pipeline_home)
    settings = local_stack.up(
        pipeline_home,
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )
    yield settings
    local_stack.down(pipeline_home)
    if old is None:
        os.environ.pop("PIPELINE_HOME", None)
    else:
        os.environ["PIPELINE_HOME"] = old


@pytest.fixture(scope="session")
def clients(stack: Settings):
    return client_factory(stack)


@pytest.fixture(scope="session")
def versioned_stack(stack: Settings) -> Settings:
    """A second data plane on the same endpoint and warehouse, from the same template, with
    versioning enabled on its enriched bucket (what PIPELINE_BUCKET_VERSIONING=1 gives `up`)."""
    return local_stack.provision_stack(
        stack, name_prefix="dmarc-pipeline-v", versioning="Enabled", stack_name="dmarc-pipeline-data-versioned"
    )


VERSIONED_ENV = {
    "PIPELINE_RAW_BUCKET": "raw_bucket",
    "PIPELINE_ENRICHED_BUCKET": "enriched_bucket",
    "PIPELINE_IMPORT_QUEUE_URL": "queue_url",
    "PIPELINE_DEAD_LETTER_QUEUE_URL": "dead_letter_queue_url",
    "PIPELINE_RAW_QUEUE_URL": "raw_queue_url",
    "PIPELINE_TOPIC_ARN": "topic_arn",
}


@pytest.fixture(params=["plain", "versioned"])
def bucket(request, stack: Settings, clients, monkeypatch) -> Settings:
    """The settings of a plain or a versioned enriched bucket, with its queues empty; the
    environment points Dagster's resources at it too."""
    settings = stack if request.param == "plain" else request.getfixturevalue("versioned_stack")
    for var, name in VERSIONED_ENV.items():
        monkeypatch.setenv(var, getattr(settings, name))
    sqs = clients("sqs")
    for url in (settings.queue_url, settings.dead_letter_queue_url):
        for message in receive_all(sqs, url, wait=0):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return settings


@pytest.fixture
def restored_environ():
    """For tests that export variables the way `pipeline dev` does: the environment as it was after."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def empty_queues(stack: Settings, clients):
    """Both queues empty before the test (PurgeQueue is rate-limited, so receive and delete)."""
    sqs = clients("sqs")
    for url in (stack.queue_url, stack.dead_letter_queue_url):
        for message in receive_all(sqs, url, wait=0):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return stack


@pytest.fixture
def warehouse(stack: Settings):
    with psycopg.connect(stack.database_url) as conn:
        yield conn
