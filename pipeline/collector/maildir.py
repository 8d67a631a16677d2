"""The rua mailbox as a source: `pipeline collect --customer ID --maildir DIR`.

A Maildir (the format Dovecot, Postfix and getmail deliver to) holds one message per file in
``new/`` and ``cur/``. Each message goes through the same reader, spool and upload as a report
file, and only then is moved, by a rename inside the Maildir:

* to ``.Archive/cur/`` once its report is uploaded or durably in the spool (an S3 outage does
  not keep it in the inbox: the spool has it);
* to ``.Invalid/cur/`` when it is not a readable DMARC aggregate report, its reason logged;
* nowhere when the run fails before its report is safe: it is read again next time.

Nothing is deleted. A crash between the spool and the rename leaves the message in the inbox,
and the next run finds its report already in S3 (same identity, conditional PUT): none is
collected twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.collector.collect import CollectSummary, collect
from pipeline.collector.inputs import DEFAULT_LIMITS, Limits, Rejected
from pipeline.collector.spool import Spool
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ARCHIVE, INVALID = ".Archive", ".Invalid"  # Maildir++ folders (IMAP: Archive, Invalid)


@dataclass
class MaildirSummary:
    collect: CollectSummary
    archived: list[str] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.collect.exit_code

    def to_dict(self) -> dict:
        return {**self.collect.to_dict(), "archived": self.archived, "invalid": self.invalid}


def _messages(root: Path) -> list[Path]:
    for sub in ("new", "cur", "tmp"):
        if not (root / sub).is_dir():
            raise Rejected(f"{root}: not a Maildir (no {sub}/ folder); give the folder that holds new/ cur/ tmp/")
    return sorted(p for sub in ("new", "cur") for p in (root / sub).iterdir() if p.is_file())


def _move(message: Path, root: Path, folder: str) -> Path:
    """Rename ``message`` into ``folder``/cur (created as a Maildir++ folder): atomic on one disk."""
    target = root / folder
    for sub in ("new", "cur", "tmp"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    (target / "maildirfolder").touch()
    name = message.name if ":2," in message.name else f"{message.name}:2,S"  # read: it was processed
    destination = target / "cur" / name
    os.rename(message, destination)
    return destination


def collect_messages(
    messages: list[tuple[str, Path]],
    move,
    where: str,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    s3=None,
) -> MaildirSummary:
    """Collect ``messages`` ((name, file holding the raw e-mail) pairs from a mailbox ``where``),
    then call ``move(name, ARCHIVE or INVALID)`` for each: only after every accepted report is
    uploaded or in the spool. An exception before that moves nothing; one during the moves leaves
    the rest in the inbox, read again next time (their reports already in S3: no second object)."""
    names = {str(path): name for name, path in messages}

    def named(text: str) -> str:  # the message's own name in what is reported, not its file's
        for path, name in names.items():
            if path != name:
                text = text.replace(path, name)
        return text

    summary = collect([path for _, path in messages], customer_id, settings, spool, limits, progress, s3)
    # Every accepted report is uploaded or in the spool now: its message can leave the inbox.
    result = MaildirSummary(summary)
    reasons = {r["input"]: r["reason"] for r in summary.rejected}
    for name, path in messages:
        if str(path) in reasons:
            reason = named(reasons[str(path)])
            move(name, INVALID)
            result.invalid.append({"message": name.rsplit("/", 1)[-1], "reason": reason})
            log.warning("collector mailbox=%s message=%s moved=%s reason=%s", where, name, INVALID, reason)
        else:
            move(name, ARCHIVE)
            result.archived.append(name.rsplit("/", 1)[-1])
    summary.rejected = [{"input": named(r["input"]), "reason": named(r["reason"])} for r in summary.rejected]
    summary.duplicates = [named(d) for d in summary.duplicates]
    log.info(
        "collector mailbox=%s messages=%d archived=%d invalid=%d pending=%d",
        where,
        len(messages),
        len(result.archived),
        len(result.invalid),
        summary.pending_in_spool,
    )
    return result


def collect_maildir(
    root: Path,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    s3=None,
) -> MaildirSummary:
    """Collect every message of the Maildir ``root``'s inbox, then archive or invalidate it."""
    messages = [(str(path), path) for path in _messages(root)]  # each message is a file already

    def move(name: str, folder: str) -> None:
        _move(Path(name), root, folder)

    return collect_messages(messages, move, f"maildir:{root}", customer_id, settings, spool, limits, progress, s3)
