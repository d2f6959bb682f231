"""Boot analysis: the timeline (core/timeline.py), blame and the critical chain
(core/analysis.py), the SVG plot (core/bootplot.py), and ``k4sinit analyze``
against a real daemon."""

from __future__ import annotations

import itertools
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from k4sinit import control
from k4sinit.control.wire import Op, Request
from k4sinit.core import analysis
from k4sinit.core.bootplot import plot
from k4sinit.core.state import State
from k4sinit.core.timeline import (
    TIMELINE_ENV,
    Milestones,
    StageJSON,
    Timeline,
    TimelineJSON,
    UnitJSON,
    process_start,
)
from k4sinit.pid1.boot import first_stages
from tests.conftest import child_cmd, services_config

SVG = "{http://www.w3.org/2000/svg}"


def unit(
    name: str,
    started: float | None,
    ready: float | None,
    *,
    depends_on: dict[str, str] | None = None,
    waiting: float | None = 0.0,
    completed: float | None = None,
    kind: str = "service",
) -> UnitJSON:
    """A unit of a hand-made timeline, its times since the origin (timeline() shifts them)."""
    return {
        "name": name,
        "kind": kind,
        "depends_on": depends_on or {},
        "waiting": waiting,
        "started": started,
        "ready": ready,
        "completed": completed,
    }


def timeline(
    *units: UnitJSON, stages: list[StageJSON] | None = None, origin: float = 0.0, now: float = 100.0
) -> TimelineJSON:
    """A timeline reply whose times (given since ``origin``) are absolute, as the daemon's."""

    def at(t: float | None) -> float | None:
        return None if t is None else origin + t

    shifted: list[UnitJSON] = [
        {
            **u,
            "waiting": at(u["waiting"]),
            "started": at(u["started"]),
            "ready": at(u["ready"]),
            "completed": at(u["completed"]),
        }
        for u in units
    ]
    moved: list[StageJSON] = [
        {"name": s["name"], "start": origin + s["start"], "end": origin + s["end"]}
        for s in stages or []
    ]
    return {"origin": origin, "now": origin + now, "stages": moved, "units": shifted}


# A diamond: a -> (b, c) -> d; c gets ready later than b, so it decides d's start.
DIAMOND = [
    unit("a", 0.5, 1.0),
    unit("b", 1.25, 2.0, depends_on={"a": "Ready"}),
    unit("c", 1.5, 4.0, depends_on={"a": "Ready"}),
    unit("d", 4.25, 5.0, depends_on={"b": "Ready", "c": "Ready"}),
]


# --- the records ------------------------------------------------------------------


def test_milestones_keep_the_first_time_of_each() -> None:
    m = Milestones()
    m.note(State.WAITING, False, 1.0)
    m.note(State.STARTING, False, 2.0)
    m.note(State.RUNNING, True, 3.0)
    # A restart later: the boot's times stay.
    for state, ready, now in [
        (State.BACKOFF, False, 10.0),
        (State.WAITING, False, 11.0),
        (State.RUNNING, True, 12.0),
        (State.COMPLETED, False, 13.0),
        (State.COMPLETED, False, 14.0),
    ]:
        m.note(state, ready, now)
    assert (m.waiting, m.started, m.ready, m.completed) == (1.0, 2.0, 3.0, 13.0)
    wire = m.to_json("x", "service", {"y": "Ready"}, shift=100.0)
    assert wire == {
        "name": "x",
        "kind": "service",
        "depends_on": {"y": "Ready"},
        "waiting": 101.0,
        "started": 102.0,
        "ready": 103.0,
        "completed": 113.0,
    }


def test_a_stage_is_recorded_also_when_it_raises() -> None:
    ticks: Iterator[float] = iter([1.0, 2.5, 3.0, 4.0])
    t = Timeline(origin=0.0, clock=lambda: next(ticks))
    with t.stage("mounts"):
        pass
    with pytest.raises(OSError), t.stage("storage"):
        raise OSError("no disk")
    assert t.to_json() == [
        {"name": "mounts", "start": 1.0, "end": 2.5},
        {"name": "storage", "start": 3.0, "end": 4.0},
    ]


def test_the_stages_cross_the_reexec_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Timeline(origin=0.0)
    before.add("kernel, initramfs, interpreter", 0.0, 1.0)
    before.add("switch root", 2.0, 5.0)
    monkeypatch.setenv(TIMELINE_ENV, before.to_env())
    after = first_stages(container=False, entered=6.5, imported=6.0)
    assert TIMELINE_ENV not in os.environ  # services never see it
    assert after.origin == 0.0
    assert [(s.name, s.start, s.end) for s in after.stages] == [
        ("kernel, initramfs, interpreter", 0.0, 1.0),
        ("switch root", 2.0, 5.0),
        ("re-exec", 5.0, 6.0),
        ("imports", 6.0, 6.5),
    ]


