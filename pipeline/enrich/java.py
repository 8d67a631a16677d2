"""Spark needs a Java runtime; say clearly when there is none (or it is too old)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.settings import ConfigurationError

MIN_JAVA = 17
_HOW = (
    "Install Java 17 or newer (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`) "
    "or point JAVA_HOME at one. Only the Spark enrichment needs it."
)


def find_java() -> Path | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    return Path(found) if found else None


def java_major_version(java: Path) -> int:
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise ConfigurationError(f"Could not read the version of {java}: {out.stderr.strip()}. {_HOW}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major  # "1.8.0" is Java 8


def require_java() -> Path:
    """The java executable Spark will use; ConfigurationError naming what is missing otherwise."""
    java = find_java()
    if java is None:
        raise ConfigurationError(f"Spark needs Java, and none was found (no JAVA_HOME, no java on PATH). {_HOW}")
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise ConfigurationError(f"Spark (pyspark 4) needs Java {MIN_JAVA}+, but {java} is Java {major}. {_HOW}")
    return java


def java_problem() -> str | None:
    """Why Spark cannot start on this machine (no Java, or one too old), None when it can."""
    try:
        require_java()
    except ConfigurationError as exc:
        return str(exc)
    return None
