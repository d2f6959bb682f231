"""The daemon layer: the composition root and what it composes.

* :mod:`~k4sinit.daemon.root`: the one place that builds a running k4sinit for
  ``run``, ``init`` and ``dev`` (:class:`~k4sinit.daemon.root.Options`)
* :mod:`~k4sinit.daemon.daemon`: :class:`Daemon`, the parts running as one
  (reaper, supervisor, network, pki, control server, signals)
* :mod:`~k4sinit.daemon.reload`: ``k4sinit reload``: the config read again and
  applied as a diff (the plan is :mod:`k4sinit.core.reload`'s)
* :mod:`~k4sinit.daemon.survivors`: what a ``run`` killed by SIGKILL left running
"""

from k4sinit.daemon.daemon import (
    INIT_SIGNALS,
    RUN_SIGNALS,
    Daemon,
    Shutdown,
    default_env,
    raise_fd_limit,
)
from k4sinit.daemon.survivors import describe_survivors, serving, survivors

__all__ = [
    "INIT_SIGNALS",
    "RUN_SIGNALS",
    "Daemon",
    "Shutdown",
    "default_env",
    "describe_survivors",
    "raise_fd_limit",
    "serving",
    "survivors",
]
