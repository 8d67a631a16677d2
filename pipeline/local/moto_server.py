"""moto's server, as the local stack runs it: with SQS ReceiveMessage in linear time.

moto (5.x) checks each message it is about to return against the queue's retention period by
computing *every* queue attribute, and two of those (ApproximateNumberOfMessages...) walk the
whole queue: a receive of 10 messages costs O(10 x messages held). With 2,000 messages queued
or in flight that is ~0.9 s per ReceiveMessage on this machine (0.09 s with 200), against tens
of milliseconds on SQS. It made any consumer that keeps many messages in flight (the import
sensor, by design) look slower than one that does not, for a reason that is not in AWS.

The fix reads the retention period the check needs and nothing else; behaviour is unchanged.
SendMessage had the same disease (it reads every attribute for one flag; each count asked the
clock twice per message held): the counts now take one clock reading per call.

Versioned buckets: moto's S3 event records leave out the ``versionId`` that S3 sends for a
versioned bucket, and moto sends no event when a delete creates a delete marker, or when one of
several versions of a key is deleted; S3 sends ``ObjectRemoved:DeleteMarkerCreated`` and
``ObjectRemoved:Delete``. The local stack sends them as S3 does, so a versioned enriched bucket
(PIPELINE_BUCKET_VERSIONING=1) notifies the importer of every change, as in production. (moto's
records still carry no ``sequencer``; tests that need one build their events by hand.)

Request dispatch: moto's server picks each request's backend under one process-wide lock, and
inside it lists moto's package directory (``os.listdir`` and ~150 ``isdir`` calls) every time:
half of the server's time in a collector's burst of uploads, and every other request queued
behind it. The list is the installed package's and does not change: it is read once.

SNS deliveries: moto builds and signs a new X.509 certificate for every message it delivers, and
keeps every one in memory (a leak that grows with the messages sent, ~8% of the server's time in
an upload burst). A subscription's certificate is built once now; each message is still signed.

Connections: werkzeug answers every request with ``Connection: close``, so every request to the
local stack was a new TCP connection and a new server thread. Connections stay open now, as they
do on AWS (each request's body read to its length before the next is parsed; TCP_NODELAY, since
headers and body go as two writes): 476-507 small PUTs/s against 346-404 (8 threads).

``python -m pipeline.local.moto_server`` takes moto.server's arguments.
"""

from __future__ import annotations

import sys


def patch_sqs() -> None:
    from moto.core.utils import unix_time, unix_time_millis
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self, queue_name: str, message) -> bool:
        queue = self.get_queue(queue_name)
        return int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period

    # SendMessage reads queue.attributes (for ContentBasedDeduplication), which counts the queue's
    # messages three times, each message asking the clock twice: ~50 us per message held, so a
    # send took 0.1 s with 2,000 messages queued. The counts are the same from one clock reading.
    from moto.sqs.models import Queue

    def counts(queue) -> tuple[int, int, int]:
        now = unix_time_millis()
        visible = delayed = ready = 0
        for message in queue._messages:
            is_visible, is_delayed = now > message.visible_at, now < message.delayed_until
            visible += is_visible
            delayed += is_delayed
            ready += is_visible and not is_delayed
        return ready, len(queue._messages) - visible, delayed

    def messages(self) -> list:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    Queue.approximate_number_of_messages = property(lambda self: counts(self)[0])
    Queue.approximate_number_of_messages_not_visible = property(lambda self: counts(self)[1])
    Queue.approximate_number_of_messages_delayed = property(lambda self: counts(self)[2])
    Queue.messages = property(messages)


def patch_s3_versioned_events() -> None:
    from moto.s3 import notifications
    from moto.s3.models import FakeDeleteMarker, S3Backend

    original_event = notifications._get_s3_event

    def get_s3_event(event_name, bucket, key, notification_id):
        if isinstance(key, FakeDeleteMarker):  # no bytes: S3 names the key and the marker's version
            body = original_event(event_name, bucket, key.key, notification_id)
            body["Records"][0]["s3"]["object"] = {"key": body["Records"][0]["s3"]["object"]["key"]}
        else:
            body = original_event(event_name, bucket, key, notification_id)
        if bucket.is_versioned and getattr(key, "version_id", None):
            body["Records"][0]["s3"]["object"]["versionId"] = str(key.version_id)
        return body

    notifications._get_s3_event = get_s3_event
    original_delete = S3Backend.delete_object

    def delete_object(self, bucket_name, key_name, version_id=None, bypass=False):
        bucket = self.get_bucket(bucket_name)
        versioned = bucket.is_versioned
        target = None
        if versioned and version_id is not None:
            target = next((k for k in bucket.keys.getlist(key_name, []) if str(k.version_id) == str(version_id)), None)
        deleted, meta = original_delete(self, bucket_name, key_name, version_id, bypass)
        if versioned and deleted:
            if version_id is None:
                marker = bucket.keys.get(key_name)
                if isinstance(marker, FakeDeleteMarker):
                    notifications.send_event(
                        self.account_id,
                        notifications.S3NotificationEvent.OBJECT_REMOVED_DELETE_MARKER_CREATED_EVENT,
                        bucket,
                        marker,
                    )
            elif target is not None and not isinstance(target, FakeDeleteMarker) and bucket.keys.getlist(key_name, []):
                notifications.send_event(  # moto notifies only when the last version goes
                    self.account_id, notifications.S3NotificationEvent.OBJECT_REMOVED_DELETE_EVENT, bucket, target
                )
        return deleted, meta

    S3Backend.delete_object = delete_object


