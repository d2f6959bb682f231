"""How the CLI shows the daemon's replies: the status table, one service, the network.

Every function takes a reply of control/wire.py's types and returns text;
nothing here talks to the daemon.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from k4sinit.control import wire
from k4sinit.core.state import State

if TYPE_CHECKING:
    from k4sinit.control.wire import NetworkSnapshot

#: The states whose time in the state is the service's uptime.
_UP = (State.RUNNING.value, State.STARTING.value)


_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (C0 but tab, DEL, C1) shown as ``\\xNN``, so
    that a service's output cannot send escape sequences to the operator's terminal."""
    return _CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h04m``, ``3d01h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_exit(last_exit: wire.ExitJSON | None) -> str:
    if last_exit is None:
        return "-"
    if "signal" in last_exit:
        return str(last_exit["signal"])
    return f"code {last_exit['code']}"


def format_table(services: list[wire.ServiceSnapshot]) -> str:
    """The ``status`` table, one service per line, in the order given."""
    header = ("SERVICE", "STATE", "READY", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "REASON")
    rows = [header]
    for s in services:
        up = s["since"] if s["state"] in _UP else None
        rows.append(
            (
                s["name"],
                s["state"],
                "yes" if s["ready"] else "no",
                str(s["pid"]) if s["pid"] else "-",
                format_duration(up),
                str(s["restarts"]),
                format_exit(s["last_exit"]),
                _shorten(s.get("reason") or "", 60),
            )
        )
    return _columns(rows)


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as aligned columns (two spaces apart), the last one not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


