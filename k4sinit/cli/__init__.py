"""The ``k4sinit`` command line. ``main(argv) -> int`` is what tests call.

Commands and exit codes:

=================================  ==================================================
``run --config FILE``              supervise until a stop signal (SIGTERM, SIGINT,
                                   SIGHUP, SIGQUIT, SIGUSR1/2, SIGALRM) or ``stop
                                   --all``; 0 after an orderly stop, 2 on an invalid
                                   config, 1 if the daemon could not start (services
                                   of a killed run at the socket still running)
``check --config FILE``            0 when valid; 1 and every error otherwise
``config --config FILE [--profile P]``
                                   print the config with the node's roles expanded,
                                   as YAML; 0, or 1 and every error
``status [NAME] [--json]``         0 when every service is up and ready (or completed);
                                   NAME may be network or pki (0 when ready) or
                                   preflight (1 on a fatal failure)
``logs NAME [-n N] [-f]``          the last N lines, then new ones with ``-f``
``start|stop|restart NAME``        operator commands; ``stop --all`` stops everything
``kill NAME [-s SIGNAL]``          signal a service's main process (default TERM)
``kubeconfig [--server URL]``      print the node's admin kubeconfig (root only)
``apply-manifests ...``            the manifests role's program (k4sinit.network.applier)
=================================  ==================================================

Client commands take ``--socket PATH`` (after the command name) or
``$K4SINIT_SOCKET``; they print a one-line error and exit 1 when the daemon
cannot be reached, refuses, or is served by a uid other than root or the caller's.

Service output is shown with its control characters escaped (``\\x1b``), always,
not only on a terminal: ``logs`` and ``status NAME`` are for people, and output
piped into ``less -R`` or a later ``cat`` must not steer a terminal either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from k4sinit import control
from k4sinit.config import ConfigErrors, load_config
from k4sinit.control import wire
from k4sinit.core.nodespec import PROFILES, Profile
from k4sinit.core.spec import NETWORK, PKI, PREFLIGHT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k4sinit", description="init and supervisor of a Kubernetes node"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--socket",
            help=f"control socket (default: $K4SINIT_SOCKET or {control.DEFAULT_SOCKET})",
        )
        return sub

    run = client("run", "supervise the services of a config (as a child subreaper)")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    run.add_argument("--debug", action="store_true", help="log debug events too")
    run.add_argument(
        "--no-cgroups",
        action="store_true",
        help="do not use cgroup2 even where it is usable (tracking is then best effort)",
    )

    check = commands.add_parser("check", help="validate a config and print every error")
    check.add_argument("--config", required=True, help="YAML config file")

    expanded = commands.add_parser(
        "config", help="print the config with the node's roles expanded (what will run)"
    )
    expanded.add_argument("--config", required=True, help="YAML config file")
    expanded.add_argument(
        "--profile",
        choices=PROFILES,
        help="the node profile, as k4sinit.role= on the kernel command line gives it",
    )

    checks = commands.add_parser(
        "preflight",
        help="check that this machine can run the node's profile (exit 1 on a fatal failure)",
    )
    checks.add_argument("--config", help="YAML config file (its node: section names the profile)")
    checks.add_argument("--profile", choices=PROFILES)
    checks.add_argument("--json", action="store_true")

    status = client("status", "show services (one in detail with NAME, or network, pki, preflight)")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true", help='print {"services": [...]} as JSON')

    logs = client("logs", "print a service's last output lines")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.epilog = "Control characters in the output are shown escaped (\\x1b)."

    for name in ("start", "restart"):
        client(name, f"{name} a service").add_argument("name")
    kill = client(
        "kill", "send a signal to a service's main process (its policy decides what follows)"
    )
    kill.add_argument("name")
    kill.add_argument("-s", "--signal", default="TERM", help="signal name (default: %(default)s)")
    stop = client("stop", "stop a service, or everything with --all")
    stop.add_argument("name", nargs="?")
    stop.add_argument("--all", action="store_true", help="stop every service and end the daemon")

    kubeconfig = client("kubeconfig", "print the node's admin kubeconfig (it holds a key)")
    kubeconfig.add_argument(
        "--server", help="the apiserver URL to write in it (default: the node's own)"
    )
    commands.add_parser(
        "apply-manifests",
        help="apply a directory of manifests, again on change (the manifests role)",
        add_help=False,
    )

    for name in ("reboot", "poweroff", "halt"):
        client(name, f"stop every service in reverse order, then {name} the node (PID 1 only)")

    init = client("init", "be PID 1: boot the node, supervise, shut down (also: k4sinit as /init)")
    init.add_argument(
        "--config",
        help="config file (default: k4sinit.config= on the kernel command line, else /etc/k4sinit/config.yaml)",
    )
    init.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")

    dev = client("dev", "run k4sinit init as PID 1 of new namespaces (a container) on this machine")
    dev.add_argument("--config", required=True, help="YAML config file")
    dev.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv and os.getpid() == 1:
        argv = ["init"]  # the kernel runs /init with no arguments
    if argv[:1] == ["apply-manifests"]:
        from k4sinit.network import applier  # a program of its own, with its own options

        return applier.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "dev":
        from k4sinit.pid1.container import run_dev

        return run_dev(args.config, control.socket_path(args.socket), args.log_format)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "config":
        return cmd_config(args.config, args.profile)
    if args.command == "preflight":
        return cmd_preflight(args)
    if args.command == "run":
        return cmd_run(args)
    try:
        return run_client(args)
    except control.ControlClientError as exc:
        print(f"k4sinit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The console-script entry point."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``k4sinit config ... | head``): not ours to report.
        # Python would complain again when it flushes stdout at exit: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


def cmd_check(path: str) -> int:
    """``k4sinit check``: the file, and the services it makes with the node's roles
    expanded (as ``run`` and PID 1 expand them), so what passes here can run."""
    from k4sinit.node import roles

    try:
        config = roles.expand(load_config(path))
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: valid, {len(config.services)} services")
    return 0


def cmd_config(path: str, profile: str | None) -> int:
    """``k4sinit config``: the expanded config as YAML (see k4sinit.node.roles.describe)."""
    import yaml

    from k4sinit.config import ConfigErrors, load_config
    from k4sinit.node import roles

    try:
        expanded = roles.expand_node(load_config(path), role_from_kernel=profile)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    described = roles.describe(expanded.config, expanded.settings)
    print(yaml.safe_dump(described, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """``k4sinit init``: only as PID 1 (of the node or of a pid namespace)."""
    if os.getpid() != 1:
        print(
            "k4sinit init: must run as PID 1 (use 'k4sinit run' or 'k4sinit dev')", file=sys.stderr
        )
        return 2
    from k4sinit.daemon.root import init_main
    from k4sinit.pid1.boot import InitOptions

    init_main(InitOptions(config=args.config, socket=args.socket, log_format=args.log_format))


def cmd_run(args: argparse.Namespace) -> int:
    """``k4sinit run``: the composition root's ``run`` (k4sinit/daemon/root.py)."""
    from k4sinit.config import ConfigErrors, load_config
    from k4sinit.core import log
    from k4sinit.daemon import root

    options = root.Options.run(args.socket, cgroups=not args.no_cgroups)
    try:
        plan = root.plan(load_config(args.config), options)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    writer = log.configure(args.log_format, debug=args.debug)
    logger = log.get_logger()
    try:
        root.run(plan, options, logger)
    except root.SurvivorsRunning as exc:
        logger.error(str(exc), survivors=exc.found)
        return 1
    except root.CannotStart as exc:
        for error in exc.errors:
            logger.error("cannot start", error=error)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130
    finally:
        writer.close()
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """``k4sinit preflight``: the profile's checks on this machine, as a table."""
    from k4sinit.config import ConfigErrors, load_config
    from k4sinit.node import preflight, roles

    expanded = None
    if args.config:
        try:
            expanded = roles.expand_node(load_config(args.config), role_from_kernel=args.profile)
        except ConfigErrors as exc:
            print(exc, file=sys.stderr)
            return 2
    if expanded is not None and expanded.settings is not None:
        checks = preflight.check_node(expanded.settings, expanded.config)
    else:  # no node section: the profile's generic checks
        checks = preflight.run_checks(Profile(args.profile) if args.profile else Profile.SINGLE)
    print(
        json.dumps(preflight.to_json(checks), indent=2)
        if args.json
        else preflight.format_table(checks)
    )
    return 1 if preflight.fatal(checks) else 0


