"""One configuration: every knob in pipeline/config.py, parsed there, documented in the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import instance_for_test

from pipeline import config
from pipeline.config import ConfigurationError
from pipeline.importer.batch import ImportTimeouts
from pipeline.importer.inbox import InboxPolicy
from pipeline.scaling.config import ScalingConfig
from pipeline.scaling.policy import ScalingPolicy

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ROOT / "pipeline"


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for p in PRODUCT.rglob("*.py")}


def test_every_variable_the_product_names_is_a_knob():
    named = set()
    for text in _sources().values():
        named |= {m for m in re.findall(r"\bPIPELINE_[A-Z0-9_]*[A-Z0-9]\b", text)}
    unknown = sorted(named - set(config.BY_NAME))
    assert not unknown, f"add these to pipeline/config.py KNOBS (and the README table): {unknown}"


def test_no_module_reads_a_knob_around_the_configuration():
    reads = re.compile(r"""(os\.environ\.get\(|os\.environ\[|os\.getenv\()\s*["']PIPELINE_""")
    offenders = [
        str(path.relative_to(ROOT))
        for path, text in _sources().items()
        if path.name != "config.py" and reads.search(text)
    ]
    assert not offenders, f"read knobs with pipeline.config.get: {offenders}"


def test_the_readme_holds_the_knob_table():
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, (
        "the README's configuration table is out of step: paste `python -c 'from pipeline import config; "
        "print(config.markdown_table())'`"
    )


@pytest.mark.parametrize("knob", [k for k in config.KNOBS if k.kind != "str"], ids=lambda k: k.name)
def test_a_bad_value_names_the_variable_and_what_to_set(knob):
    with pytest.raises(ConfigurationError) as caught:
        config.get(knob.name, {knob.name: "not-a-value"})
    assert knob.name in str(caught.value) and "'not-a-value'" in str(caught.value)
    assert "set " in str(caught.value)
    if knob.minimum is not None:
        with pytest.raises(ConfigurationError, match=f"{knob.name}.*below"):
            config.get(knob.name, {knob.name: str(knob.minimum - 1)})


def test_values_parse_once_and_unset_means_the_default():
    assert config.get("PIPELINE_IMPORT_STREAMS", {}) == 2
    assert config.get("PIPELINE_IMPORT_STREAMS", {"PIPELINE_IMPORT_STREAMS": " 4 "}) == 4
    assert config.get("PIPELINE_SPARK_SHIP_CODE", {"PIPELINE_SPARK_SHIP_CODE": "yes"}) is True
    assert config.get("PIPELINE_CAPACITY_BACKEND", {"PIPELINE_CAPACITY_BACKEND": "ECS"}) == "ecs"
    # another knob's bad value does not break this one's read; validate() names them all
    env = {"PIPELINE_IMPORT_STREAMS": "3", "PIPELINE_SCALING_MIN": "-1", "PIPELINE_ENV": "staging"}
    assert config.get("PIPELINE_IMPORT_STREAMS", env) == 3
    with pytest.raises(ConfigurationError) as caught:
        config.validate(env)
    assert "PIPELINE_SCALING_MIN" in str(caught.value) and "PIPELINE_ENV" in str(caught.value)


def test_the_stages_defaults_are_the_tables_defaults():
    inbox, timeouts, policy = InboxPolicy(), ImportTimeouts(), ScalingPolicy()
    pairs = {
        "PIPELINE_IMPORT_MAX_ATTEMPTS": inbox.max_attempts,
        "PIPELINE_IMPORT_RETRY_BASE_S": inbox.retry_base_s,
        "PIPELINE_IMPORT_RETRY_MAX_S": inbox.retry_max_s,
        "PIPELINE_IMPORT_LEASE_S": inbox.lease_s,
        "PIPELINE_IMPORT_PLAN_LEASE_S": inbox.plan_lease_s,
        "PIPELINE_IMPORT_ORPHAN_GRACE_S": inbox.orphan_grace_s,
        "PIPELINE_DB_LOCK_TIMEOUT_S": timeouts.lock_timeout_s,
        "PIPELINE_DB_STATEMENT_TIMEOUT_S": timeouts.statement_timeout_s,
        "PIPELINE_DB_IDLE_IN_TRANSACTION_S": timeouts.idle_in_transaction_s,
        "PIPELINE_DB_KEEPALIVE_IDLE_S": timeouts.keepalive_idle_s,
        "PIPELINE_DB_TCP_USER_TIMEOUT_S": timeouts.tcp_user_timeout_s,
        "PIPELINE_SCALING_TARGET_PER_WORKER": policy.target_per_worker,
        "PIPELINE_SCALING_MIN": policy.min_capacity,
        "PIPELINE_SCALING_ACTIVATION": policy.activation_threshold,
        "PIPELINE_SCALING_COOLDOWN_S": policy.scale_in_cooldown_s,
        "PIPELINE_SCALING_STEP": policy.scale_in_step,
    }
    assert {name: config.BY_NAME[name].default for name in pairs} == pairs


def test_the_sensor_and_the_launcher_read_one_scaling_config(monkeypatch):
    """capacity_sensor reads ScalingConfig.for_instance(context.instance): the environment, then
    the run launcher's config in dagster.yaml, exactly what the launcher decides with."""
    monkeypatch.setenv("PIPELINE_SCALING_TARGET_PER_WORKER", "50")
    monkeypatch.delenv("PIPELINE_SCALING_MAX", raising=False)
    launcher = {
        "module": "pipeline.scaling.launcher",
        "class": "QueueDepthRunLauncher",
        "config": {"backend": "local", "max_capacity": 7, "scale_in_cooldown_s": 12},
    }
    with instance_for_test(overrides={"run_launcher": launcher}) as instance:
        shared = ScalingConfig.for_instance(instance)
        assert shared == ScalingConfig.from_env(**instance.run_launcher.scaling_overrides)
    assert (shared.policy.max_capacity, shared.policy.scale_in_cooldown_s) == (7, 12)
    assert shared.policy.target_per_worker == 50  # the environment under dagster.yaml
    with instance_for_test() as plain:  # another launcher: the environment alone
        assert ScalingConfig.for_instance(plain) == ScalingConfig.from_env()


def test_pipeline_config_lists_every_knob_and_refuses_a_bad_one(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIPELINE_HOME": str(tmp_path)}
    ok = subprocess.run([sys.executable, "-m", "pipeline", "config", "--json"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(ok.stdout)
    assert listed["ok"] and [k["name"] for k in listed["knobs"]] == [k.name for k in config.KNOBS]
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "--json"],
        env={**env, "PIPELINE_OBJECTS_PER_RUN": "0", "PIPELINE_WEB_SECRET": "hush"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    out = json.loads(bad.stdout)
    assert out["errors"] == ["PIPELINE_OBJECTS_PER_RUN='0' is below 1: set an integer >= 1 (default 500)."]
    assert "hush" not in bad.stdout  # secrets are shown as set, not printed
