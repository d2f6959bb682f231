"""``python -m k4sinit``: the same as the ``k4sinit`` command."""

from k4sinit.cli import entry

entry()
