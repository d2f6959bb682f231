"""The ``k4sinit`` command line's parser: commands, options, help.

Cheap to import: ``k4sinit --help`` loads no trio, pyroute2, cryptography or
YAML (tests/test_layers.py checks it).
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from k4sinit.core.reserved import DEFAULT_SOCKET, POWER_COMMANDS, PROFILES

if TYPE_CHECKING:
    #: What ``add_subparsers()`` returns (argparse names the class as private).
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and its help (the module docstring of cli/main.py
    lists the exit codes), in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="k4sinit", description="init and supervisor of a Kubernetes node"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_config_commands(commands)
    _add_client_commands(commands)
    _add_pid1_commands(commands)
    return parser


def _client(commands: Commands, name: str, help: str) -> argparse.ArgumentParser:
    """A command that takes ``--socket``."""
    sub = commands.add_parser(name, help=help)
    sub.add_argument(
        "--socket",
        help=f"control socket (default: $K4SINIT_SOCKET or {DEFAULT_SOCKET})",
    )
    return sub


def _add_config_commands(commands: Commands) -> None:
    """run, check, config, preflight: the commands that read a config."""
    run = _client(commands, "run", "supervise the services of a config (as a child subreaper)")
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


def _add_client_commands(commands: Commands) -> None:
    """The commands that ask the daemon (cli/remote.py), and apply-manifests among them."""
    status = _client(
        commands, "status", "show services (one in detail with NAME, or network, pki, preflight)"
    )
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true", help='print {"services": [...]} as JSON')

    logs = _client(commands, "logs", "print a service's last output lines")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.epilog = "Control characters in the output are shown escaped (\\x1b)."

    for name in ("start", "restart"):
        _client(commands, name, f"{name} a service").add_argument("name")
    kill = _client(
        commands,
        "kill",
        "send a signal to a service's main process (its policy decides what follows)",
    )
    kill.add_argument("name")
    kill.add_argument("-s", "--signal", default="TERM", help="signal name (default: %(default)s)")
    stop = _client(commands, "stop", "stop a service, or everything with --all")
    stop.add_argument("name", nargs="?")
    stop.add_argument("--all", action="store_true", help="stop every service and end the daemon")

    reload = _client(
        commands,
        "reload",
        "read the config file again and apply what changed (exit 1 if invalid or refused)",
    )
    reload.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    reload.add_argument("--json", action="store_true", help="print the reply as JSON")

    kubeconfig = _client(
        commands, "kubeconfig", "print the node's admin kubeconfig (it holds a key)"
    )
    kubeconfig.add_argument(
        "--server", help="the apiserver URL to write in it (default: the node's own)"
    )
    _add_token_commands(commands)
    _add_analyze_commands(commands)
    commands.add_parser(
        "apply-manifests",
        help="apply a directory of manifests, again on change (the manifests role)",
        add_help=False,
    )
    commands.add_parser(
        "pod-network",
        help="a host-gateway pod network: CNI config and routes (the pod-network role)",
        add_help=False,
    )

    for name in POWER_COMMANDS:
        _client(
            commands,
            name,
            f"stop every service in reverse order, then {name} the node (PID 1 only)",
        )


def _add_token_commands(commands: Commands) -> None:
    """token create|list|revoke: bootstrap tokens for joining workers (a controller's)."""
    token = _client(commands, "token", "make, list and revoke join tokens for workers")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help)
        # Also after the action (k4sinit token list --socket S); SUPPRESS keeps the
        # value given before it (k4sinit token --socket S list).
        sub.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return sub

    create = action("create", "make a bootstrap token and print a worker's join token")
    create.add_argument(
        "--ttl",
        type=duration,
        default=None,
        help="how long the token joins workers: 30m, 24h, 7d, 1h30m; 0 never expires "
        "(default: 24h)",
    )
    create.add_argument(
        "--server", help="the apiserver URL workers reach (default: the node's own address)"
    )
    listing = action("list", "show the cluster's bootstrap tokens (not their secrets)")
    listing.add_argument("--json", action="store_true")
    action("revoke", "delete a bootstrap token: workers can no longer join with it").add_argument(
        "id", help="the token's id (its first six characters)"
    )


def _add_analyze_commands(commands: Commands) -> None:
    """analyze blame|critical-chain|plot: the boot, from the daemon's timeline."""
    analyze = _client(
        commands, "analyze", "show how the boot went: blame, critical-chain, plot (as SVG)"
    )
    actions = analyze.add_subparsers(dest="analyze_command", metavar="ACTION", required=True)
    for name, help in (
        ("blame", "every service by the time from its start to ready, longest first"),
        (
            "critical-chain",
            "the dependencies that decided when SERVICE (default: the last ready) was "
            "ready, with k4sinit's own wait on each",
        ),
        ("plot", "the boot as an SVG timeline on stdout (k4sinit analyze plot > boot.svg)"),
    ):
        sub = actions.add_parser(name, help=help)
        sub.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "critical-chain":
            sub.add_argument("name", nargs="?", metavar="SERVICE")
    analyze.epilog = "Times are seconds since the kernel's start (a node) or k4sinit's start."


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration(text: str) -> float:
    """``30m``, ``24h``, ``7d``, ``1h30m``, ``90s`` (or plain seconds) in seconds; 0 is 0."""
    if text.isdigit():
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 30m, 24h or 7d")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _add_pid1_commands(commands: Commands) -> None:
    """init and dev: k4sinit as PID 1, of a node or of a container."""
    init = _client(
        commands, "init", "be PID 1: boot the node, supervise, shut down (also: k4sinit as /init)"
    )
    init.add_argument(
        "--config",
        help="config file (default: k4sinit.config= on the kernel command line, else /etc/k4sinit/config.yaml)",
    )
    init.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")

    dev = _client(
        commands, "dev", "run k4sinit init as PID 1 of new namespaces (a container) on this machine"
    )
    dev.add_argument("--config", required=True, help="YAML config file")
    dev.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
