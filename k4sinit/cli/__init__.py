"""The ``k4sinit`` command: :func:`main` (what tests call) and :func:`entry` (the script).

* :mod:`~k4sinit.cli.parser`: the commands, options and help
* :mod:`~k4sinit.cli.main`: dispatch, and the commands that read a config
  (``run``, ``check``, ``config``, ``preflight``, ``init``, ``dev``)
* :mod:`~k4sinit.cli.remote`: the commands that ask the daemon (``status``, ``logs``...)
* :mod:`~k4sinit.cli.format`: how replies are shown
"""

from k4sinit.cli.main import entry, main
from k4sinit.cli.remote import with_server

__all__ = ["entry", "main", "with_server"]