def patch_dispatch() -> None:
    from moto import backends

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


def patch_sns_signing() -> None:
    import base64
    from datetime import timedelta

    import cryptography.x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.x509 import Name, NameAttribute
    from cryptography.x509.oid import NameOID
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import iso_8601_datetime_with_milliseconds, utcnow
    from moto.moto_api._internal import mock_random
    from moto.sns.models import Subscription, sns_backends

    def certificate(self) -> str:
        """The subscription's signing certificate, built and published once: its PEM's name."""
        if getattr(self, "_pipeline_cert_name", None) is None:
            key = self.private_key()
            issuer = [
                NameAttribute(NameOID.COUNTRY_NAME, "US"),
                NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
                NameAttribute(NameOID.COMMON_NAME, "Amazon RSA 2048 M01"),
            ]
            cert = (
                cryptography.x509.CertificateBuilder()
                .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")]))
                .issuer_name(Name(issuer))
                .public_key(key.public_key())
                .serial_number(cryptography.x509.random_serial_number())
                .not_valid_before(utcnow())
                .not_valid_after(utcnow() + timedelta(days=365))
                .sign(key, hashes.SHA256())
            )
            name = f"SimpleNotificationService-{str(mock_random.uuid4()).replace('-', '')}.pem"
            region = self.topic.sns_backend.region_name
            keys = sns_backends[DEFAULT_ACCOUNT_ID][region]._message_public_keys
            keys[name] = cert.public_bytes(serialization.Encoding.PEM)
            self._pipeline_cert_name = name
        return self._pipeline_cert_name

    def get_post_data(self, message, message_id, subject, message_attributes=None) -> dict:
        name = certificate(self)
        region = self.topic.sns_backend.region_name
        timestamp = iso_8601_datetime_with_milliseconds()
        signed = f"Message\n{message}\nMessageId\n{message_id}\nTimestamp\n{timestamp}\nTopicArn\n{self.topic.arn}\n"
        signed += "Type\nNotification\n"
        signature = self.private_key().sign(signed.encode("UTF-8"), padding.PKCS1v15(), hashes.SHA256())
        post_data = {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": self.topic.arn,
            "Message": message,
            "Timestamp": timestamp,
            "SignatureVersion": "2",
            "Signature": base64.b64encode(signature).decode("utf-8"),
            "SigningCertURL": f"https://sns.{region}.amazonaws.com/{name}",
            "UnsubscribeURL": f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={self.arn}",
        }
        if subject:
            post_data["Subject"] = subject
        if message_attributes:
            post_data["MessageAttributes"] = message_attributes
        return post_data

    Subscription.get_post_data = get_post_data


class _NoDrain:
    """werkzeug's ``selectors`` as its request handler sees it: after each response it reads the
    socket for 10 ms to discard what the client may still send (safe only because it closes every
    connection). With connections kept alive that would swallow the client's next request; the
    body is drained by its length instead (``patch_keep_alive``)."""

    EVENT_READ = 1

    class DefaultSelector:
        def register(self, *args) -> None:
            pass

        def select(self, timeout=None) -> list:
            return []

        def close(self) -> None:
            pass


def patch_keep_alive() -> None:
    """Keep HTTP/1.1 connections open between requests, as S3, SQS and SNS do. werkzeug, moto's
    server, answers every request with ``Connection: close``: each request is then a new TCP
    connection and a new server thread (6,000 sockets in TIME-WAIT after a 400-report collect).
    A request's body is read to its declared length (or its last chunk) before the next request
    is parsed, which is what werkzeug's close-after-each-response stood in for."""
    import socket

    import werkzeug.serving as serving
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler
    from werkzeug.wsgi import LimitedStream

    serving.selectors = _NoDrain
    send_header = MotoRequestHandler.send_header

    def keep_alive_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and not self.close_connection:
            return  # the client did not ask to close: the connection stays open
        send_header(self, keyword, value)

    MotoRequestHandler.send_header = keep_alive_header
    setup = MotoRequestHandler.setup

    def no_delay(self) -> None:  # headers and body go as separate writes: Nagle would hold the second
        setup(self)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    MotoRequestHandler.setup = no_delay
    dispatch = DomainDispatcherApplication.__call__

    def drained(self, environ, start_response):
        if not environ.get("wsgi.input_terminated"):  # a chunked body is bounded by its last chunk
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"] = LimitedStream(environ["wsgi.input"], length)
            environ["wsgi.input_terminated"] = True
        body = environ["wsgi.input"]
        try:
            return dispatch(self, environ, start_response)
        finally:
            while body.read(1 << 16):  # what the handler left unread: the next request follows it
                pass

    DomainDispatcherApplication.__call__ = drained


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    patch_sqs()
    patch_s3_versioned_events()
    patch_dispatch()
    patch_sns_signing()
    patch_keep_alive()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