def run_client(args: argparse.Namespace) -> int:
    path = control.socket_path(args.socket)
    if args.command == "status":
        req = control.Request("status", name=args.name)
        result = control.request(path, req)  # its type depends on the name: see control.py
        if args.name == PREFLIGHT:
            from k4sinit.node import preflight

            preflight_reply: control.PreflightReply = result
            rows = preflight_reply[PREFLIGHT]
            checks = [
                preflight.Check(r["name"], preflight.Status(r["status"]), r["detail"], r["fatal"])
                for r in rows
            ]
            print(
                json.dumps(result, indent=2)
                if args.json
                else preflight.format_table(checks)
                if checks
                else "preflight: did not run (no node profile)"
            )
            return 1 if any(r["fatal"] and r["status"] == "fail" for r in rows) else 0
        if args.name == NETWORK:
            network_reply: control.NetworkReply = result
            network = network_reply[NETWORK]
            print(json.dumps(result, indent=2) if args.json else format_network(network))
            return 0 if network["ready"] else 1
        if args.name == PKI:
            pki_reply: control.PKIReply = result
            pki = pki_reply[PKI]
            print(json.dumps(result, indent=2) if args.json else format_pki(pki))
            return 0 if pki["ready"] else 1
        if args.name:
            detail: control.ServiceDetail = result
            print(json.dumps(detail, indent=2) if args.json else format_detail(detail))
            return 0 if _healthy(detail) else 1
        status: control.StatusReply = result
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(format_table(status["services"]))
            print(format_network_line(status[NETWORK]))
            image_line = format_image_line(status.get("image"))
            if image_line:
                print(image_line)
            if status.get("daemon"):
                print(format_daemon_line(status["daemon"]))
            if status.get("memory"):
                print(format_memory_line(status["memory"]))
            if p := status.get(PREFLIGHT):
                print(
                    f"preflight: {p['passed']} passed, {p['warnings']} warnings, {p['failed']} failed"
                    + "".join(f"\n  {f}" for f in p["failures"])
                )
        healthy = all(_healthy(s) for s in status["services"]) and status[NETWORK]["ready"]
        return 0 if healthy else 1
    if args.command == "logs":
        req = control.Request("logs", name=args.name, lines=args.lines, follow=args.follow)
        for batch in control.stream_request(path, req, timeout=None if args.follow else 30.0):
            entries: list[control.LogLineJSON] = batch
            for entry in entries:
                line = printable(entry["line"])
                print(f"{entry['stream']}[{entry['pid']}]: {line}", flush=args.follow)
        return 0
    if args.command == "kubeconfig":
        kubeconfig: control.KubeconfigReply = control.request(path, control.Request("kubeconfig"))
        print(with_server(kubeconfig["kubeconfig"], args.server), end="")
        return 0
    if args.command in control.POWER_OPS:
        stopped: control.StoppedReply = control.request(
            path, control.Request(args.command), timeout=None
        )
        print(f"{args.command}: {len(stopped['services'])} services stopped")
        return 0
    if args.command == "stop" and args.all:
        stopped = control.request(path, control.Request("stop_all"), timeout=None)
        print(format_table(stopped["services"]))
        return 0
    if not args.name:
        print(f"k4sinit {args.command}: a service NAME is needed", file=sys.stderr)
        return 2
    if args.command == "kill":
        req = control.Request("kill", name=args.name, signal=args.signal)
        killed: control.KillReply = control.request(path, req)
        print(f"{killed['name']}: sent {killed['signal']} to pid {killed['pid']}")
        return 0
    # start (a StartReply), stop, restart: the service's snapshot after the command
    s: control.ServiceSnapshot = control.request(
        path, control.Request(args.command, name=args.name), timeout=None
    )
    print(f"{s['name']}: {s['state']}{', ready' if s['ready'] else ''} ({s['reason']})")
    return 0


