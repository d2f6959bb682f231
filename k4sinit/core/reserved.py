"""The words k4sinit reserves, as the command line spells them: the built-in
dependencies, ``preflight``, the node profiles, the power commands and the
default control socket.

Apart from the specs that use them (core/spec.py, core/nodespec.py,
control/wire.py re-export them) so that ``k4sinit --help`` and ``k4sinit
status`` read them without loading the specs (tests/test_layers.py checks what
the CLI loads). Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "BUILTIN_DEPENDENCIES",
    "DEFAULT_SOCKET",
    "NETWORK",
    "PKI",
    "POWER_COMMANDS",
    "PREFLIGHT",
    "PROFILES",
    "STATUS_NAMES",
    "Profile",
]

# Names a service can depend on that are not services: the daemon provides them.
NETWORK: Final = "network"  # addresses, routes and DNS configured (network.py)
PKI: Final = "pki"  # the node's certificates and kubeconfigs exist (identity.py)
BUILTIN_DEPENDENCIES = frozenset({NETWORK, PKI})
# ``k4sinit status preflight``: the boot's machine checks (preflight.py), not a service.
PREFLIGHT: Final = "preflight"
# What ``k4sinit status NAME`` answers for itself, so no service may be called so.
STATUS_NAMES = frozenset({*BUILTIN_DEPENDENCIES, PREFLIGHT})


class Profile(enum.Enum):
    """What a node is: its control plane, a worker that joins one, or both."""

    CONTROLLER = "controller"
    WORKER = "worker"
    SINGLE = "single"


PROFILES = tuple(p.value for p in Profile)  # as k4sinit.role= and --profile spell them

#: The ends of a node (PID 1 only), as commands and as the wire's ops (control/wire.py).
POWER_COMMANDS = ("reboot", "poweroff", "halt")

DEFAULT_SOCKET = "/run/k4sinit/control.sock"
