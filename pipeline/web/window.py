"""The time window a page, an API route, a CSV export or ``pipeline report`` shows (issue #25).

``?window=7d|30d|90d`` (the last 7, 30 or 90 days, today included, in UTC), ``?from=YYYY-MM-DD``
and/or ``?to=YYYY-MM-DD`` (a custom range, both days included), or ``?window=all`` (every day, the
default). A bounded window has a previous one of the same length, just before it, which the
overview compares it with. Days are the reports' days (the day a report's period begins), as the
daily projections hold them, so a window's figures are sums of those daily rows.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

PRESETS = {"7d": 7, "30d": 30, "90d": 90}
# the open ends of an unbounded window, as SQL compares days: every stored day lies between
FIRST, LAST = dt.date(1, 1, 1), dt.date(9999, 12, 31)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PARAMS = ("window", "from", "to")


class WindowError(ValueError):
    """A window the request names that is not one: the message says what to send instead."""


def _day(name: str, text: str) -> dt.date:
    if not _DAY.fullmatch(text):
        raise WindowError(f"{name}={text[:40]!r} is not a day: send it as YYYY-MM-DD (2026-11-30)")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise WindowError(f"{name}={text!r} is not a day of the calendar: send it as YYYY-MM-DD") from None


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@dataclass(frozen=True)
class Window:
    start: dt.date | None = None
    end: dt.date | None = None
    preset: str = "all"  # all | 7d | 30d | 90d | custom | previous

    @classmethod
    def parse(cls, params: Mapping, on: dt.date | None = None) -> Window:
        preset = str(params.get("window") or "").strip()
        start_text, end_text = (str(params.get(name) or "").strip() for name in ("from", "to"))
        if start_text or end_text:
            if preset and preset != "custom":
                raise WindowError("send either window= (a preset) or from= and to=, not both")
            start = _day("from", start_text) if start_text else None
            end = _day("to", end_text) if end_text else None
            if start and end and start > end:
                raise WindowError(f"from={start} is after to={end}: the window would hold no day")
            return cls(start, end, "custom")
        if not preset or preset == "all":
            return cls()
        if preset not in PRESETS:
            raise WindowError(f"window={preset[:20]!r} is not one of all, {', '.join(PRESETS)} (or send from= and to=)")
        end = on or today()
        return cls(end - dt.timedelta(days=PRESETS[preset] - 1), end, preset)

    @property
    def bounded(self) -> bool:
        return self.start is not None or self.end is not None

    @property
    def bounds(self) -> tuple[dt.date, dt.date]:
        """(first day, last day), both included: the whole calendar when unbounded."""
        return self.start or FIRST, self.end or LAST

    @property
    def days(self) -> int | None:
        return (self.end - self.start).days + 1 if self.start and self.end else None

    def previous(self) -> Window | None:
        """The window of the same length just before this one (None unless both ends are set)."""
        if self.days is None:
            return None
        return Window(self.start - dt.timedelta(days=self.days), self.start - dt.timedelta(days=1), "previous")

    @property
    def query(self) -> str:
        """The query string that names this window ('' for all time)."""
        if self.preset in PRESETS:
            return f"window={self.preset}"
        parts = [f"from={self.start}" if self.start else "", f"to={self.end}" if self.end else ""]
        return "&".join(p for p in parts if p)

    @property
    def label(self) -> str:
        if not self.bounded:
            return "all time"
        span = f"{self.start or '…'} → {self.end or '…'}"
        return f"last {PRESETS[self.preset]} days ({span})" if self.preset in PRESETS else span

    def as_dict(self) -> dict:
        return {
            "preset": self.preset,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "days": self.days,
        }


ALL = Window()
