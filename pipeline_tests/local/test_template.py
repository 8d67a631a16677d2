"""deploy/ is the one description of the infrastructure: it lints, and the local stack matches it."""

from __future__ import annotations

import json

from pipeline.local.provision import (
    bucket_notification,
    load_template,
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

    # Policies as written in the template.
    queue_policy = resolve(resources["ImportQueuePolicy"]["Properties"])["PolicyDocument"]
    assert json.loads(attrs["Policy"]) == queue_policy
    topic_policy = resolve(resources["ImportTopicPolicy"]["Properties"])["PolicyDocument"]
    topic_attrs = sns.get_topic_attributes(TopicArn=stack.topic_arn)["Attributes"]
    assert json.loads(topic_attrs["Policy"]) == topic_policy

    # The subscription SNS -> SQS, not raw (the importer unwraps the envelope).
    sub = resolve(resources["ImportSubscription"]["Properties"])
    subs = sns.list_subscriptions_by_topic(TopicArn=stack.topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [(sub["Protocol"], sub["Endpoint"])]
    sub_attrs = sns.get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])["Attributes"]
    assert sub_attrs.get("RawMessageDelivery", "false") == str(sub["RawMessageDelivery"]).lower()

    # Every resource type of the template is covered by a check above.
    checked = {
        "AWS::S3::Bucket",
        "AWS::SQS::Queue",
        "AWS::SQS::QueuePolicy",
        "AWS::SNS::Topic",
        "AWS::SNS::TopicPolicy",
        "AWS::SNS::Subscription",
    }
    assert {spec["Type"] for spec in resources.values()} <= checked
    assert stack.topic_arn == resolve.physical["ImportTopic"]
