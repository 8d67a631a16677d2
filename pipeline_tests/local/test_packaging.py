"""What production installs is what production needs (issue #24): the local stack's packages
(moto, the embedded PostgreSQL, plotting, process sampling) are the `local` extra, the production
image installs the package without it, and the code location and the production commands load
with those packages absent."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from pipeline.project import REPO_ROOT

LOCAL_ONLY = {"moto", "pgserver", "matplotlib", "psutil"}
IMAGE = REPO_ROOT / "deploy" / "dagster" / "Containerfile"


def _setup_kwargs() -> dict:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    assigns = [t for t in tree.body if isinstance(t, ast.Assign) and isinstance(t.value, ast.Constant)]
    constants = {t.targets[0].id: t.value.value for t in assigns}
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kwargs = {}
    for keyword in call.keywords:
        if keyword.arg in {"install_requires", "extras_require"}:
            source = ast.unparse(keyword.value)
            kwargs[keyword.arg] = eval(source, {}, constants)  # literals and the two pinned versions
    return kwargs


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_local_stack_is_an_extra_not_a_production_dependency():
    kwargs = _setup_kwargs()
    assert not _names(kwargs["install_requires"]) & LOCAL_ONLY
    assert _names(kwargs["extras_require"]["local"]) == LOCAL_ONLY
    assert "'.[local,dev]'" in (REPO_ROOT / "Makefile").read_text()  # the README's commands install it


BLOCKED_RUN = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is not installed in production")
sys.meta_path.insert(0, Absent())
import pipeline.definitions as location
assert location.defs.resolve_all_asset_keys()
location.defs.resolve_implicit_global_asset_job_def()
from click.testing import CliRunner
from pipeline.cli import cli
for args in (["importer", "--help"], ["collect", "--help"], ["enrich", "--help"], ["scaling", "status", "--help"],
             ["verify", "--help"], ["import-status", "--help"], ["web", "--help"]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
print("loaded")
"""


def test_the_code_location_and_the_production_commands_load_without_the_local_extra():
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN.format(blocked=LOCAL_ONLY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("loaded"), run.stderr[-3000:]


def test_the_production_image_installs_the_package_without_extras_with_the_production_instance():
    text = IMAGE.read_text()
    installs = re.findall(r"^RUN .*?(pip install [^&\n]*)", text, re.MULTILINE)
    assert installs and all(re.search(r"pip install --no-cache-dir \.(\s|$)", i) for i in installs), installs
    assert "COPY deploy/dagster/dagster.yaml /opt/dagster/home/dagster.yaml" in text
    assert "COPY deploy/dagster/workspace.yaml /opt/dagster/workspace.yaml" in text
    assert "default-jre-headless" in text  # Spark's driver
    compute = (REPO_ROOT / "deploy" / "cloudformation" / "compute.yaml").read_text()
    assert "/opt/dagster/workspace.yaml" in compute and "Value: /opt/dagster/home" in compute
