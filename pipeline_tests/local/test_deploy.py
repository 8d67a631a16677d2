"""deploy/ for production: templates lint, IAM is least-privilege, the Dagster instance config is
valid for the versions we pin (including QueueDepthRunLauncher around EcsRunLauncher)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.project import REPO_ROOT

COMPUTE = REPO_ROOT / "deploy" / "cloudformation" / "compute.yaml"
COLLECTOR = REPO_ROOT / "deploy" / "cloudformation" / "collector.yaml"
PROD_INSTANCE = REPO_ROOT / "deploy" / "dagster" / "dagster.yaml"

# Actions that IAM cannot scope to a resource: "*" is the only valid Resource for them.
NO_RESOURCE_SCOPE = {
    "ecr:GetAuthorizationToken",
    "ecs:DescribeTaskDefinition",
    "ec2:DescribeNetworkInterfaces",
    "cloudwatch:PutMetricData",  # scoped by its namespace condition instead (a test checks it)
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def iam_problems(template: dict) -> list[str]:
    """Every statement with a wildcard action, or an unscoped resource where a scoped one exists."""
    problems = []
    for name, spec in template["Resources"].items():
        if spec["Type"] not in {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            continue
        props = spec["Properties"]
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if "PolicyDocument" in props:
            documents.append(props["PolicyDocument"])
        for document in documents:
            for statement in document["Statement"]:
                where = f"{name}/{statement.get('Sid', '?')}"
                if statement.get("Effect") != "Allow":
                    continue
                actions = _as_list(statement.get("Action", []))
                if "NotAction" in statement or "NotResource" in statement:
                    problems.append(f"{where}: NotAction/NotResource")
                for action in actions:
                    if "*" in action:
                        problems.append(f"{where}: wildcard action {action}")
                for resource in _as_list(statement.get("Resource", [])):
                    if resource == "*" and not set(actions) <= NO_RESOURCE_SCOPE:
                        problems.append(f"{where}: Resource '*' for {sorted(set(actions) - NO_RESOURCE_SCOPE)}")
    return problems


def _statements(template: dict, role: str) -> list[dict]:
    return [s for p in template["Resources"][role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


@pytest.mark.parametrize("template", ["pipeline.yaml", "compute.yaml", "collector.yaml"])
def test_templates_pass_cfn_lint(template):
    cfn_lint = shutil.which("cfn-lint") or str(Path(sys.executable).parent / "cfn-lint")
    path = REPO_ROOT / "deploy" / "cloudformation" / template
    result = subprocess.run([cfn_lint, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_iam_statement_has_a_wildcard_action_or_an_unscoped_resource():
    template = _load(COMPUTE)
    assert iam_problems(template) == []

    # The check itself fails when a wildcard slips in.
    broken = copy.deepcopy(template)
    _statements(broken, "ImporterTaskRole")[0]["Action"] = "sqs:*"
    _statements(broken, "DaemonTaskRole")[0]["Resource"] = "*"
    problems = iam_problems(broken)
    assert any("wildcard action sqs:*" in p for p in problems)
    assert any(p.startswith("DaemonTaskRole/ImportQueue: Resource '*'") for p in problems)


def test_importer_role_can_only_take_messages_and_read_enriched_objects():
    statements = _statements(_load(COMPUTE), "ImporterTaskRole")
    granted = {(a, str(s["Resource"])) for s in statements for a in _as_list(s["Action"])}
    actions = {a for a, _ in granted}
    assert actions == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",  # to the dead-letter queue only
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",  # so that a missing key answers 404: forbidden is not gone
        "ecs:UpdateTaskProtection",  # its own cluster's tasks only
    }
    for action, resource in granted:
        if action.startswith("sqs:") and action != "sqs:SendMessage":
            assert resource.endswith("${NamePrefix}-import'}"), resource
        if action == "sqs:SendMessage":
            assert resource.endswith("${NamePrefix}-import-dlq'}"), resource
        if action in {"s3:GetObject", "s3:GetObjectVersion"}:
            assert "${NamePrefix}-enriched/${EnrichedPrefix}*" in resource
        if action.startswith("ecs:"):
            assert ":task/${NamePrefix}/*" in resource
    [listing] = [s for s in statements if "s3:ListBucket" in _as_list(s["Action"])]
    assert str(listing["Resource"]).endswith("${NamePrefix}-enriched'}")  # the enriched bucket only ...
    assert listing["Condition"] == {"StringLikeIfExists": {"s3:prefix": {"Fn::Sub": "${EnrichedPrefix}*"}}}


def test_import_runs_hold_no_sqs_permission():
    """Runs take their work from the import inbox: no SQS receipt crosses the run queue."""
    statements = _statements(_load(COMPUTE), "RunTaskRole")
    assert not [a for s in statements for a in _as_list(s["Action"]) if a.startswith("sqs:")]


def test_worker_group_scales_to_zero_and_alarms_watch_age_and_dead_letters():
    resources = _load(COMPUTE)["Resources"]
    group = resources["WorkerGroup"]["Properties"]
    assert group["MinSize"] == "0" and "DesiredCapacity" not in group
    assert resources["ImporterService"]["Properties"]["DesiredCount"] == 0
    alarms = {r["Properties"]["MetricName"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms == {
        "ApproximateAgeOfOldestMessage",  # intake stalled
        "ApproximateNumberOfMessagesVisible",  # the dead-letter queue
        "InboxOldestPendingSeconds",  # the freshness promise, from the import inbox
        "InboxDeadLetters",
    }
    [metrics] = [s for s in _statements(_load(COMPUTE), "DaemonTaskRole") if s["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "DMARCPipeline/Import"}}
    families = {
        r["Properties"]["ContainerDefinitions"][0]["Name"]
        for r in resources.values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
    }
    assert families == {"code", "daemon", "webserver", "run", "importer"}


def test_production_instance_config_is_valid_and_wraps_the_ecs_launcher(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_aws.ecs import EcsRunLauncher

    from pipeline.instance import PooledPostgresStorage
    from pipeline.scaling.launcher import QueueDepthRunLauncher

    for var in ("DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(var, "x")
    for var, value in {
        "PIPELINE_ECS_CLUSTER": "dmarc-pipeline",
        "PIPELINE_ECS_SERVICE": "dmarc-pipeline-importer",
        "PIPELINE_RUN_TASK_DEFINITION": "dmarc-pipeline-run",
    }.items():
        monkeypatch.setenv(var, value)
    config = _load(PROD_INSTANCE)
    assert not re.search(r"password:(?!\s*\n\s*env:)", PROD_INSTANCE.read_text())  # from the environment only
    result = process_config(dagster_instance_config_schema(), config)
    assert result.success, result.errors
    storage = config["storage"]["custom"]
    assert (storage["module"], storage["class"]) == ("pipeline.instance", "PooledPostgresStorage")
    pooled = process_config(PooledPostgresStorage.config_type(), storage["config"])
    assert pooled.success, pooled.errors
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("pipeline.scaling.launcher", "QueueDepthRunLauncher")
    ours = process_config(QueueDepthRunLauncher.config_type(), launcher["config"])
    assert ours.success, ours.errors
    assert ours.value["backend"] == "ecs" and ours.value["min_capacity"] == 0
    inner = launcher["config"]["inner_launcher"]
    assert (inner["module"], inner["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    ecs = process_config(EcsRunLauncher.config_type(), inner["config"])
    assert ecs.success, ecs.errors
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["run_coordinator"]["config"]["tag_concurrency_limits"]


OWN_PREFIX = "arn:${AWS::Partition}:s3:::${NamePrefix}-raw/${RawPrefix}customer=${!aws:PrincipalTag/customer}/*"


def collector_reach(template: dict) -> list[str]:
    """Every way the collector role reaches past its own customer's raw prefix."""
    problems = iam_problems(template)
    for statement in _statements(template, "CollectorRole"):
        if statement["Effect"] != "Allow":
            continue
        extra = set(_as_list(statement["Action"])) - {"s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"}
        if extra:
            problems.append(f"{statement['Sid']}: actions {sorted(extra)}")
        for resource in _as_list(statement["Resource"]):
            text = resource.get("Fn::Sub") if isinstance(resource, dict) else resource
            if text != OWN_PREFIX:
                problems.append(f"{statement['Sid']}: resource {text}")
    return problems


