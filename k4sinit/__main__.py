"""``python -m k4sinit``: the same as the ``k4sinit`` command."""

from .cli import entry

entry()
