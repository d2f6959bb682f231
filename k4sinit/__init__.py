"""k4sinit: the init (PID 1) and service supervisor of a diskless Kubernetes node.

The package is layered; each folder is a layer and imports only the layers
below it (``tests/test_layers.py`` checks every import against this list):

* ``core/``: pure types and decisions, no trio: the service, network, node and
  whole-config specs, service state, the dependency graph and its one check,
  the restart policy, the kernel command line, the image's info, logging, the
  boot's timeline and its analysis (``k4sinit analyze``)
* ``host/``: the kernel's interfaces PID 1 uses directly: mounts, modules and
  coldplug, sysctls, hostname
* ``config/``: the YAML reader, line-numbered errors with suggestions
* ``supervision/``: the one process waiter, spawning, output, cgroups,
  probes, one runner per service, the supervisor
* ``network/``: the node's network, applied with pyroute2, and the ``network``
  built-in dependency
* ``services/``: each Kubernetes role described as a service, and the registry
* ``node/``: the ``node:`` section expanded into role services and files, the
  PKI and the ``pki`` built-in dependency, preflight, and ``k4sinit
  apply-manifests`` (the manifests role's program)
* ``control/``: the control socket's wire types, server and client, and the
  virtio-serial port that carries it out of a VM
* ``pid1/``: what only PID 1 does: boot stages, switch root, fallback, power,
  the container mode
* ``daemon/``: the one composition root, used by ``run``, ``init`` and ``dev``,
  and the daemon it builds
* ``cli/``: the ``k4sinit`` command
"""

import time as _time

__version__ = "0.1.0"
#: CLOCK_MONOTONIC when the package was first imported: the interpreter has
#: started, k4sinit's own imports have not (the first stages, core/timeline.py).
IMPORTED_AT = _time.monotonic()
