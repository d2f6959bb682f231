"""The client commands: ask the daemon over its control socket, show the reply.

``status``, ``logs``, ``start``/``stop``/``restart``, ``kill``, ``stop --all``,
``reload``, ``kubeconfig``, ``token``, ``analyze`` and the power commands. Each builds a :class:`~k4sinit.control.wire.Request`,
sends it with the synchronous client (``k4sinit.control``: no trio) and prints
the typed reply;
exit codes are in cli/main.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from k4sinit import control
from k4sinit.cli.format import (
    format_daemon_line,
    format_detail,
    format_image_line,
    format_memory_line,
    format_network,
    format_network_line,
    format_pki,
    format_reload,
    format_table,
    format_tokens,
    printable,
)
from k4sinit.control.wire import (
    KillReply,
    KubeconfigReply,
    LogLineJSON,
    NetworkReply,
    Op,
    PKIReply,
    PreflightReply,
    ReloadReply,
    Request,
    ServiceDetail,
    ServiceSnapshot,
    StatusReply,
    StoppedReply,
    TimelineJSON,
    TokenCreateReply,
    TokenListReply,
    TokenRevokeReply,
)
from k4sinit.core.reserved import NETWORK, PKI, PREFLIGHT
from k4sinit.core.state import State


def run_client(args: argparse.Namespace) -> int:
    """Send the command's request and print the reply; raises ControlClientError."""
    path = control.socket_path(args.socket)
    if args.command == "token":
        return token(path, args)
    if args.command == "analyze":
        return analyze(path, args)
    op = Op.STOP_ALL if args.command == "stop" and args.all else Op(args.command)
    match op:
        case Op.STATUS if args.name:
            return status_of(path, args.name, as_json=args.json)
        case Op.STATUS:
            return status(path, as_json=args.json)
        case Op.LOGS:
            req = Request(Op.LOGS, name=args.name, lines=args.lines, follow=args.follow)
            for batch in control.stream_request(path, req, timeout=None if args.follow else 30.0):
                entries: list[LogLineJSON] = batch
                for entry in entries:
                    line = printable(entry["line"])
                    print(f"{entry['stream']}[{entry['pid']}]: {line}", flush=args.follow)
            return 0
        case Op.KUBECONFIG:
            kubeconfig: KubeconfigReply = control.request(path, Request(Op.KUBECONFIG))
            print(with_server(kubeconfig["kubeconfig"], args.server), end="")
            return 0
        case Op.REBOOT | Op.POWEROFF | Op.HALT:
            stopped: StoppedReply = control.request(path, Request(op), timeout=None)
            print(f"{op}: {len(stopped['services'])} services stopped")
            return 0
        case Op.STOP_ALL:
            stopped = control.request(path, Request(Op.STOP_ALL), timeout=None)
            print(format_table(stopped["services"]))
            return 0
        case Op.RELOAD:
            return reload(path, dry_run=args.dry_run, as_json=args.json)
    if not args.name:
        print(f"k4sinit {args.command}: a service NAME is needed", file=sys.stderr)
        return 2
    if op is Op.KILL:
        killed: KillReply = control.request(
            path, Request(Op.KILL, name=args.name, signal=args.signal)
        )
        print(f"{killed['name']}: sent {killed['signal']} to pid {killed['pid']}")
        return 0
    # start (a StartReply), stop, restart: the service's snapshot after the command
    s: ServiceSnapshot = control.request(path, Request(op, name=args.name), timeout=None)
    print(f"{s['name']}: {s['state']}{', ready' if s['ready'] else ''} ({s['reason']})")
    return 0


def reload(path: str, *, dry_run: bool, as_json: bool) -> int:
    """``reload``: the plan and what was done; an invalid file's errors on stderr, as
    ``check`` prints them. 0 when applied (or, with ``dry_run``, possible)."""
    reply: ReloadReply = control.request(path, Request(Op.RELOAD, dry_run=dry_run), timeout=None)
    if as_json:
        print(json.dumps(reply, indent=2))
    elif reply["errors"]:
        print("\n".join(reply["errors"]), file=sys.stderr)
    else:
        print(format_reload(reply))
    refused = reply["plan"] is None or reply["plan"]["refused"]
    return 1 if reply["errors"] or refused or reply["failed"] else 0


