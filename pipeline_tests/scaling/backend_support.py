"""Fixtures for the capacity backends: one real pool per backend, one private queue per test."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace

from pipeline.scaling.backends import AutoScalingGroupBackend, EcsServiceBackend, LocalWorkerPool
from pipeline_tests.support import enriched_key, put_enriched


def private_queue(sqs, name: str) -> str:
    return sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]


def s3_event(bucket: str, key: str, etag: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-11-26T00:00:00.000Z",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 1}},
                }
            ]
        }
    )


def flood(settings, s3, sqs, queue_url: str, customer_id: str, objects: int, rows: int = 20) -> list[str]:
    """Write ``objects`` enriched objects and notify ``queue_url`` of each (the bucket's own
    notifications go to the shared queue; the caller drops them there)."""
    keys = []
    for n in range(objects):
        key = enriched_key(settings, customer_id, f"part-{n:04d}.parquet")
        etag = put_enriched(s3, settings, key, rows=rows, seed=n, customer_id=customer_id)
        sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings.enriched_bucket, key, etag))
        keys.append(key)
    return keys


def make_backend(kind: str, clients, settings, folder) -> object:
    suffix = uuid.uuid4().hex[:8]
    if kind == "local":
        env = {**os.environ, **settings.process_env(), "PIPELINE_HOME": os.environ["PIPELINE_HOME"]}
        return LocalWorkerPool(folder, env=env)
    if kind == "ecs":
        ecs = clients("ecs")
        cluster = f"workers-{suffix}"
        ecs.create_cluster(clusterName=cluster)
        ecs.register_task_definition(
            family=f"importer-{suffix}",
            containerDefinitions=[{"name": "importer", "image": "pipeline:latest", "memory": 512}],
        )
        ecs.create_service(cluster=cluster, serviceName="importer", taskDefinition=f"importer-{suffix}", desiredCount=0)
        return EcsServiceBackend(ecs, cluster, "importer")
    ec2, autoscaling = clients("ec2"), clients("autoscaling")
    template = f"importer-{suffix}"
    ec2.create_launch_template(
        LaunchTemplateName=template, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.medium"}
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=f"importers-{suffix}",
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        MinSize=0,
        MaxSize=10,
        DesiredCapacity=0,
        AvailabilityZones=[f"{settings.region}a"],
    )
    return AutoScalingGroupBackend(autoscaling, f"importers-{suffix}")


def with_queue(settings, queue_url: str):
    return replace(settings, queue_url=queue_url)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
