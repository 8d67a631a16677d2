"""S3 event notifications -> object versions (pure; no stack needed)."""

from __future__ import annotations

import json

import pytest

from pipeline.importer.events import UnexpectedMessage, parse_s3_event


def s3_event(
    key: str,
    bucket: str = "b",
    event: str = "ObjectCreated:Put",
    etag: str = "abc",
    version_id: str | None = None,
) -> dict:
    obj = {"key": key, "size": 10, "eTag": etag, "sequencer": "0A"}
    if version_id:
        obj["versionId"] = version_id
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": event,
                "eventTime": "2026-11-01T00:00:00Z",
                "s3": {"bucket": {"name": bucket}, "object": obj},
            }
        ]
    }


def sns(doc: dict) -> str:
    return json.dumps({"Type": "Notification", "Message": json.dumps(doc)})


def test_unwraps_sns_and_decodes_keys():
    parsed = parse_s3_event(sns(s3_event("enriched/a+b%2Cc%C3%A9.parquet")), "b", "enriched/")
    [version] = parsed.versions
    assert version.key == "enriched/a b,cé.parquet"
    assert (version.bucket, version.version, version.etag, version.size) == ("b", "abc", "abc", 10)
    assert not version.removed


def test_raw_delivery_and_version_ids():
    [version] = parse_s3_event(json.dumps(s3_event("enriched/x", version_id="v2"))).versions
    assert version.version == "v2" and version.etag == "abc"


def test_test_event_is_ignored_and_foreign_objects_are_rejected_with_reasons():
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    parsed = parse_s3_event(sns(test_event), "b", "enriched/")
    assert parsed.versions == [] and "TestEvent" in parsed.ignored[0] and parsed.rejected == []
    parsed = parse_s3_event(sns(s3_event("raw/x")), "b", "enriched/")
    assert parsed.versions == [] and "outside the prefix" in parsed.rejected[0]
    parsed = parse_s3_event(sns(s3_event("enriched/x", bucket="other")), "b", "enriched/")
    assert parsed.versions == [] and "bucket is not b" in parsed.rejected[0]


def test_removals_are_versions_that_say_so():
    [version] = parse_s3_event(sns(s3_event("enriched/x", event="ObjectRemoved:Delete", etag=""))).versions
    assert version.removed and version.version.startswith("removed@")


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"hello": 1}),
        json.dumps({"Type": "Notification", "Message": "{broken"}),
        json.dumps({"Records": [{"eventSource": "aws:s3"}]}),
    ],
)
def test_unexpected_messages_are_named(body):
    with pytest.raises(UnexpectedMessage):
        parse_s3_event(body)
