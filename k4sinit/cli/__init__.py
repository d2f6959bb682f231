"""The ``k4sinit`` command: :func:`main` (what tests call) and :func:`entry` (the script).

* :mod:`~k4sinit.cli.parser`: the commands, options and help
* :mod:`~k4sinit.cli.main`: dispatch, and the commands that read a config
  (``run``, ``check``, ``config``, ``preflight``, ``init``, ``dev``)
* :mod:`~k4sinit.cli.remote`: the commands that ask the daemon (``status``, ``logs``...)
* :mod:`~k4sinit.cli.format`: how replies are shown

``with_server`` (cli/remote.py) is loaded at the first use of the name:
``k4sinit --help`` loads neither the client nor the reply formats.
"""

from typing import TYPE_CHECKING, Any

from k4sinit.cli.main import entry, main

if TYPE_CHECKING:
    from k4sinit.cli.remote import with_server

__all__ = ["entry", "main", "with_server"]


def __getattr__(name: str) -> Any:
    """``with_server``, imported at the first use of the name (see the module docstring)."""
    if name == "with_server":
        from k4sinit.cli.remote import with_server

        return with_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
