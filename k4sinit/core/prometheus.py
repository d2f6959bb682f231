"""The Prometheus text exposition format, version 0.0.4, written by hand.

Why not prometheus_client: k4sinit needs only the format (its values come from
the supervisor's own records at scrape time, not from instrumented code), and
the library costs PID 1's start-up more than these ~80 lines. Measured here
(``python -X importtime``, Python 3.11, with k4sinit's daemon already
imported): prometheus_client 0.26 adds 17-46 ms (its exposition module pulls
in http.server, email and wsgiref) and 650 KB to the image; this module imports
in under 1 ms. Its HTTP server is threaded, not trio; k4sinit serves with h11
(k4sinit.control.metrics).

A :class:`Family` is one metric name with its ``# HELP`` and ``# TYPE`` lines
and samples; :func:`render` writes families in the order given. Label values
and help text are escaped as the format says (backslash, double quote,
newline); values are written as Go's strconv would (``+Inf``, ``NaN``, integers
without a fraction).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = ("counter", "gauge", "untyped")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(slots=True)
class Family:
    """One metric: a name, its help, its type and its samples (labels -> value).

    Raises ValueError for a name, label name or type the format does not allow
    (a programming error: names are k4sinit's own).
    """

    name: str
    help: str
    type: str = "gauge"
    samples: list[tuple[tuple[tuple[str, str], ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in TYPES:
            raise ValueError(f"invalid metric type {self.type!r}")

    def add(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        """One sample; ``labels`` in the order given."""
        pairs = tuple((labels or {}).items())
        for name, _ in pairs:
            if not _LABEL.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r}")
        self.samples.append((pairs, value))


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families``; a family without samples is left out."""
    out: list[str] = []
    for family in families:
        if not family.samples:
            continue
        out.append(f"# HELP {family.name} {_escape_help(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        for labels, value in family.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{family.name}{{{inner}}} {format_value(value)}\n")
            else:
                out.append(f"{family.name} {format_value(value)}\n")
    return "".join(out)


def format_value(value: float) -> str:
    """A sample value as the format writes it: ``3``, ``0.25``, ``+Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
