"""k4sinit: the init (PID 1) and service supervisor of a diskless Kubernetes node.

The modules, bottom to top (each imports only those above it in this list):

* ``spec``, ``config``, ``graph``: the validated config (pure, no trio)
* ``reaper``: the one process waiter; ``process``: spawn and terminate
* ``output``, ``probes``, ``restart``, ``state``: pieces of a service's life
* ``runner``: one service; ``supervisor``: all of them, in dependency order
* ``control``: the socket protocol, server and client; ``log``: structlog setup
* ``daemon``: everything composed; ``cli``: the ``k4sinit`` command
"""

__version__ = "0.1.0"
