"""Server-rendered SVG charts: nothing to download, readable without JavaScript, printable.

Every value that reaches the markup is a number or escaped text.
"""

from __future__ import annotations

from html import escape

W, H, PAD = 720, 240, 40


def _empty(message: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(message)}">'
        f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="muted">{escape(message)}</text></svg>'
    )


def compliance_trend(trend: list[dict]) -> str:
    """Daily messages (bars) and DMARC pass rate (line, right axis)."""
    if not trend:
        return _empty("No reports yet: the trend appears after the first import.")
    n = len(trend)
    peak = max(int(d["messages"]) for d in trend) or 1
    step = (W - 2 * PAD) / n
    bars, points = [], []
    for i, day in enumerate(trend):
        x = PAD + i * step
        height = (H - 2 * PAD) * int(day["messages"]) / peak
        rate = int(day["dmarc_pass"]) / int(day["messages"]) if int(day["messages"]) else 0
        label = f"{day['day']}: {int(day['messages'])} messages, {rate:.0%} DMARC pass"
        bars.append(
            f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{H - PAD - height:.1f}" width="{step * 0.8:.1f}" '
            f'height="{height:.1f}"><title>{escape(label)}</title></rect>'
        )
        points.append(f"{x + step / 2:.1f},{H - PAD - (H - 2 * PAD) * rate:.1f}")
    first, last = escape(str(trend[0]["day"])), escape(str(trend[-1]["day"]))
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="Daily messages and DMARC pass rate">'
        f'<line class="axis" x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}"/>'
        f"{''.join(bars)}"
        f'<polyline class="rate" fill="none" points="{" ".join(points)}"/>'
        f'<text x="{PAD}" y="{H - 12}" class="muted">{first}</text>'
        f'<text x="{W - PAD}" y="{H - 12}" text-anchor="end" class="muted">{last}</text>'
        f'<text x="{PAD}" y="{PAD - 12}" class="muted">messages (bars, max {peak}) · DMARC pass rate (line)</text>'
        f'<text x="{W - PAD + 4}" y="{PAD + 4}" class="muted">100%</text>'
        f'<text x="{W - PAD + 4}" y="{H - PAD}" class="muted">0%</text>'
        "</svg>"
    )


def pass_fail_bars(rows: list[dict], label_key: str, limit: int = 10) -> str:
    """Horizontal bars: DMARC pass (green) and fail (red) messages per row (domain, source)."""
    rows = rows[:limit]
    if not rows:
        return _empty("Nothing to chart yet.")
    peak = max(int(r["messages"]) for r in rows) or 1
    row_h = 22
    height = PAD + row_h * len(rows)
    parts = []
    for i, row in enumerate(rows):
        y = 10 + i * row_h
        ok = int(row.get("dmarc_pass", 0))
        bad = int(row["messages"]) - ok
        ok_w = (W - 260) * ok / peak
        bad_w = (W - 260) * bad / peak
        name = escape(str(row.get(label_key) or "(none)"))[:40]
        parts.append(
            f'<text x="0" y="{y + 14}" class="label">{name}</text>'
            f'<rect class="pass" x="220" y="{y}" width="{ok_w:.1f}" height="16"><title>{ok} pass</title></rect>'
            f'<rect class="fail" x="{220 + ok_w:.1f}" y="{y}" width="{bad_w:.1f}" height="16">'
            f"<title>{bad} fail</title></rect>"
            f'<text x="{224 + ok_w + bad_w:.1f}" y="{y + 13}" class="muted">{int(row["messages"])}</text>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {W} {height}" role="img" aria-label="DMARC pass and fail by {label_key}">'
        f"{''.join(parts)}</svg>"
    )