@pytest.mark.parametrize(
    "garbled", ["", "not json", '{"origin": 0}', '{"origin": "x", "stages": []}']
)
def test_a_garbled_environment_starts_a_new_timeline(
    monkeypatch: pytest.MonkeyPatch, garbled: str
) -> None:
    assert Timeline.from_env(garbled) is None
    monkeypatch.setenv(TIMELINE_ENV, garbled)
    fresh = first_stages(container=False, entered=3.5, imported=3.0)
    assert fresh.origin == 0.0
    assert [(s.name, s.start, s.end) for s in fresh.stages] == [
        ("kernel, initramfs, interpreter", 0.0, 3.0),
        ("imports", 3.0, 3.5),
    ]


def test_in_a_container_the_timeline_starts_with_the_process() -> None:
    started = process_start()
    assert started <= time.monotonic()
    fresh = first_stages(container=True, entered=started + 0.5, imported=started + 0.25)
    assert fresh.origin == started
    assert [(s.name, s.start, s.end) for s in fresh.stages] == [
        ("interpreter", started, started + 0.25),
        ("imports", started + 0.25, started + 0.5),
    ]


# --- blame and the critical chain ----------------------------------------------------


def test_blame_lists_the_longest_start_to_ready_first_and_the_unready_last() -> None:
    found = analysis.units(
        timeline(
            unit("quick", 1.0, 1.25),
            unit("slow", 1.0, 4.0),
            unit("oneshot", 0.5, 0.5, completed=2.5),  # ready at spawn; counts to completion
            unit("stuck", 1.0, None),
            unit("blocked", None, None),
            unit("network", 0.0, 0.75, kind="builtin"),
            origin=50.0,
        )
    )
    order = [(u.name, u.took) for u in analysis.blame(found)]
    assert order == [
        ("slow", 3.0),
        ("oneshot", 2.0),
        ("network", 0.75),
        ("quick", 0.25),
        ("blocked", None),
        ("stuck", None),
    ]
    text = analysis.format_blame(found).splitlines()
    assert text[0] == "     3.000s  slow"
    assert text[2] == "     0.750s  network (built-in)"
    assert text[4:] == [
        "not started  blocked",
        "  not ready  stuck",
    ]


def test_the_critical_chain_follows_the_dependency_ready_last_with_each_edges_wait() -> None:
    chain = analysis.critical_chain(analysis.units(timeline(*DIAMOND, origin=1000.0)))
    assert [(link.unit.name, link.condition, link.wait) for link in chain] == [
        ("d", None, None),
        ("c", "Ready", 0.25),  # c ready at 4.0, d started at 4.25
        ("a", "Ready", 0.5),  # a ready at 1.0, c started at 1.5
    ]
    text = analysis.format_chain(chain, 1000.0)
    assert text.splitlines()[3:] == [
        "d @5.000s +0.750s",
        "└─ c @4.000s +2.500s  (d started 0.250s after c was ready)",
        "   └─ a @1.000s +0.500s  (c started 0.500s after a was ready)",
    ]


def test_a_chain_for_a_named_unit_and_its_conditions() -> None:
    data = timeline(
        unit("network", 0.0, 0.5, kind="builtin"),
        unit("pki", 0.5, 2.0, depends_on={"network": "Ready"}, kind="builtin"),
        unit("prepare", 0.25, 0.25, completed=1.0),
        unit("db", 0.5, 3.0, depends_on={"network": "Started"}),
        unit(
            "api",
            2.25,
            6.0,
            depends_on={"pki": "Ready", "prepare": "Completed", "db": "Started"},
        ),
        unit("late", 8.0, 9.0),
    )
    found = analysis.units(data)
    assert analysis.last_done(found) == found["late"]  # the default target
    chain = analysis.critical_chain(found, "api")
    assert [(link.unit.name, link.condition, link.wait) for link in chain] == [
        ("api", None, None),
        ("pki", "Ready", 0.25),
        ("network", "Ready", 0.0),
    ]
    # Started counts from the dependency's start, Completed from its completion.
    db_chain = analysis.critical_chain(found, "db")
    assert [(link.unit.name, link.wait) for link in db_chain] == [("db", None), ("network", 0.5)]
    with pytest.raises(KeyError):
        analysis.critical_chain(found, "nosuch")


def test_a_dependency_never_satisfied_is_what_holds_a_unit_up() -> None:
    found = analysis.units(
        timeline(
            unit("a", 0.0, 1.0),
            unit("b", 0.0, None),  # started, never ready
            unit("c", None, None, depends_on={"a": "Ready", "b": "Ready"}),
        )
    )
    chain = analysis.critical_chain(found, "c")
    assert [(link.unit.name, link.wait) for link in chain] == [("c", None), ("b", None)]
    lines = analysis.format_chain(chain, 0.0).splitlines()[3:]
    assert lines == ["c (not started)", "└─ b (not ready)  (c not started yet)"]
    assert analysis.critical_chain(analysis.units(timeline(unit("x", 0.0, None)))) == []


