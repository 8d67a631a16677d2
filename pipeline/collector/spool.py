"""The collector's durable spool: what is collected is on local disk until S3 has it.

Each pending object is two files, written atomically (temp file + fsync + rename): the gzip
body and a JSON sidecar with its key and metadata; the directory is fsynced once a collection
has spooled (``sync``), so the renames outlive a power loss too. An upload removes them only
after S3 answered. A crash at any point leaves either nothing or a complete pending object.

Collectors that share a spool (two `pipeline collect` at once on one host) take turns to spool
and upload (``locked``): each then uploads what the spool holds and counts what is left, never
another collector's report that is about to be uploaded by it. Reading, the costly part, runs
side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PendingObject:
    key: str
    metadata: dict[str, str]
    body_path: Path
    meta_path: Path

    def body(self) -> bytes:
        return self.body_path.read_bytes()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


class Spool:
    def __init__(self, root: Path):
        self.root = root

    def _paths(self, key: str) -> tuple[Path, Path]:
        # The key never becomes a path: a hash names the files (keys may hold '..', '/', anything).
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.root / f"{name}.jsonl.gz", self.root / f"{name}.json"

    def put(self, key: str, body: bytes, metadata: dict[str, str]) -> PendingObject:
        self.root.mkdir(parents=True, exist_ok=True)
        body_path, meta_path = self._paths(key)
        _atomic_write(body_path, body)
        _atomic_write(meta_path, json.dumps({"key": key, "metadata": metadata}).encode())
        return PendingObject(key, metadata, body_path, meta_path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the spool for a spool-and-upload (an advisory lock on ``<root>/.lock``; the OS
        releases it if the process dies). Not reentrant: take it once per process."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def incoming(self) -> Path:
        """Where a collection writes large reports' bodies as it reads them, before ``adopt``.
        What a crashed collection left there a day ago is removed."""
        folder = self.root / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        stale = time.time() - 86_400
        for leftover in folder.glob("report-*"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
        return folder

    def adopt(self, key: str, body: Path, metadata: dict[str, str]) -> PendingObject:
        """Like ``put``, for a body already on disk (written under ``incoming()``): moved, not copied."""
        self.root.mkdir(parents=True, exist_ok=True)
        body_path, meta_path = self._paths(key)
        with open(body, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(body, body_path)
        _atomic_write(meta_path, json.dumps({"key": key, "metadata": metadata}).encode())
        return PendingObject(key, metadata, body_path, meta_path)

    def pending(self) -> Iterator[PendingObject]:
        if not self.root.exists():
            return
        for meta_path in sorted(self.root.glob("*.json")):
            body_path = meta_path.with_suffix(".jsonl.gz")
            if not body_path.exists():
                meta_path.unlink()  # crashed between the two writes: the sidecar alone is nothing
                continue
            doc = json.loads(meta_path.read_text())
            yield PendingObject(doc["key"], doc["metadata"], body_path, meta_path)

    def sync(self) -> None:
        """Make the spool's renames durable: ``_atomic_write`` fsyncs each file, but a rename lives
        in the directory, and only an fsync of the directory keeps it through a power loss (not
        only a crash). Once per collection, before its messages leave the inbox."""
        if not self.root.exists():
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, item: PendingObject) -> None:
        item.meta_path.unlink(missing_ok=True)
        item.body_path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.pending())
