"""The local stack's moto server: SQS receive in linear time, retention still honoured; request
dispatch without a directory listing; one SNS signing certificate per subscription."""

import base64
import json
import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.sqs import models

from pipeline.local.moto_server import patch_dispatch, patch_sns_signing, patch_sqs


@pytest.fixture
def patched_sqs(monkeypatch):
    monkeypatch.setattr(
        models.SQSBackend,
        "is_message_valid_based_on_retention_period",
        models.SQSBackend.is_message_valid_based_on_retention_period,
    )  # restored after the test
    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_not_visible",
        "approximate_number_of_messages_delayed",
        "messages",
    ):
        monkeypatch.setattr(models.Queue, name, getattr(models.Queue, name))
    patch_sqs()
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def test_receive_does_not_compute_every_queue_attribute(patched_sqs, monkeypatch):
    url = patched_sqs.create_queue(QueueName="linear")["QueueUrl"]
    for _ in range(20):
        patched_sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": json.dumps({"n": i})} for i in range(10)]
        )
    walks = []
    original = models.Queue.attributes
    monkeypatch.setattr(models.Queue, "attributes", property(lambda q: walks.append(1) or original.fget(q)))
    got = patched_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(got) == 10
    assert walks == []  # unpatched moto walks the queue's attributes once per message returned


def test_a_send_reads_the_clock_once_per_count_not_once_per_message(patched_sqs, monkeypatch):
    url = patched_sqs.create_queue(QueueName="sends")["QueueUrl"]
    for _ in range(30):
        patched_sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "{}"} for i in range(10)])
    patched_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)  # some in flight
    readings = []
    original = models.unix_time_millis
    monkeypatch.setattr(models, "unix_time_millis", lambda *a: readings.append(1) or original(*a))
    patched_sqs.send_message(QueueUrl=url, MessageBody="one more", DelaySeconds=5)
    assert len(readings) < 20  # unpatched moto reads the clock twice per message held: ~1,200 here
    attrs = patched_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    counts = [attrs[f"ApproximateNumberOfMessages{s}"] for s in ("", "NotVisible", "Delayed")]
    assert counts == ["290", "10", "1"]  # the same counts as before


def test_expired_messages_are_still_not_delivered(patched_sqs):
    url = patched_sqs.create_queue(QueueName="retention", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    patched_sqs.send_message(QueueUrl=url, MessageBody="old")
    backend = models.sqs_backends["123456789012"]["us-east-1"]
    for message in backend.get_queue("retention")._messages:
        message.sent_timestamp -= 61_000  # sent 61 s ago: past the 60 s retention
    assert patched_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []) == []
    patched_sqs.send_message(QueueUrl=url, MessageBody="new")
    got = patched_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in got] == ["new"]


def test_dispatch_lists_motos_modules_once(monkeypatch):
    from moto import backends

    monkeypatch.setattr(backends, "list_of_moto_modules", backends.list_of_moto_modules)  # restored after
    expected = set(backends.list_of_moto_modules())
    patch_dispatch()
    listings = []
    original = backends.os.listdir
    monkeypatch.setattr(backends.os, "listdir", lambda *a: listings.append(a) or original(*a))
    for _ in range(3):
        assert "s3" in backends.list_of_moto_modules() and "sqs" in backends.list_of_moto_modules()
    assert set(backends.list_of_moto_modules()) == expected
    assert listings == []  # unpatched moto lists its package directory on every request


def test_sns_deliveries_share_one_certificate_and_are_still_signed(monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from moto.sns import models as sns_models

    monkeypatch.setattr(sns_models.Subscription, "get_post_data", sns_models.Subscription.get_post_data)
    patch_sns_signing()
    with mock_aws():
        sns, sqs = boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="signed")["TopicArn"]
        url = sqs.create_queue(QueueName="deliveries")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        for n in range(5):
            sns.publish(TopicArn=topic, Message=f"message {n}")
        got = []
        while len(got) < 5:
            got += [
                json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
            ]
        keys = sns_models.sns_backends["123456789012"]["us-east-1"]._message_public_keys
        urls = {m["SigningCertURL"] for m in got}
        assert len(urls) == 1 and len(keys) == 1  # unpatched moto builds and keeps one per message
        certificate = x509.load_pem_x509_certificate(keys[urls.pop().rsplit("/", 1)[1]])
        for m in got:
            signed = (
                f"Message\n{m['Message']}\nMessageId\n{m['MessageId']}\nTimestamp\n{m['Timestamp']}\n"
                f"TopicArn\n{m['TopicArn']}\nType\nNotification\n"
            )
            certificate.public_key().verify(  # raises when the signature is wrong
                base64.b64decode(m["Signature"]), signed.encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        assert sorted(m["Message"] for m in got) == [f"message {n}" for n in range(5)]


def test_the_stack_runs_the_patched_server(stack, pipeline_home):
    """`pipeline up` starts moto through pipeline.local.moto_server, not moto.server."""
    pid = (pipeline_home / "moto.pid").read_text().strip()
    # /proc, not `ps -o args=`: without a terminal ps cuts the line at 80 columns, and in a deep
    # checkout the module name falls past the cut.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"pipeline.local.moto_server" in argv, argv


def test_connections_stay_open_and_each_body_is_read_to_its_end(stack):
    """One connection carries request after request (werkzeug closed each after one), including
    after a request whose body the server refused without storing it: the body is read to its
    length, so the next request is parsed from where it begins."""
    import http.client
    from urllib.parse import urlparse

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    where = urlparse(stack.aws_endpoint_url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    key = f"/{stack.raw_bucket}/keep-alive-{os.getpid()}"

    def ask(method: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, str]:
        request = AWSRequest(method, stack.aws_endpoint_url + key, data=body or b"", headers=headers or {})
        credentials = Credentials(stack.aws_access_key_id, stack.aws_secret_access_key)
        S3SigV4Auth(credentials, "s3", stack.region).add_auth(request)  # signed as boto3 signs
        conn.request(method, key, body=body, headers=dict(request.headers))
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Connection") or ""

    assert ask("PUT", b"x" * 1000)[0] == 200
    first = conn.sock
    status, _, connection = ask("PUT", b"y" * 70_000, {"If-None-Match": "*"})  # refused: the key exists
    assert status == 412 and connection.lower() != "close"
    status, body, _ = ask("GET")
    assert (status, body) == (200, b"x" * 1000)
    assert conn.sock is first  # http.client opens a new socket when the server closed the last one
    assert ask("DELETE")[0] == 204
    conn.close()
