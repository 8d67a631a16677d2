"""Gzip as reports and raw objects carry it: every member, a bounded chunk at a time."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

GZIP_MAGIC = b"\x1f\x8b"


def gunzip_chunks(data: bytes, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member of ``data``, at most ``chunk`` at a time (a
    bomb never sits in memory whole). Bytes after the last member that are no gzip member
    (padding, a mail gateway's trailer) end the stream, as they do for parsedmarc. A damaged
    member raises ``zlib.error``, a truncated one ``EOFError``."""
    rest = data
    while rest[:2] == GZIP_MAGIC:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while pending and not inflater.eof:
            out = inflater.decompress(pending, chunk)
            pending = inflater.unconsumed_tail
            if out:
                yield out
        while not inflater.eof:  # the member's input is all read: flush what it holds
            out = inflater.decompress(b"", chunk)
            if not out:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            yield out
        rest = inflater.unused_data