def with_server(kubeconfig: str, server: str | None) -> str:
    """``kubeconfig`` (YAML text) with every cluster's server set to ``server`` (None: as is)."""
    if server is None:
        return kubeconfig
    import yaml

    data = yaml.safe_load(kubeconfig)
    for cluster in data.get("clusters") or ():
        cluster["cluster"]["server"] = server
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _healthy(service: control.ServiceSnapshot) -> bool:
    return service["state"] == "completed" or (
        service["state"] == "running" and service["ready"] is True
    )


# --- formatting -------------------------------------------------------------------


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


def format_exit(last_exit: control.ExitJSON | None) -> str:
    if last_exit is None:
        return "-"
    if "signal" in last_exit:
        return str(last_exit["signal"])
    return f"code {last_exit['code']}"


def format_table(services: list[control.ServiceSnapshot]) -> str:
    """The ``status`` table, one service per line, in the order given."""
    header = ("SERVICE", "STATE", "READY", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "REASON")
    rows = [header]
    for s in services:
        up = s["since"] if s["state"] in ("running", "starting") else None
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


def format_detail(s: control.ServiceDetail) -> str:
    """``status NAME``: state, spec summary, next restart, events, last log lines."""
    spec = s["spec"]
    lines = [
        f"{s['name']}: {s['state']}, {'ready' if s['ready'] else 'not ready'}, for {format_duration(s['since'])}",
        f"  reason:           {s['reason']}",
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


def format_network_line(network: wire.NetworkSnapshot) -> str:
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


def format_pki(pki: control.PKIStatus) -> str:
    """``status pki``: ``pki: ready (certificates in /var/lib/k4sinit/pki, kubeconfigs in ...)``."""
    return f"pki: ready ({pki['reason']})" if pki["ready"] else f"pki: not ready: {pki['reason']}"


def format_daemon_line(daemon: control.DaemonInfo) -> str:
    """k4sinit itself: ``k4sinit 0.1.0: pid 1, up 3m12s, 41.2 MiB resident``."""
    return (
        f"k4sinit {daemon['version']}: pid {daemon['pid']}, up {format_duration(daemon['uptime'])}, "
        f"{daemon['rss_bytes'] / 2**20:.1f} MiB resident"
    )


def format_memory_line(memory: control.MemoryInfo) -> str:
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


def format_network(network: wire.NetworkSnapshot) -> str:
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
