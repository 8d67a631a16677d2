"""A machine without Java (issue #24): enrichment still runs, in this process, and says what to
install for Spark; a cluster's master without Java fails with that message instead."""

from __future__ import annotations

import logging
import uuid
from unittest import mock

import pytest

from pipeline.collector.collect import collect
from pipeline.collector.spool import Spool
from pipeline.enrich.spark import enrich_days
from pipeline.settings import ConfigurationError
from pipeline_tests.security.test_tenancy import report_file, unique_day
from pipeline_tests.support import new_customer


def _no_spark():
    raise AssertionError("a Spark session was asked for on a machine without Java")


@pytest.fixture
def without_java(tmp_path):
    """Java hidden from this process as a machine without it: no JAVA_HOME, nothing on PATH."""
    with mock.patch.dict("os.environ", {"PATH": str(tmp_path / "empty-bin"), "JAVA_HOME": ""}):
        yield


def test_without_java_a_run_that_would_start_spark_is_enriched_here_with_a_warning(
    stack, clients, tmp_path, without_java, caplog
):
    s3 = clients("s3")
    customer, day = new_customer(), unique_day()
    collect([report_file(tmp_path, day, f"nj-{customer}", records=7)], customer, stack, Spool(tmp_path / "s"))
    with caplog.at_level(logging.WARNING, logger="pipeline.enrich.spark"):
        # local_bytes=0: a run of any size asks for Spark
        run = f"nj-{uuid.uuid4().hex[:8]}"
        [result] = enrich_days(_no_spark, stack, s3, [day.isoformat()], run, [customer], False, 0)
    assert result.raw_objects == 1 and result.enriched_rows == 7 and result.rows_match
    warning = next(r.getMessage() for r in caplog.records if "not by Spark" in r.getMessage())
    assert "openjdk-17-jre-headless" in warning and "JAVA_HOME" in warning


def test_without_java_a_cluster_master_fails_naming_the_package(stack, clients, tmp_path, without_java):
    s3 = clients("s3")
    customer, day = new_customer(), unique_day()
    collect([report_file(tmp_path, day, f"nc-{customer}", records=3)], customer, stack, Spool(tmp_path / "s"))

    def session():
        from pipeline.enrich.java import require_java

        require_java()  # what the asset's session factory does first

    cluster = {"PIPELINE_SPARK_MASTER": "spark://spark.internal:7077"}
    with mock.patch.dict("os.environ", cluster), pytest.raises(ConfigurationError, match="openjdk-17-jre-headless"):
        enrich_days(session, stack, s3, [day.isoformat()], f"nc-{uuid.uuid4().hex[:8]}", [customer], False, 0)


def _tools(folder, java_version: str | None):
    """A PATH of the tools scripts/ensure-java.sh uses, a non-root `id`, and a `java` of
    ``java_version`` (none when None)."""
    import shutil

    folder.mkdir()
    for tool in ("sed", "head"):
        (folder / tool).symlink_to(shutil.which(tool))
    (folder / "id").write_text("#!/bin/sh\necho 1000\n")
    if java_version:
        (folder / "java").write_text(f"#!/bin/sh\necho 'openjdk version \"{java_version}\" 2025-04-15' >&2\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return str(folder)


@pytest.mark.parametrize(("version", "missing"), [(None, True), ("11.0.2", True), ("17.0.15", False), ("21", False)])
def test_make_demo_checks_java_and_names_the_package_when_it_may_not_install_it(tmp_path, version, missing):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "ensure-java.sh"
    env = {"PATH": _tools(tmp_path / "bin", version)}
    done = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0  # never stops the demo: the pipeline enriches in one process instead
    assert ("openjdk-17-jre-headless" in done.stderr) is missing, done.stderr
