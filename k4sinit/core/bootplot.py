"""The boot as an SVG timeline (``k4sinit analyze plot``), hand-written.

One row per stage of PID 1 (blue), then one per unit in the order they started:
waiting for its dependencies (grey), started until ready or completed
(orange), then ready (green) to the plot's end. Names sit in a column of their
own on the left, so no bar covers a label; each bar's duration is written at
its right end (at its left where the plot ends). The time axis is in seconds
since the timeline's origin, with a grid line at every tick.

Pure: builds a string from :class:`~k4sinit.core.timeline.TimelineJSON`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from k4sinit.core.analysis import Unit, since, units
from k4sinit.core.timeline import TimelineJSON

FONT = 12  # px
CHAR = 7.0  # px: a generous width of one character at FONT (DejaVu Sans, Helvetica)
ROW = 22  # px from one row to the next
BAR = 14  # px: a bar's height
PLOT_WIDTH = 1000  # px: the time axis
MARGIN = 16  # px around everything
HEADER = 112  # px: title, legend and the axis labels above the rows
NOTE_ROOM = 120  # px right of the time axis, for the note after a bar that ends there

COLORS = {
    "stage": "#4a7fc1",
    "waiting": "#d9d9d9",
    "starting": "#f0a030",
    "ready": "#9fd49a",
}
LEGEND = (
    ("stage", "k4sinit's own stage"),
    ("waiting", "waiting for dependencies"),
    ("starting", "started, not yet ready (a one-shot: until it completed)"),
    ("ready", "ready"),
)


@dataclass(frozen=True, slots=True)
class _Bar:
    start: float
    end: float
    color: str


@dataclass(frozen=True, slots=True)
class _Row:
    label: str
    bars: tuple[_Bar, ...]
    note: str  # written after the last coloured span that is not "ready"
    note_at: float


def plot(data: TimelineJSON) -> str:
    """The SVG document (UTF-8 text) of the timeline ``data``."""
    origin = data["origin"]
    found = units(data)
    end = _end(data, found)
    stages = _stage_rows(data)
    rows = stages + _unit_rows(found, end)
    label_width = max([len(r.label) for r in rows] + [10]) * CHAR + 12
    left = MARGIN + label_width
    scale = PLOT_WIDTH / end if end > 0 else 1.0
    width = left + PLOT_WIDTH + NOTE_ROOM + MARGIN
    height = HEADER + ROW * len(rows) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" font-family="DejaVu Sans, Helvetica, Arial, '
        f'sans-serif" font-size="{FONT}">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 10}" font-size="16" font-weight="bold">k4sinit boot'
        f"</text>",
        f'<text x="{MARGIN}" y="{MARGIN + 28}" fill="#444">seconds since {since(origin)}; '
        f"{_summary(found)}</text>",
        *_legend(MARGIN, MARGIN + 46),
        *_axis(left, scale, end, HEADER, HEADER + ROW * len(rows)),
    ]
    for index, row in enumerate(rows):
        out += _row(row, index, left, scale)
    if stages and len(rows) > len(stages):  # between the stages and the units
        y = HEADER + ROW * len(stages)
        out.append(
            f'<line x1="{MARGIN}" y1="{y}" x2="{left + PLOT_WIDTH:.1f}" y2="{y}" stroke="#888"/>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _end(data: TimelineJSON, found: Mapping[str, Unit]) -> float:
    """The plot's right end: the last thing that happened, or now while a unit is not ready."""
    origin = data["origin"]
    times = [s["end"] - origin for s in data["stages"]]
    for unit in found.values():
        times += [t for t in (unit.waiting, unit.started, unit.done) if t is not None]
    if any(u.done is None for u in found.values()):
        times.append(data["now"] - origin)
    last = max(times, default=1.0)
    return last * 1.02 if last > 0 else 1.0


def _summary(found: Mapping[str, Unit]) -> str:
    waiting = [u.name for u in found.values() if u.done is None]
    if not found:
        return "no services"
    if waiting:
        return f"not ready yet: {', '.join(waiting)}"
    last = max(u.done or 0.0 for u in found.values())
    return f"everything ready at {last:.3f} s"