def test_a_collector_reaches_only_its_own_customers_raw_prefix():
    template = _load(COLLECTOR)
    assert collector_reach(template) == []
    trust = template["Resources"]["CollectorRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"]["StringLike"] == {"aws:RequestTag/customer": "?*"}  # no session without its tag

    # The check fails when a statement reaches outside the prefix, or does more than write and read.
    for damage in (
        {"Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${NamePrefix}-raw/${RawPrefix}*"}},
        {"Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${NamePrefix}-enriched/*"}},
        {"Action": ["s3:PutObject", "s3:ListBucket"]},
        {"Action": ["s3:PutObject", "s3:DeleteObject"]},
    ):
        broken = copy.deepcopy(template)
        _statements(broken, "CollectorRole")[0].update(damage)
        assert collector_reach(broken), damage


def test_a_large_reports_parts_are_never_left_behind():
    """The collector uploads a large report in parts: its role may abort its own failed uploads,
    and the raw bucket discards what a collector that died mid-upload left."""
    actions = {a for s in _statements(_load(COLLECTOR), "CollectorRole") for a in _as_list(s["Action"])}
    assert "s3:AbortMultipartUpload" in actions
    rules = _load(REPO_ROOT / "deploy" / "cloudformation" / "pipeline.yaml")["Resources"]["RawBucket"]["Properties"][
        "LifecycleConfiguration"
    ]["Rules"]
    aborts = [r for r in rules if r["Status"] == "Enabled" and "AbortIncompleteMultipartUpload" in r]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in aborts] == [1]


