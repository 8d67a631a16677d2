"""Provision the local AWS endpoint from deploy/cloudformation/pipeline.yaml.

The template goes to moto's CloudFormation first. moto (5.2.x) creates the buckets, topic,
queues, key and redrive policy from it but ignores a bucket's ``NotificationConfiguration`` and
``VersioningConfiguration``, ``AWS::SNS::Subscription`` resources and the bucket, topic and
queue policies, so those are then applied through the service APIs, read from the same
template. There is one description of the infrastructure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "cloudformation" / "pipeline.yaml"
STACK_NAME = "dmarc-pipeline-data"


def load_template(path: Path = TEMPLATE) -> dict:
    if not path.exists():
        raise FileNotFoundError(
            f"Infrastructure template {path} is missing: the local stack is provisioned from "
            "deploy/; run from a checkout of the project (pip install -e .)."
        )
    return yaml.safe_load(path.read_text())


@dataclass
class Resolver:
    """Evaluates the template's intrinsic functions against the created stack."""

    parameters: dict[str, str]
    physical: dict[str, str]  # logical id -> physical id (what Ref returns for resources)
    attributes: dict[tuple[str, str], str]  # (logical id, attribute) -> value
    pseudo: dict[str, str]

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(item) for item in node]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Ref"}:
            return self.ref(node["Ref"])
        if set(node) == {"Fn::GetAtt"}:
            logical, attribute = node["Fn::GetAtt"]
            return self.attributes[(logical, attribute)]
        if set(node) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.ref(m.group(1))), node["Fn::Sub"])
        return {key: self(value) for key, value in node.items()}

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical[name]


def template_parameters(template: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    params = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    params.update(overrides or {})
    return params


def provision(
    session, template_path: Path = TEMPLATE, parameters: dict | None = None, stack_name: str = STACK_NAME
) -> dict:
    """Create (or find) the stack on the endpoint of ``session``; return its outputs.

    ``session`` is a callable ``session(service_name) -> boto3 client``.
    """
    template = load_template(template_path)
    params = template_parameters(template, parameters)
    cfn = session("cloudformation")
    try:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        if stack["StackStatus"] not in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
            cfn.delete_stack(StackName=stack_name)
            raise LookupError
    except (ClientError, LookupError):
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=template_path.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        )
        cfn.get_waiter("stack_create_complete").wait(StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    resolver = stack_resolver(session, template, params, stack_name)
    apply_skipped(session, template, resolver)
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def stack_resolver(session, template: dict, params: dict[str, str], stack_name: str = STACK_NAME) -> Resolver:
    cfn = session("cloudformation")
    resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    # moto lists policies and subscriptions without ids: they are applied by apply_skipped.
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in resources
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
    }
    account = session("sts").get_caller_identity()["Account"]
    region = cfn.meta.region_name
    attributes: dict[tuple[str, str], str] = {}
    sqs = session("sqs")
    for logical, spec in template["Resources"].items():
        if spec["Type"] == "AWS::SQS::Queue" and logical in physical:
            arn = sqs.get_queue_attributes(QueueUrl=physical[logical], AttributeNames=["QueueArn"])
            attributes[(logical, "Arn")] = arn["Attributes"]["QueueArn"]
    pseudo = {"AWS::AccountId": account, "AWS::Region": region, "AWS::Partition": "aws"}
    return Resolver(params, physical, attributes, pseudo)


def bucket_notification(properties: dict) -> dict:
    """A template's NotificationConfiguration as the S3 API wants it."""
    out: dict[str, list] = {}
    kinds = {
        "TopicConfigurations": ("Topic", "TopicArn"),
        "QueueConfigurations": ("Queue", "QueueArn"),
        "LambdaConfigurations": ("Function", "LambdaFunctionArn"),
    }
    for kind, (cfn_key, api_key) in kinds.items():
        for conf in properties.get(kind, []):
            entry = {api_key: conf[cfn_key], "Events": [conf["Event"]]}
            rules = conf.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            if rules:
                entry["Filter"] = {"Key": {"FilterRules": rules}}
            out.setdefault(kind, []).append(entry)
    return out


def _insecure_transport_denial(statement: dict) -> bool:
    condition = statement.get("Condition", {}).get("Bool", {})
    return statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false"


def local_policy(document: dict) -> dict | None:
    """A policy as the local stack applies it: without the statements that deny plain HTTP.

    Production allows TLS only (every bucket, topic and queue policy denies
    ``aws:SecureTransport = false``); the local endpoint is plain HTTP on 127.0.0.1, and moto
    enforces bucket policies, so those statements alone are left out here. None when nothing is
    left to apply.
    """
    statements = [s for s in document.get("Statement", []) if not _insecure_transport_denial(s)]
    return {**document, "Statement": statements} if statements else None


def apply_skipped(session, template: dict, resolve: Resolver) -> None:
    """Apply through the APIs what moto's CloudFormation leaves out.

    Policies and subscriptions first, bucket notifications last: S3 sends its ``s3:TestEvent``
    when a notification is configured, and it should travel the whole path as on AWS.
    """
    resources = sorted(template["Resources"].items(), key=lambda item: item[1]["Type"] == "AWS::S3::Bucket")
    for logical, spec in resources:
        props = resolve(spec.get("Properties", {}))
        kind = spec["Type"]
        if kind == "AWS::S3::Bucket" and "VersioningConfiguration" in props:
            session("s3").put_bucket_versioning(
                Bucket=resolve.physical[logical],
                VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]},
            )
        if kind == "AWS::S3::Bucket" and "NotificationConfiguration" in props:
            session("s3").put_bucket_notification_configuration(
                Bucket=resolve.physical[logical],
                NotificationConfiguration=bucket_notification(props["NotificationConfiguration"]),
            )
        elif kind == "AWS::S3::BucketPolicy" and local_policy(props["PolicyDocument"]):
            session("s3").put_bucket_policy(
                Bucket=props["Bucket"], Policy=json.dumps(local_policy(props["PolicyDocument"]))
            )
        elif kind == "AWS::SNS::TopicPolicy" and local_policy(props["PolicyDocument"]):
            for topic in props["Topics"]:
                session("sns").set_topic_attributes(
                    TopicArn=topic,
                    AttributeName="Policy",
                    AttributeValue=json.dumps(local_policy(props["PolicyDocument"])),
                )
        elif kind == "AWS::SNS::Subscription":
            attributes = {
                name: str(props[name]).lower() if isinstance(props[name], bool) else str(props[name])
                for name in ("RawMessageDelivery", "FilterPolicyScope")
                if name in props
            }
            if "FilterPolicy" in props:
                attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
            sns = session("sns")
            existing = sns.list_subscriptions_by_topic(TopicArn=props["TopicArn"])["Subscriptions"]
            if not any(sub["Endpoint"] == props["Endpoint"] for sub in existing):
                sns.subscribe(
                    TopicArn=props["TopicArn"],
                    Protocol=props["Protocol"],
                    Endpoint=props["Endpoint"],
                    Attributes=attributes,
                )
        elif kind == "AWS::SQS::QueuePolicy" and local_policy(props["PolicyDocument"]):
            for queue_url in props["Queues"]:
                session("sqs").set_queue_attributes(
                    QueueUrl=queue_url, Attributes={"Policy": json.dumps(local_policy(props["PolicyDocument"]))}
                )
