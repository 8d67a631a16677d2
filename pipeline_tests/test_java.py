"""Spark's Java requirement is stated clearly when it is not met."""

from __future__ import annotations

import pytest

from pipeline.enrich.java import require_java
from pipeline.settings import ConfigurationError


def test_missing_java_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match="Java 17 or newer"):
        require_java()


def test_old_java_is_named(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match="is Java 11"):
        require_java()


def test_this_machines_java_is_accepted():
    assert require_java().name == "java"
