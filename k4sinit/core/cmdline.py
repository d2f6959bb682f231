"""The kernel command line: which config, the node role, debug, hostname, ``ip=``.

Pure parsing, no I/O beyond reading the file. Boot parameters with a dot never
reach init's environment (the kernel passes only undotted ones), so k4sinit reads ``/proc/cmdline``:

==========================  ===================================================
``k4sinit.config=PATH``     the config file (default /etc/k4sinit/config.yaml)
``k4sinit.role=ROLE``       the node profile (controller, worker, single)
``k4sinit.debug``           log debug events too (``=0`` turns it off); ``=hang``
                            also allows the ``debug_hang`` control request, which
                            blocks PID 1's event loop (the watchdog's test)
``k4sinit.hostname=NAME``   the hostname, over the config's
``k4sinit.switchroot=X``    auto, always or never: over the config's boot.switchRoot
``k4sinit.token=TOKEN``     a worker's join token (``k4sinit token create``), over the
                            config's ``node.joinToken``, ``server`` and ``token``
``ip=...``                  the standard nfsroot ``ip=`` option (kept for networking)
==========================  ===================================================

Unknown ``k4sinit.*`` options are warnings, never fatal; so is a malformed
token (ignored; the warning says why, never the token's secret).
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass, field

from k4sinit.core.jointoken import JoinToken, parse_join_token
from k4sinit.core.nodespec import PROFILES

DEFAULT_CONFIG = "/etc/k4sinit/config.yaml"
KNOWN = ("config", "role", "debug", "hostname", "switchroot", "token")
SWITCH_ROOT = ("auto", "always", "never")


@dataclass(frozen=True)
class KernelOptions:
    """What the kernel command line asks of k4sinit."""

    config: str | None = None
    role: str | None = None
    debug: bool = False
    debug_hang: bool = False  # k4sinit.debug=hang
    hostname: str | None = None
    switch_root: str | None = None
    ip: str | None = None
    token: JoinToken | None = None
    warnings: tuple[str, ...] = field(default=())


def parse(cmdline: str) -> KernelOptions:
    """Parse a kernel command line; bad or unknown k4sinit options become warnings."""
    try:
        words = shlex.split(cmdline)
    except ValueError:  # an unbalanced quote: the kernel itself splits on spaces
        words = cmdline.split()
    values: dict[str, str | bool] = {}
    warnings: list[str] = []
    ip = None
    for word in words:
        key, eq, value = word.partition("=")
        if key == "ip" and eq:
            ip = value
            continue
        if not key.startswith("k4sinit."):
            continue
        name = key.removeprefix("k4sinit.")
        if name not in KNOWN:
            close = difflib.get_close_matches(name, KNOWN, n=1)
            hint = f", did you mean k4sinit.{close[0]}?" if close else ""
            warnings.append(f"unknown kernel option {key!r}{hint}")
            continue
        values[name] = value if eq else True
    debug = values.pop("debug", None)
    options: dict[str, str | None] = {}
    for name, given in values.items():
        if not isinstance(given, str) or given == "":
            warnings.append(f"kernel option k4sinit.{name} needs a value")
            continue
        value = given
        allowed = {"role": PROFILES, "switchroot": SWITCH_ROOT}.get(name)
        if allowed is not None and value not in allowed:
            warnings.append(f"k4sinit.{name}={value} is not one of {', '.join(allowed)}; ignored")
            continue
        options[name] = value
    token = None
    if "token" in options:
        try:
            token = parse_join_token(options.pop("token") or "")
        except ValueError as exc:
            warnings.append(f"k4sinit.token: {exc}; ignored")
    return KernelOptions(
        config=options.get("config"),
        role=options.get("role"),
        debug=debug is True
        or (isinstance(debug, str) and debug not in ("0", "false", "no", "off")),
        debug_hang=debug == "hang",
        hostname=options.get("hostname"),
        switch_root=options.get("switchroot"),
        ip=ip,
        token=token,
        warnings=tuple(warnings),
    )


def read(path: str = "/proc/cmdline") -> KernelOptions:
    """Parse ``/proc/cmdline``; an unreadable file gives no options (and a warning)."""
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError as exc:
        return KernelOptions(warnings=(f"cannot read {path}: {exc.strerror}",))