def test_s3_and_the_warehouse_keep_the_same_horizon():
    """Issue #26: raw and enriched objects expire at the horizon the warehouse's retention drops
    partitions at (400 days in production), and the Dagster runs that apply it are told it."""
    data = _load(REPO_ROOT / "deploy" / "cloudformation" / "pipeline.yaml")
    compute = _load(COMPUTE)
    assert data["Parameters"]["RetentionDays"]["Default"] == compute["Parameters"]["RetentionDays"]["Default"] == 400
    for bucket, prefix in (("RawBucket", "raw/"), ("EnrichedBucket", {"Ref": "EnrichedPrefix"})):
        rules = data["Resources"][bucket]["Properties"]["LifecycleConfiguration"]["Rules"]
        [expire] = [r for r in rules if "ExpirationInDays" in r]
        assert expire["Status"] == "Enabled" and expire["Prefix"] == prefix
        assert expire["ExpirationInDays"] == {"Ref": "RetentionDays"}
    told = {
        c["Name"]
        for resource in compute["Resources"].values()
        if resource["Type"] == "AWS::ECS::TaskDefinition"
        for c in resource["Properties"]["ContainerDefinitions"]
        if {"Name": "PIPELINE_RETENTION_DAYS", "Value": {"Ref": "RetentionDays"}} in c.get("Environment", [])
    }
    assert {"code", "run"} <= told


def test_production_keeps_compute_logs_in_s3_and_ticks_for_a_bounded_time(monkeypatch):
    """A run's stdout outlives its task (S3, in the template's bucket, which every task that
    writes or shows logs names and may reach); a 5-s sensor's ticks do not grow storage for ever."""
    from dagster._config import process_config
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    monkeypatch.setenv("PIPELINE_COMPUTE_LOG_BUCKET", "dmarc-pipeline-compute-logs-1")
    config = _load(PROD_INSTANCE)
    logs = config["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    checked = process_config(S3ComputeLogManager.config_type(), logs["config"])
    assert checked.success, checked.errors
    assert checked.value["bucket"] == "dmarc-pipeline-compute-logs-1"
    retention = config["retention"]
    for kind in ("schedule", "sensor", "auto_materialize"):
        days = retention[kind]["purge_after_days"]
        assert all(0 < days[status] <= 30 for status in ("skipped", "success", "failure")), (kind, days)
    template = _load(COMPUTE)
    resources = template["Resources"]
    assert resources["ComputeLogBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 30
    for task in ("CodeLocationTask", "DaemonTask", "WebserverTask", "RunTask"):
        env = resources[task]["Properties"]["ContainerDefinitions"][0]["Environment"]
        assert any(e["Name"] == "PIPELINE_COMPUTE_LOG_BUCKET" for e in env), task
    for role in ("DaemonTaskRole", "RunTaskRole", "WebserverTaskRole"):
        statements = resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        assert any(st.get("Sid") == "ComputeLogs" for st in statements), role


def test_the_dagster_ui_is_reached_only_through_oidc_authentication():
    """Dagster's webserver authenticates nobody: the template puts it behind an internal load
    balancer whose only listener authenticates every request (OIDC) before forwarding it, and the
    webserver's port admits the load balancer alone."""
    resources = _load(COMPUTE)["Resources"]
    listeners = [r for r in resources.values() if r["Type"] == "AWS::ElasticLoadBalancingV2::Listener"]
    assert len(listeners) == 1
    [listener] = listeners
    assert listener["Properties"]["Protocol"] == "HTTPS"
    first, second = sorted(listener["Properties"]["DefaultActions"], key=lambda a: a["Order"])
    assert first["Type"] == "authenticate-oidc" and second["Type"] == "forward"
    oidc = first["AuthenticateOidcConfig"]
    assert oidc["OnUnauthenticatedRequest"] == "authenticate"
    assert "{{resolve:secretsmanager:" in oidc["ClientSecret"]["Fn::Sub"]  # never a parameter's value
    assert resources["UiLoadBalancer"]["Properties"]["Scheme"] == "internal"
    ingress = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    webserver_ingress = [i for i in ingress if i["FromPort"] <= 3000 <= i["ToPort"]]
    assert [i["SourceSecurityGroupId"] for i in webserver_ingress] == [{"Ref": "UiSecurityGroup"}]
    inline = resources["TaskSecurityGroup"]["Properties"].get("SecurityGroupIngress", [])
    assert inline == []  # no other way in
    service = resources["WebserverService"]["Properties"]
    assert service["LoadBalancers"][0]["TargetGroupArn"] == {"Ref": "UiTargetGroup"}