def token(path: str, args: argparse.Namespace) -> int:
    """``token create|list|revoke``: ``create`` prints the join token alone on stdout
    (for ``$(k4sinit token create)``), what it is on stderr."""
    match args.token_command:
        case "create":
            request = Request(Op.TOKEN_CREATE, ttl=args.ttl, server=args.server)
            created: TokenCreateReply = control.request(path, request)
            print(created["join_token"])
            info = created["token"]
            until = f"until {info['expires']}" if info["expires"] else "with no expiry"
            print(f"token {info['id']}: joins workers {until}", file=sys.stderr)
        case "list":
            listed: TokenListReply = control.request(path, Request(Op.TOKEN_LIST))
            if args.json:
                print(json.dumps(listed["tokens"], indent=2))
            else:
                print(format_tokens(listed["tokens"], time.time()))
        case _:
            revoked: TokenRevokeReply = control.request(
                path, Request(Op.TOKEN_REVOKE, name=args.id)
            )
            print(f"token {revoked['id']} revoked")
    return 0


def analyze(path: str, args: argparse.Namespace) -> int:
    """``analyze blame|critical-chain|plot``: from the daemon's ``timeline``; 1 for a
    SERVICE that is no service or built-in."""
    from k4sinit.core import analysis

    timeline: TimelineJSON = control.request(path, Request(Op.TIMELINE))
    match args.analyze_command:
        case "blame":
            print(analysis.format_blame(analysis.units(timeline)))
        case "critical-chain":
            found = analysis.units(timeline)
            if args.name is not None and args.name not in found:
                print(f"k4sinit analyze: unknown service {args.name!r}", file=sys.stderr)
                return 1
            chain = analysis.critical_chain(found, args.name)
            print(analysis.format_chain(chain, timeline["origin"]))
        case _:
            from k4sinit.core.bootplot import plot

            sys.stdout.write(plot(timeline))
    return 0


def status(path: str, *, as_json: bool) -> int:
    """``status``: the table and the lines under it; 0 when every service is healthy."""
    reply: StatusReply = control.request(path, Request(Op.STATUS))
    if as_json:
        print(json.dumps(reply, indent=2))
    else:
        print(format_table(reply["services"]))
        print(format_network_line(reply[NETWORK]))
        image_line = format_image_line(reply.get("image"))
        if image_line:
            print(image_line)
        if reply.get("daemon"):
            print(format_daemon_line(reply["daemon"]))
        if reply.get("memory"):
            print(format_memory_line(reply["memory"]))
        if p := reply.get(PREFLIGHT):
            print(
                f"preflight: {p['passed']} passed, {p['warnings']} warnings, {p['failed']} failed"
                + "".join(f"\n  {f}" for f in p["failures"])
            )
    healthy = all(healthy_service(s) for s in reply["services"]) and reply[NETWORK]["ready"]
    return 0 if healthy else 1


def status_of(path: str, name: str, *, as_json: bool) -> int:
    """``status NAME``: a service in detail, or the network, pki or preflight.

    0 when the service is healthy, the network or pki ready, no preflight check
    failed fatally.
    """
    result = control.request(path, Request(Op.STATUS, name=name))  # its type depends on the name
    if name == PREFLIGHT:
        from k4sinit.node import preflight  # its table; loaded only for this name

        preflight_reply: PreflightReply = result
        rows = preflight_reply[PREFLIGHT]
        checks = [
            preflight.Check(r["name"], preflight.Status(r["status"]), r["detail"], r["fatal"])
            for r in rows
        ]
        print(
            json.dumps(result, indent=2)
            if as_json
            else preflight.format_table(checks)
            if checks
            else "preflight: did not run (no node profile)"
        )
        return 1 if preflight.fatal(checks) else 0
    if name == NETWORK:
        network_reply: NetworkReply = result
        network = network_reply[NETWORK]
        print(json.dumps(result, indent=2) if as_json else format_network(network))
        return 0 if network["ready"] else 1
    if name == PKI:
        pki_reply: PKIReply = result
        pki = pki_reply[PKI]
        print(json.dumps(result, indent=2) if as_json else format_pki(pki))
        return 0 if pki["ready"] else 1
    detail: ServiceDetail = result
    print(json.dumps(detail, indent=2) if as_json else format_detail(detail))
    return 0 if healthy_service(detail) else 1


def healthy_service(service: ServiceSnapshot) -> bool:
    """Completed, or running and ready: what ``status`` exits 0 for."""
    state = service["state"]
    return state == State.COMPLETED.value or (
        state == State.RUNNING.value and service["ready"] is True
    )


def with_server(kubeconfig: str, server: str | None) -> str:
    """``kubeconfig`` (YAML text) with every cluster's server set to ``server`` (None: as is)."""
    if server is None:
        return kubeconfig
    import yaml

    data = yaml.safe_load(kubeconfig)
    for cluster in data.get("clusters") or ():
        cluster["cluster"]["server"] = server
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
