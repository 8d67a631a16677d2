"""`pipeline demo`'s terminal (issue #24, the first look): a progress bar while a stage runs,
replaced by the stage's line; nothing but the lines when the output is not a terminal."""

from __future__ import annotations

import io
import os
import pty

from pipeline.demo import Terminal, _bar


def _read_all(fd: int) -> str:
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_stage_shows_a_bar_on_a_terminal_then_its_line():
    controller, replica = pty.openpty()
    with os.fdopen(replica, "w") as stream:
        terminal = Terminal(stream)
        with _bar(terminal, "enrich", 3) as bar:
            for _ in range(3):
                bar.update(1)
        terminal("  enrich       1.0s  3 enrichment run(s)")
    shown = _read_all(controller)
    os.close(controller)
    assert "  enrich:" in shown and "/3 [" in shown  # the bar was drawn
    assert shown.rstrip().endswith("3 enrichment run(s)")  # and the stage's line follows it


def test_no_bar_when_the_output_is_not_a_terminal():
    stream = io.StringIO()
    terminal = Terminal(stream)
    with _bar(terminal, "import") as bar:
        bar.update(5)
    terminal("  import       1.0s  5 importer run(s) drained the queue")
    assert stream.getvalue() == "  import       1.0s  5 importer run(s) drained the queue\n"
    with _bar(print, "verify", 2) as bar:  # a plain callable (the library's default echo): no bar at all
        bar.update(2)