def format_detail(s: wire.ServiceDetail) -> str:
    """``status NAME``: state, spec summary, next restart, events, last log lines."""
    spec = s["spec"]
    lines = [
        f"{s['name']}: {s['state']}, {'ready' if s['ready'] else 'not ready'}, for {format_duration(s['since'])}",
        f"  reason:           {s['reason']}",
        *([f"  status:           {s['notify_status']}"] if s.get("notify_status") else []),
        f"  pid:              {s['pid'] or '-'}",
        f"  restarts:         {s['restarts']}   last exit: {format_exit(s['last_exit'])}",
    ]
    if s.get("next_restart_in") is not None:
        lines.append(f"  next restart in {s['next_restart_in']:.1f}s")
    lines += [
        f"  command:          {' '.join(spec['command'])}",
        f"  restart:          {spec['restart_policy']}; stop with {spec['stop_signal']}, "
        f"grace {spec['termination_grace_period']:g}s",
    ]
    if s["depends_on"]:
        deps = ", ".join(f"{name} ({cond})" for name, cond in s["depends_on"].items())
        lines.append(f"  depends on:       {deps}")
    for kind, text in spec["probes"].items():
        lines.append(f"  {kind + ' probe:':<18}{text}")
    if (rss := s.get("rss_bytes")) is not None:
        lines.append(f"  {'resident:':<18}{rss / 2**20:.1f} MiB (the main process)")
    if cgroup := s.get("cgroup"):
        lines.append(f"  {'cgroup:':<18}{format_cgroup(cgroup)}")
    lines.append("  events:")
    for event in s["events"][-10:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        ready = ", ready" if event["ready"] else ""
        lines.append(f"    {stamp}  {event['state']}{ready}: {event['reason']}")
    lines.append("  last output:")
    for entry in s["logs"]:
        lines.append(f"    {entry['stream']}[{entry['pid']}]: {printable(entry['line'])}")
    return "\n".join(lines)


def format_reload(reply: wire.ReloadReply) -> str:
    """``reload``: what the plan does to each service, what was refused or failed.

    ``reload of FILE: applied`` (``dry run``, ``refused: nothing changed``), then a
    line per kind of step: ``restart:  api (command changed)``.
    """
    plan = reply["plan"]
    if plan is None:  # an invalid file: the errors are the answer
        return "\n".join(reply["errors"])
    if plan["refused"]:
        outcome = "refused, nothing changed"
    elif reply["dry_run"]:
        outcome = "dry run, nothing changed"
    elif reply["failed"]:
        outcome = "applied, with failures"
    else:
        outcome = "applied"
    lines = [f"reload of {reply['source']}: {outcome}"]
    rows = [
        ("start", plan["start"]),
        ("stop", plan["stop"]),
        ("restart", [f"{c['name']} ({', '.join(c['fields'])} changed)" for c in plan["restart"]]),
        ("update", [f"{c['name']} ({', '.join(c['fields'])} changed)" for c in plan["update"]]),
        ("unchanged", plan["unchanged"]),
    ]
    lines += [f"  {kind + ':':<11}{', '.join(names)}" for kind, names in rows if names]
    if not any(names for kind, names in rows[:4]):
        lines.append("  nothing to do")
    lines += [
        f"  refused:   {r['field']}: {r['reason']}; reboot to apply it" for r in plan["refused"]
    ]
    lines += [f"  failed:    {line}" for line in reply["failed"]]
    return "\n".join(lines)


def format_network_line(network: NetworkSnapshot) -> str:
    """The line under the status table: ``network: ready (eth0 10.0.2.15/24)``."""
    configured = [
        f"{name} {' '.join(i['addresses']) or 'no address'}"
        for name, i in network["interfaces"].items()
        if i["configured"]
    ]
    where = f" ({'; '.join(configured)})" if configured else ""
    if network["ready"]:
        return f"network: ready{where}"
    return f"network: not ready: {network['reason']}{where}"


def format_pki(pki: wire.PKIStatus) -> str:
    """``status pki``: ``pki: ready (certificates in /var/lib/k4sinit/pki, kubeconfigs in ...)``."""
    return f"pki: ready ({pki['reason']})" if pki["ready"] else f"pki: not ready: {pki['reason']}"


def format_tokens(tokens: list[wire.TokenJSON], now: float) -> str:
    """``token list``: one bootstrap token per line, its time left at ``now`` (epoch s)."""
    rows = [("ID", "TTL", "EXPIRES", "USAGES", "GROUPS", "DESCRIPTION")]
    for t in tokens:
        expires = t["expires"]
        if expires is None:
            ttl, expires = "forever", "never"
        else:
            left = calendar.timegm(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - now
            ttl = format_duration(left) if left > 0 else "expired"
        usages, groups = ",".join(t["usages"]) or "-", ",".join(t["groups"]) or "-"
        rows.append((t["id"], ttl, expires, usages, groups, printable(t["description"])))
    return _columns(rows)


def format_daemon_line(daemon: wire.DaemonInfo) -> str:
    """k4sinit itself: ``k4sinit 0.1.0: pid 1, up 3m12s, 41.2 MiB resident``.

    Dropped notify messages, if any, follow: ``; notify dropped: unknown-sender 3``.
    """
    dropped = daemon.get("notify_dropped") or {}
    return (
        f"k4sinit {daemon['version']}: pid {daemon['pid']}, up {format_duration(daemon['uptime'])}, "
        f"{daemon['rss_bytes'] / 2**20:.1f} MiB resident"
    ) + (
        "; notify dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
        if dropped
        else ""
    )


def format_memory_line(memory: wire.MemoryInfo) -> str:
    """The machine's memory: ``memory: 1.21 GiB in use of 2.89 GiB (MemTotal - MemAvailable)``."""
    used = memory["total"] - memory["available"]
    return (
        f"memory: {used / 2**30:.2f} GiB in use of {memory['total'] / 2**30:.2f} GiB "
        "(MemTotal - MemAvailable)"
    )


def format_image_line(image: dict[str, Any] | None) -> str | None:
    """What the node image holds, as a line under the table (``image: kubernetes v1.37.2, ...``)."""
    summary = (image or {}).get("summary") or (image or {}).get("notice")
    return f"image: {summary}" if summary else None


def format_network(network: NetworkSnapshot) -> str:
    """``status network``: readiness, problems, each link with its addresses and routes."""
    state = "ready" if network["ready"] else f"not ready: {network['reason']}"
    lines = [f"network: {state} (configured from {network['source']})"]
    lines += [f"  problem: {problem}" for problem in network["problems"]]
    for name, i in network["interfaces"].items():
        carrier = "carrier" if i["carrier"] else "no carrier"
        role = f" [{i['configured']}]" if i["configured"] and i["configured"] != name else ""
        lines.append(
            f"  {name}{role}: {i['state']}, {'up' if i['up'] else 'down'}, {carrier}, mtu {i['mtu']}, {i['mac'] or '-'}"
        )
        lines += [f"    address {a}" for a in i["addresses"]]
        lines += [f"    route {r}" for r in i["routes"]]
    return "\n".join(lines)


def format_cgroup(cg: dict[str, Any]) -> str:
    """``/sys/fs/cgroup/services/etcd: memory 41.2Mi (peak 52.0Mi) of 256Mi, cpu 3.21s, 12 pids``."""

    def mib(n: int | None) -> str:
        return "-" if n is None else f"{n / 2**20:.1f}Mi"

    limits = cg["limits"]
    memory = f"memory {mib(cg['memory_bytes'])}"
    if cg.get("memory_peak_bytes") is not None:
        memory += f" (peak {mib(cg['memory_peak_bytes'])})"
    if limits.get("memory"):
        memory += f" of {mib(limits['memory'])}"
    cpu = "-" if cg["cpu_seconds"] is None else f"{cg['cpu_seconds']:.2f}s"
    if limits.get("cpu_millis"):
        cpu += f" (limit {limits['cpu_millis']}m)"
    if limits.get("cpu_weight"):
        cpu += f" (weight {limits['cpu_weight']})"
    pids = f"{cg['pids']} pids" + (f" of {limits['pids']}" if limits.get("pids") else "")
    ooms = f", {cg['oom_kills']} OOM kills" if cg.get("oom_kills") else ""
    return f"{cg['path']}: {memory}, cpu {cpu}, {pids}{ooms}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