# --- the plot --------------------------------------------------------------------------


def texts(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(SVG + "text"))


def test_the_plot_is_svg_with_every_stage_and_unit_labelled() -> None:
    data = timeline(
        *DIAMOND,
        unit("network", 0.0, 0.25, kind="builtin"),
        unit("waits", None, None, depends_on={"d": "Ready"}, waiting=0.0),
        stages=[
            {"name": "mounts", "start": 0.0, "end": 0.125},
            {"name": "daemon <start>", "start": 0.125, "end": 0.5},
        ],
        origin=1000.0,
        now=7.0,
    )
    svg = plot(data)
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    labels = [t.text for t in texts(svg)]
    for name in ["mounts", "daemon <start>", "a", "b", "c", "d", "network (built-in)", "waits"]:
        assert name in labels
    assert "ready +2.500s" in labels  # c's note
    assert "waiting" in labels  # the unit still waiting at the end
    assert "0.125s" in labels  # a stage's duration
    assert any(label == "7s" for label in labels)  # the axis reaches now, as waits is not done


def test_the_plot_keeps_labels_apart_and_inside() -> None:
    """Names in their own column left of every bar; every text inside the picture; rows
    one below the other."""
    many = [unit(f"service-{i:02d}", i * 0.1, i * 0.1 + 0.05) for i in range(30)]
    svg = plot(timeline(*many, unit("a-very-long-service-name-indeed", 0.0, 3.0)))
    root = ET.fromstring(svg)
    width = float(root.attrib["width"])
    bars = [r for r in root.iter(SVG + "rect") if r.attrib.get("height") == "14"]
    first_bar = min(float(r.attrib["x"]) for r in bars)
    names = [t for t in texts(svg) if (t.text or "").startswith(("service-", "a-very"))]
    assert len(names) == 31
    longest = max(len(t.text or "") for t in names)
    for name in names:
        assert float(name.attrib["x"]) + longest * 7.0 <= first_bar
    rows = sorted(float(t.attrib["y"]) for t in names)
    assert all(b - a >= 20 for a, b in itertools.pairwise(rows))
    for t in texts(svg):
        assert 0 <= float(t.attrib["x"]) <= width


# --- against a daemon -----------------------------------------------------------------


def ready_when_file(path: str) -> dict[str, Any]:
    return {"file": {"path": path}, "periodSeconds": 0.1}


def test_analyze_against_a_running_daemon(start_daemon: Any, tmp_path: Any) -> None:
    """blame, critical-chain and plot over the socket; a restart later keeps the boot's times."""
    (tmp_path / "ready").write_text("")
    sleeper: dict[str, Any] = {
        "command": child_cmd(),
        "readinessProbe": ready_when_file(str(tmp_path / "ready")),
    }
    d = start_daemon(
        services_config(
            {
                "a": sleeper,
                "b": {**sleeper, "dependsOn": {"a": "Ready"}},
                "c": {**sleeper, "dependsOn": {"b": "Ready"}},
                "side": {"command": child_cmd(), "dependsOn": ["network"]},
            }
        )
    )
    d.wait_for(lambda s: all(s[n]["ready"] for n in "abc"), what="a, b, c ready")

    blame = d.cli("analyze", "blame")
    assert blame.returncode == 0, blame.stderr
    names = sorted(line.split(maxsplit=1)[1] for line in blame.stdout.splitlines())
    assert names == ["a", "b", "c", "network (built-in)", "side"]

    chain = d.cli("analyze", "critical-chain", "c")
    assert chain.returncode == 0, chain.stderr
    tree = chain.stdout.splitlines()[3:]
    assert tree[0].startswith("c @")
    assert tree[1].startswith("└─ b @") and "(c started " in tree[1]
    assert tree[2].startswith("   └─ a @") and "after a was ready)" in tree[2]

    plotted = d.cli("analyze", "plot")
    assert plotted.returncode == 0, plotted.stderr
    labels = {t.text for t in texts(plotted.stdout)}
    assert {"a", "b", "c", "side", "network (built-in)", "interpreter", "daemon start"} <= labels

    unknown = d.cli("analyze", "critical-chain", "nosuch")
    assert unknown.returncode == 1
    assert "unknown service 'nosuch'" in unknown.stderr

    def started(name: str) -> float | None:
        reply: TimelineJSON = control.request(str(d.socket), Request(Op.TIMELINE))
        return next(u["started"] for u in reply["units"] if u["name"] == name)

    first = started("b")
    assert first is not None
    pid = d.status()["b"]["pid"]
    assert d.cli("restart", "b").returncode == 0
    d.wait_for(lambda s: s["b"]["ready"] and s["b"]["pid"] != pid, what="b restarted")
    assert started("b") == first
