"""deploy/ is the one description of the infrastructure: it lints, and the local stack matches it."""

from __future__ import annotations

import json

from pipeline.local.provision import (
    bucket_notification,
    load_template,
    local_policy,
    stack_resolver,
    template_parameters,
)


def test_local_stack_matches_template(stack, clients):
    template = load_template()
    params = template_parameters(template)
    resolve = stack_resolver(clients, template, params)
    resources = template["Resources"]
    sqs, sns, s3 = clients("sqs"), clients("sns"), clients("s3")

    # Buckets, with the notification the template describes.
    bucket_names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for spec in resources.values():
        if spec["Type"] != "AWS::S3::Bucket":
            continue
        props = resolve(spec["Properties"])
        assert props["BucketName"] in bucket_names
        got = s3.get_bucket_notification_configuration(Bucket=props["BucketName"])
        want = bucket_notification(props.get("NotificationConfiguration", {}))
        for kind, entries in want.items():
            strip = [{k: v for k, v in entry.items() if k != "Id"} for entry in got.get(kind, [])]
            assert sorted(strip, key=json.dumps) == sorted(entries, key=json.dumps)
        if not want:
            assert not got.get("TopicConfigurations")
        if "VersioningConfiguration" in props:  # Suspended unless PIPELINE_BUCKET_VERSIONING=1
            status = s3.get_bucket_versioning(Bucket=props["BucketName"]).get("Status")
            assert status == props["VersioningConfiguration"]["Status"]

    # Queues: visibility, retention, long polling and the redrive policy.
    queue = resolve(resources["ImportQueue"]["Properties"])
    attrs = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == str(queue["VisibilityTimeout"])
    assert attrs["ReceiveMessageWaitTimeSeconds"] == str(queue["ReceiveMessageWaitTimeSeconds"])
    assert attrs["MessageRetentionPeriod"] == str(queue["MessageRetentionPeriod"])
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == queue["RedrivePolicy"]["deadLetterTargetArn"]
    assert str(redrive["maxReceiveCount"]) == str(queue["RedrivePolicy"]["maxReceiveCount"])
    dlq = resolve(resources["ImportDeadLetterQueue"]["Properties"])
    dlq_attrs = sqs.get_queue_attributes(QueueUrl=stack.dead_letter_queue_url, AttributeNames=["All"])
    assert dlq_attrs["Attributes"]["MessageRetentionPeriod"] == str(dlq["MessageRetentionPeriod"])

    # Policies as written in the template, but for the TLS-only statements (the local endpoint is
    # plain HTTP on 127.0.0.1: test_the_template_allows_tls_only checks them).
    queue_policy = resolve(resources["ImportQueuePolicy"]["Properties"])["PolicyDocument"]
    assert json.loads(attrs["Policy"]) == local_policy(queue_policy)
    topic_policy = resolve(resources["ImportTopicPolicy"]["Properties"])["PolicyDocument"]
    topic_attrs = sns.get_topic_attributes(TopicArn=stack.topic_arn)["Attributes"]
    assert json.loads(topic_attrs["Policy"]) == local_policy(topic_policy)
    assert topic_attrs["KmsMasterKeyId"] == resolve.physical["ImportTopicKey"]  # the topic's own key

    # The subscription SNS -> SQS, not raw (the importer unwraps the envelope).
    sub = resolve(resources["ImportSubscription"]["Properties"])
    subs = sns.list_subscriptions_by_topic(TopicArn=stack.topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [(sub["Protocol"], sub["Endpoint"])]
    sub_attrs = sns.get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])["Attributes"]
    assert sub_attrs.get("RawMessageDelivery", "false") == str(sub["RawMessageDelivery"]).lower()

    # Every resource type of the template is covered by a check above.
    checked = {
        "AWS::KMS::Key",
        "AWS::S3::BucketPolicy",
        "AWS::S3::Bucket",
        "AWS::SQS::Queue",
        "AWS::SQS::QueuePolicy",
        "AWS::SNS::Topic",
        "AWS::SNS::TopicPolicy",
        "AWS::SNS::Subscription",
    }
    assert {spec["Type"] for spec in resources.values()} <= checked
    assert stack.topic_arn == resolve.physical["ImportTopic"]


def test_the_template_allows_tls_only_and_keeps_dead_letters_longest():
    template = load_template()
    resources = template["Resources"]
    policies = {
        name: spec["Properties"]["PolicyDocument"]
        for name, spec in resources.items()
        if spec["Type"] in {"AWS::S3::BucketPolicy", "AWS::SNS::TopicPolicy", "AWS::SQS::QueuePolicy"}
    }
    protected = set()
    for spec in resources.values():
        if spec["Type"] == "AWS::S3::BucketPolicy":
            protected.add(spec["Properties"]["Bucket"]["Ref"])
        elif spec["Type"] == "AWS::SNS::TopicPolicy":
            protected.update(t["Ref"] for t in spec["Properties"]["Topics"])
        elif spec["Type"] == "AWS::SQS::QueuePolicy":
            protected.update(q["Ref"] for q in spec["Properties"]["Queues"])
    for name, document in policies.items():
        denials = [s for s in document["Statement"] if local_policy({"Statement": [s]}) is None]
        assert denials, f"{name} does not deny insecure transport"
    kinds = {"AWS::S3::Bucket", "AWS::SNS::Topic", "AWS::SQS::Queue"}
    assert protected == {name for name, spec in resources.items() if spec["Type"] in kinds}
    assert resources["ImportTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "ImportTopicKey"}
    queue, dlq = resources["ImportQueue"]["Properties"], resources["ImportDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] and dlq["SqsManagedSseEnabled"]
