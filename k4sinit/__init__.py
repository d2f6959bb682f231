"""k4sinit: the init (PID 1) and service supervisor of a diskless Kubernetes node.

The modules, bottom to top (each imports only those above it in this list):

* ``spec``, ``netspec``, ``nodespec``, ``config``, ``graph``, ``cmdline``: the
  validated config and the kernel command line (pure, no trio); ``image``: what
  the node image holds (``/etc/k4sinit/image.json``, pure)
* ``state``: a service's state record, events, exit statuses; ``restart``: the
  restart policy and backoff (pure, no trio)
* ``services/*`` and ``node``: each Kubernetes role described as a service
  spec, and the node profiles that expand into them (pure)
* ``pki``: the cluster PKI and kubeconfigs (cryptography, no trio)
* ``reaper``: the one process waiter; ``process``: spawn and terminate
* ``cgroups``: the cgroup2 subtree; ``system``: stage-1 mounts, modules,
  sysctls; ``power``: the end (kill, sync, unmount, reboot(2))
* ``output``, ``probes``: pieces of a service's life
* ``runner``: one service; ``supervisor``: all of them, in dependency order
* ``dhcp``, ``network``: the node's network and the ``network`` condition;
  ``identity``: the ``pki`` condition; ``preflight``: what a profile needs
* ``control``: the socket protocol, server and client; ``controlport``: the same
  carried over a virtio-serial port between a VM and its host; ``log``: structlog setup
* ``daemon``: everything composed; ``boot``: PID 1; ``devenv``: PID 1 of a
  container; ``applier``: ``k4sinit apply-manifests``, the manifests role's
  program (a process of its own); ``cli``: the ``k4sinit`` command
"""

__version__ = "0.1.0"
