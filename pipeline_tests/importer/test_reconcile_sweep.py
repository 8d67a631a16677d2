"""The reconciler's bounded sweep (issue #22): each tick picks the next slices (one customer's
day each) with a few prefix listings, whatever the number of objects; round after round every
slice is visited once; the heavy comparison runs in a run of import_reconcile_job."""

from __future__ import annotations

import uuid

from pipeline.importer.reconcile import next_slices


class Counting:
    """An S3 client that counts its list calls and the objects they returned."""

    def __init__(self, s3):
        self.s3, self.calls, self.keys = s3, 0, 0

    def list_objects_v2(self, **kwargs):
        self.calls += 1
        page = self.s3.list_objects_v2(**kwargs)
        self.keys += len(page.get("Contents", []))
        return page


def _layout(s3, bucket: str, root: str, customers: int, days: int, objects: int) -> list[str]:
    slices = []
    for c in range(customers):
        for d in range(days):
            prefix = f"{root}customer=c{c:02d}/dt=2026-11-{d + 1:02d}/"
            slices.append(prefix)
            for o in range(objects):
                s3.put_object(Bucket=bucket, Key=f"{prefix}part-{o:05d}.parquet", Body=b"x")
    s3.put_object(Bucket=bucket, Key=f"{root}not-a-customer/file", Body=b"x")  # never a slice
    return sorted(slices)


def _sweep(s3, bucket: str, root: str, limit: int) -> tuple[list[str], list[int]]:
    seen, calls, after = [], [], None
    while True:
        counting = Counting(s3)
        slices, after = next_slices(counting, bucket, root, after, limit)
        seen += slices
        calls.append(counting.calls)
        assert counting.keys == 0  # prefixes only: objects are never listed by the planner
        if after is None:
            return seen, calls


def test_a_sweep_visits_every_slice_once_in_bounded_steps(stack, clients):
    s3 = clients("s3")
    root = f"sweep-{uuid.uuid4().hex[:8]}/"
    expected = _layout(s3, stack.enriched_bucket, root, customers=4, days=3, objects=2)
    seen, calls = _sweep(s3, stack.enriched_bucket, root, limit=5)
    assert seen == expected
    assert max(calls) <= 5 + 3  # at most one listing per slice's customer, plus the customer listings
    again, _ = _sweep(s3, stack.enriched_bucket, root, limit=5)  # the next round starts over
    assert again == expected


def test_a_ticks_cost_does_not_grow_with_the_objects_held(stack, clients):
    s3 = clients("s3")
    small, large = (f"sweep-{uuid.uuid4().hex[:8]}/" for _ in range(2))
    _layout(s3, stack.enriched_bucket, small, customers=3, days=2, objects=1)
    _layout(s3, stack.enriched_bucket, large, customers=3, days=2, objects=60)
    _, few = _sweep(s3, stack.enriched_bucket, small, limit=4)
    _, many = _sweep(s3, stack.enriched_bucket, large, limit=4)
    assert few == many  # the same listings, sixty times the objects


def test_an_empty_prefix_has_nothing_to_sweep(stack, clients):
    assert next_slices(clients("s3"), stack.enriched_bucket, f"sweep-{uuid.uuid4().hex[:8]}/", None, 10) == ([], None)
