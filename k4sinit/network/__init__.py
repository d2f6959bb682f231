"""The node's network: apply its config, keep it applied, and say when it is ready.

What other layers use, re-exported: :class:`~k4sinit.network.network.Network`
(one per daemon; the built-in ``network`` dependency), the status' wire types
(:mod:`~k4sinit.network.snapshot`) and the /etc file texts
(:mod:`~k4sinit.network.etcfiles`). The map of the package's modules is in
:mod:`k4sinit.network.network`'s docstring.

``Network`` is loaded at the first use of the name, not with this package: it
brings pyroute2 (~150 ms and ~13 MB to import), which ``k4sinit apply-manifests``
(a process of its own) and readers of the wire types do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k4sinit.network.etcfiles import render_hosts, render_resolv_conf
from k4sinit.network.snapshot import InterfaceSnapshot, NetworkSnapshot

if TYPE_CHECKING:
    from k4sinit.network.network import Network

__all__ = ["InterfaceSnapshot", "Network", "NetworkSnapshot", "render_hosts", "render_resolv_conf"]


def __getattr__(name: str) -> Any:
    """``Network``, imported at the first use of the name (see the module docstring)."""
    if name == "Network":
        from k4sinit.network.network import Network

        return Network
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
