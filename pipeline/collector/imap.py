"""The rua mailbox over IMAP: `pipeline collect --customer ID --imap`.

Host, port, user, password and folder come from ``PIPELINE_IMAP_*`` (pipeline/config.py); TLS
(IMAPS) by default. Every message of the folder is fetched without marking it read
(``BODY.PEEK[]``), collected like a file, and only then moved (``UID MOVE``, or copy + delete +
expunge where the server lacks MOVE) to ``Archive`` or, when it is no readable report, to
``Invalid``. Nothing is deleted otherwise. A connection dropped before the moves moves nothing,
and the next run reads the same messages again: their reports are in S3 already (same identity,
conditional PUT), so none is collected twice.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import config
from pipeline.collector.inputs import DEFAULT_LIMITS, Limits
from pipeline.collector.maildir import ARCHIVE, MaildirSummary, collect_messages
from pipeline.collector.spool import Spool
from pipeline.config import ConfigurationError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImapMailbox:
    host: str
    user: str
    password: str
    port: int | None = None
    folder: str = "INBOX"
    tls: bool = True
    archive: str = "Archive"
    invalid: str = "Invalid"

    @classmethod
    def from_config(cls) -> ImapMailbox:
        missing = [
            n for n in ("PIPELINE_IMAP_HOST", "PIPELINE_IMAP_USER", "PIPELINE_IMAP_PASSWORD") if not config.get(n)
        ]
        if missing:
            raise ConfigurationError(f"--imap needs {', '.join(missing)}: the rua mailbox's server and account.")
        return cls(
            host=config.get("PIPELINE_IMAP_HOST"),
            user=config.get("PIPELINE_IMAP_USER"),
            password=config.get("PIPELINE_IMAP_PASSWORD"),
            port=config.get("PIPELINE_IMAP_PORT"),
            folder=config.get("PIPELINE_IMAP_FOLDER"),
            tls=config.get("PIPELINE_IMAP_TLS"),
        )

    def connect(self) -> imaplib.IMAP4:
        port = self.port or (993 if self.tls else 143)
        try:
            if self.tls:
                conn = imaplib.IMAP4_SSL(self.host, port, ssl_context=ssl.create_default_context(), timeout=30)
            else:
                conn = imaplib.IMAP4(self.host, port, timeout=30)
            conn.login(self.user, self.password)
            # what the server offers once logged in (MOVE among them), not its greeting's short list
            conn.capabilities = tuple(_ok(conn.capability(), "CAPABILITY")[0].decode().upper().split())
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ConfigurationError(
                f"IMAP {self.user}@{self.host}:{port} ({'TLS' if self.tls else 'plain'}): {exc}; check "
                "PIPELINE_IMAP_HOST/PORT/USER/PASSWORD (and PIPELINE_IMAP_TLS)"
            ) from None
        return conn

    def where(self) -> str:
        return f"imap://{self.user}@{self.host}/{self.folder}"


def _ok(response: tuple, what: str) -> list:
    status, data = response
    if status != "OK":
        raise imaplib.IMAP4.error(f"{what}: {status} {data!r}")
    return data


def fetch_all(conn: imaplib.IMAP4, mailbox: ImapMailbox, folder: Path) -> list[tuple[str, Path]]:
    """Every message of the mailbox's folder, none marked read, each written to a file in
    ``folder`` as it arrives: (name, file) pairs."""
    _ok(conn.select(_quote(mailbox.folder)), f"SELECT {mailbox.folder}")
    uids = _ok(conn.uid("SEARCH", None, "ALL"), "SEARCH")[0].split()
    messages = []
    for uid in uids:
        data = _ok(conn.uid("FETCH", uid, "(BODY.PEEK[])"), f"FETCH {uid!r}")
        path = folder / f"{uid.decode()}.eml"  # the reader takes a file; the name says it is an e-mail
        path.write_bytes(next(part[1] for part in data if isinstance(part, tuple)))
        messages.append((f"{mailbox.where()}/{uid.decode()}", path))
    return messages


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def collect_imap(
    mailbox: ImapMailbox,
    customer_id: str,
    settings: Settings,
    spool: Spool,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    s3=None,
) -> MaildirSummary:
    """Collect the folder's messages, then move each to Archive or Invalid."""
    conn = mailbox.connect()
    try:
        for folder in (mailbox.archive, mailbox.invalid):
            conn.create(_quote(folder))  # NO when it exists already: fine
        can_move = "MOVE" in conn.capabilities

        def move(name: str, folder: str) -> None:
            uid = name.rsplit("/", 1)[-1]
            target = _quote(mailbox.archive if folder == ARCHIVE else mailbox.invalid)
            if can_move:
                _ok(conn.uid("MOVE", uid, target), f"MOVE {uid}")
            else:
                _ok(conn.uid("COPY", uid, target), f"COPY {uid}")
                _ok(conn.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"), f"STORE {uid}")
                _ok(conn.uid("EXPUNGE", uid), f"EXPUNGE {uid}")

        with tempfile.TemporaryDirectory(prefix="pipeline-imap-") as staging:
            messages = fetch_all(conn, mailbox, Path(staging))
            return collect_messages(messages, move, mailbox.where(), customer_id, settings, spool, limits, progress, s3)
    finally:
        _logout(conn)


def _logout(conn: imaplib.IMAP4) -> None:
    with contextlib.suppress(OSError, imaplib.IMAP4.error):  # the connection may be gone already
        conn.logout()
