"""Where k4sinit finds programs: the PATH it runs with and gives services, and its shell.

The kernel passes init no PATH; PID 1 sets :data:`DEFAULT_PATH` and a service
whose ``env`` sets none gets it too. ``/bbin`` comes first: a u-root image
keeps its commands there. :data:`SHELL` is the shell k4sinit itself runs (the
cgroup join before a service's program, the images oneshot, the emergency
shell by default); a node's ``binPath`` need hold none.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PATH", "SHELL"]

DEFAULT_PATH = "/bbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELL = "/bin/sh"
