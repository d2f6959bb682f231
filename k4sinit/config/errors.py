"""What a config check reports: :class:`ConfigError`, one problem, and
:class:`ConfigErrors`, all of a file's, raised at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigErrors", "single"]


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in a config file.

    ``field`` is a dotted path inside the service (or from the top of the file
    when ``service`` is None), e.g. ``readinessProbe.httpGet.port`` or
    ``command[2]``. Renders as
    ``file:line: service 'x', field a.b: message, hint``.
    """

    file: str
    line: int | None
    service: str | None
    field: str | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = []
        if self.service is not None:
            what.append(f"service {self.service!r}")
        if self.field is not None:
            what.append(f"field {self.field}")
        text = self.message if self.hint is None else f"{self.message}, {self.hint}"
        return f"{where}: {', '.join(what)}: {text}" if what else f"{where}: {text}"


class ConfigErrors(Exception):
    """Everything wrong with one config file; ``errors`` is never empty."""

    def __init__(self, source: str, errors: Sequence[ConfigError]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(source, self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        head = f"{count} error{'' if count == 1 else 's'} in {self.source}"
        return "\n".join([head, *map(str, self.errors)])


def single(source: str, line: int | None, message: str) -> ConfigErrors:
    """One error about the whole file (``line`` where there is one)."""
    return ConfigErrors(source, [ConfigError(source, line, None, None, message)])