def _stage_rows(data: TimelineJSON) -> list[_Row]:
    origin = data["origin"]
    rows = []
    for stage in sorted(data["stages"], key=lambda s: s["start"]):
        start, end = stage["start"] - origin, stage["end"] - origin
        bar = _Bar(start, end, COLORS["stage"])
        rows.append(_Row(stage["name"], (bar,), f"{end - start:.3f}s", end))
    return rows


def _unit_rows(found: Mapping[str, Unit], end: float) -> list[_Row]:
    def began(unit: Unit) -> tuple[float, float, str]:
        """By start (a waterfall); those never started last, by when they began waiting."""
        started = math.inf if unit.started is None else unit.started
        return started, (math.inf if unit.waiting is None else unit.waiting), unit.name

    rows = []
    for unit in sorted(found.values(), key=began):
        bars = []
        if unit.waiting is not None:
            bars.append(
                _Bar(unit.waiting, end if unit.started is None else unit.started, "waiting")
            )
        if unit.started is not None:
            bars.append(_Bar(unit.started, end if unit.done is None else unit.done, "starting"))
        if unit.done is not None and unit.completed is None:
            bars.append(_Bar(unit.done, end, "ready"))
        label = unit.name + (" (built-in)" if unit.kind == "builtin" else "")
        note, at = _note(unit, end)
        rows.append(
            _Row(label, tuple(_Bar(b.start, b.end, COLORS[b.color]) for b in bars), note, at)
        )
    return rows


def _note(unit: Unit, end: float) -> tuple[str, float]:
    """What is written after the unit's bars, and where (seconds)."""
    if unit.started is None:
        return ("waiting" if unit.waiting is not None else "not started"), end
    if unit.done is None:
        return "not ready", end
    took = unit.took or 0.0
    done = "completed" if unit.completed is not None else "ready"
    return f"{done} +{took:.3f}s", unit.done


def _legend(x: float, y: float) -> list[str]:
    out = []
    for key, text in LEGEND:
        out.append(
            f'<rect x="{x:.1f}" y="{y}" width="14" height="12" fill="{COLORS[key]}" '
            f'stroke="#888" stroke-width="0.5"/>'
        )
        out.append(f'<text x="{x + 19:.1f}" y="{y + 10}">{escape(text)}</text>')
        x += 19 + len(text) * CHAR + 18
    return out


def _axis(left: float, scale: float, end: float, top: int, bottom: int) -> list[str]:
    """Grid lines and their labels, above and below the rows."""
    step = _tick_step(end)
    out = []
    for i in range(int(end / step) + 1):
        t = i * step
        x = left + t * scale
        label = f"{t:g}s" if step >= 1 else f"{t:.{_decimals(step)}f}s"
        out.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#e4e4e4"/>'
        )
        for y in (top - 8, bottom + 14):
            out.append(f'<text x="{x:.1f}" y="{y}" text-anchor="middle" fill="#555">{label}</text>')
    return out


def _tick_step(end: float) -> float:
    """1, 2 or 5 times a power of ten: between 8 and 20 ticks over ``end`` seconds."""
    raw = end / 12
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return 10 * power


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _row(row: _Row, index: int, left: float, scale: float) -> list[str]:
    y = HEADER + index * ROW
    out = []
    if index % 2:
        out.append(
            f'<rect x="{MARGIN}" y="{y}" width="{left - MARGIN + PLOT_WIDTH:.1f}" '
            f'height="{ROW}" fill="#f7f7f7"/>'
        )
    out.append(f'<text x="{MARGIN}" y="{y + ROW / 2 + 4:.1f}">{escape(row.label)}</text>')
    for bar in row.bars:
        x = left + bar.start * scale
        w = max(1.0, (bar.end - bar.start) * scale)
        out.append(
            f'<rect x="{x:.1f}" y="{y + (ROW - BAR) / 2:.1f}" width="{w:.1f}" height="{BAR}" '
            f"fill={quoteattr(bar.color)}/>"
        )
    x = left + row.note_at * scale + 4
    anchor = "start"
    if x + len(row.note) * CHAR > left + PLOT_WIDTH + NOTE_ROOM:
        x, anchor = x - 8, "end"  # no room after the bar: inside its end
    out.append(
        f'<text x="{x:.1f}" y="{y + ROW / 2 + 4:.1f}" text-anchor="{anchor}" fill="#222">'
        f"{escape(row.note)}</text>"
    )
    return out
