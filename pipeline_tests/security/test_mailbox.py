"""One hostile e-mail never stops a mailbox (issue #21, high 1): a Maildir that mixes every
hostile shape with real reports is collected in one cycle; the hostile messages go to .Invalid
with their reasons, the good ones to .Archive, and the service's next cycle starts clean."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from pipeline.collector.maildir import collect_maildir
from pipeline.collector.service import read_status, watch_maildir
from pipeline.collector.spool import Spool
from pipeline_tests.security import hostile
from pipeline_tests.support import REPORTS, SAMPLES


def hostile_maildir(root: Path) -> tuple[Path, set[str], dict[str, str]]:
    """new/ holds every hostile e-mail shape, every hostile archive as an attachment, and two real
    reports; returns the root, the good messages' names and the hostile ones' (message -> shape)."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    good, bad = set(), {}
    for n, name in enumerate(REPORTS):
        message = f"17000000{n:02d}.good{n}.host"
        xml = (SAMPLES / name).read_bytes()
        (root / "new" / message).write_bytes(hostile.email_of(hostile.attachment(xml, "report.xml", "text/xml")))
        good.add(message)
    shapes = {**hostile.mime_shapes()}
    shapes.update(
        {
            f"attached-{name}.eml": hostile.email_of(hostile.attachment(data, name))
            for name, data in hostile.archive_shapes().items()
        }
    )
    for n, (name, data) in enumerate(sorted(shapes.items())):
        message = f"17100000{n:02d}.{name.replace('.', '-')}.host"
        (root / "new" / message).write_bytes(data)
        bad[message] = name
    return root, good, bad


def names(root: Path, folder: str) -> set[str]:
    return {
        p.name.split(":2,")[0]
        for sub in ("new", "cur")
        if (root / folder / sub).is_dir()
        for p in (root / folder / sub).iterdir()
    }


def test_hostile_messages_go_to_invalid_and_every_good_report_is_collected(stack, tmp_path):
    cid = f"h{uuid.uuid4().hex[:8]}"
    root, good, bad = hostile_maildir(tmp_path / "Maildir")
    result = collect_maildir(root, cid, stack, Spool(tmp_path / "spool"))
    assert names(root, ".") == set()  # nothing is left behind to block the next cycle
    assert good <= names(root, ".Archive")
    invalid = {entry["message"].split(":2,")[0]: entry["reason"] for entry in result.invalid}
    # a hostile message is refused with its reason, or it was a well-formed report in a hostile wrapper
    assert set(invalid) | (names(root, ".Archive") - good) == set(bad)
    assert all(reason.strip() for reason in invalid.values())
    by_shape = {shape: invalid.get(message, "") for message, shape in bad.items()}
    assert "is encrypted" in by_shape["encrypted-zip.eml"] and "levels deep" in by_shape["deep-multipart.eml"]
    assert result.collect.reports >= len(good)


def test_the_watching_collector_moves_on_past_a_hostile_message(stack, tmp_path):
    cid = f"h{uuid.uuid4().hex[:8]}"
    root, good, bad = hostile_maildir(tmp_path / "Maildir")
    stop, status_file = threading.Event(), tmp_path / "status.json"
    worker = threading.Thread(
        target=watch_maildir,
        args=(root, cid, stack, Spool(tmp_path / "spool"), 0.2),
        kwargs={"stop": stop, "status_file": status_file},
    )
    worker.start()
    try:
        deadline = threading.Event()
        for _ in range(300):
            status = read_status(status_file)
            if status and status["cycles"] >= 2:
                break
            deadline.wait(0.2)
    finally:
        stop.set()
        worker.join(60)
    status = read_status(status_file)
    assert status["cycles"] >= 2 and status["last_error"] is None, status
    assert status["archived_messages"] + status["invalid_messages"] == len(good) + len(bad)
    assert names(root, ".") == set() and good <= names(root, ".Archive")
