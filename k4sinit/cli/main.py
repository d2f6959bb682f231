"""The ``k4sinit`` command line. ``main(argv) -> int`` is what tests call.

Commands and exit codes:

=================================  ==================================================
``run --config FILE``              supervise until a stop signal (SIGTERM, SIGINT,
                                   SIGQUIT, SIGUSR1/2, SIGALRM) or ``stop --all``
                                   (SIGHUP reloads the config); 0 after an orderly
                                   stop, 2 on an invalid config, 1 if the daemon
                                   could not start (services of a killed run at the
                                   socket still running)
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
``reload [--dry-run] [--json]``    read the config again and apply it as a diff (the
                                   plan: start, stop, restart, update in place); 0 when
                                   applied (or planned), 1 when the file is invalid
                                   (its errors as ``check`` prints them), a change
                                   needs a reboot (refused: nothing changes) or a step
                                   failed
``kubeconfig [--server URL]``      print the node's admin kubeconfig (root only)
``token create [--ttl D] [--server URL]``
                                   make a bootstrap token (default TTL 24h, 0: never
                                   expires) and print a worker's join token
``token list [--json]``            the cluster's bootstrap tokens, without secrets
``token revoke ID``                delete a bootstrap token (1 when there is none)
``analyze blame``                  every service by the time from start to ready
``analyze critical-chain [SERVICE]``
                                   the dependencies that decided when SERVICE
                                   (default: the last ready) was ready; 1 for an
                                   unknown SERVICE
``analyze plot``                   the boot as an SVG timeline on stdout
``apply-manifests ...``            the manifests role's program (k4sinit.node.applier)
``pod-network ...``                the pod-network role's program (k4sinit.node.routes)
=================================  ==================================================

Client commands (cli/remote.py) take ``--socket PATH`` (after the command name) or
``$K4SINIT_SOCKET``; they print a one-line error and exit 1 when the daemon
cannot be reached, refuses, or is served by a uid other than root or the caller's.

Service output is shown with its control characters escaped (``\\x1b``), always,
not only on a terminal: ``logs`` and ``status NAME`` are for people, and output
piped into ``less -R`` or a later ``cat`` must not steer a terminal either.

Imports are lazy: a client command loads no trio, pyroute2, cryptography or
YAML; ``run``, ``init`` and ``dev`` load what they start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from k4sinit.cli.parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (``init`` never returns)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv and os.getpid() == 1:
        argv = ["init"]  # the kernel runs /init with no arguments
    if argv[:1] == ["apply-manifests"]:
        from k4sinit.node import applier  # a program of its own, with its own options

        return applier.main(argv[1:])
    if argv[:1] == ["pod-network"]:
        from k4sinit.node import routes  # the pod-network role's program

        return routes.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "init":
        return cmd_init(args)
    # Loaded here, not with the module: ``k4sinit --help`` needs none of it.
    from k4sinit.control.client import ControlClientError, socket_path

    if args.command == "dev":
        from k4sinit.pid1.container import run_dev

        return run_dev(args.config, socket_path(args.socket), args.log_format)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "config":
        return cmd_config(args.config, args.profile)
    if args.command == "preflight":
        return cmd_preflight(args)
    if args.command == "run":
        return cmd_run(args)
    from k4sinit.cli.remote import run_client

    try:
        return run_client(args)
    except ControlClientError as exc:
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
    from k4sinit.config import ConfigErrors, load_config
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
        root.run(plan, options, logger, root.Attached(log_writer=writer))
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
    from k4sinit.core.nodespec import Profile
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
