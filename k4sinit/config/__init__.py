"""Loading and validating the k4sinit YAML config.

The whole file is checked before anything runs. Every problem is reported at
once, as a :class:`ConfigError` naming the file, the line, the service and the
field, with the likely fix where there is one. Keys follow the Kubernetes
container spec (``command``, ``args``, ``env``, probes, ...)::

    services:
      web:
        command: [python3, -m, http.server, --bind, 127.0.0.1, "18080"]
        readinessProbe:
          httpGet: {port: 18080}
      worker:
        command: [/bin/sh, -c, "while sleep 5; do echo tick; done"]
        dependsOn: {web: Ready}

This module is the package's surface; the work is done in:

* :mod:`~k4sinit.config.load`: :func:`load_config` and :func:`load_config_text`;
* :mod:`~k4sinit.config.document`: the file read within limits and composed
  into values that keep their lines (the limits against hostile files);
* :mod:`~k4sinit.config.reader`: the cursor each section reads a mapping with,
  recording errors, and the "did you mean" hints;
* :mod:`~k4sinit.config.errors`: :class:`ConfigError` and :class:`ConfigErrors`;
* one module per part of the file: :mod:`~k4sinit.config.system` (hostname,
  modules, sysctls, boot), :mod:`~k4sinit.config.node`,
  :mod:`~k4sinit.config.network`, :mod:`~k4sinit.config.storage`,
  :mod:`~k4sinit.config.services` (with
  dependencies, restarts, stop signal), :mod:`~k4sinit.config.probes` and
  :mod:`~k4sinit.config.resources`.
"""

from __future__ import annotations

from k4sinit.config.errors import ConfigError, ConfigErrors
from k4sinit.config.load import load_config, load_config_text
from k4sinit.config.node import worker_problems

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "load_config",
    "load_config_text",
    "worker_problems",
]
