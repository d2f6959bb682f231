"""The cursor every section reads its mapping with, and what goes with it.

:class:`Reader` reads the fields of one YAML mapping of a
:class:`~k4sinit.config.document.Document`, type-checked, recording an error
(with a hint where there is a likely fix) instead of raising, and reports the
keys nobody asked for with the closest known one. :func:`kind_of` says what a
wrong value is, :func:`did_you_mean` what was meant.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, TypeVar

from k4sinit.config.document import UNREADABLE, Document, KeyPath
from k4sinit.core.graph import NameHints

__all__ = [
    "NUL",
    "Reader",
    "did_you_mean",
    "given",
    "is_bool",
    "is_int",
    "is_list",
    "is_mapping",
    "is_number",
    "is_str",
    "kind_of",
]

_T = TypeVar("_T")
NUL = "a NUL byte cannot be passed to a program or the kernel"


def kind_of(value: object) -> str:
    """How a YAML value reads to a person, for 'expected X, got Y'."""
    if value is None:
        return "null"
    if value is UNREADABLE:
        return "a value YAML could not read"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"a string ({reprlib.repr(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean(word: str, options: Sequence[str]) -> str | None:
    """A 'did you mean ...?' hint for the option closest to ``word``, if any is close.

    Every option is compared: the options here are a mapping's keys or a
    field's values, a few dozen at most (:class:`~k4sinit.core.graph.NameHints`
    bounds the work among a config's many service names).
    """
    return NameHints(options, full=len(options)).hint(word)


def is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def is_mapping(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict)


def is_bool(value: object) -> TypeGuard[bool]:
    return isinstance(value, bool)


def given(**values: Any) -> dict[str, Any]:
    """The values that were given, so the spec's dataclass defaults fill the rest."""
    return {name: value for name, value in values.items() if value is not None}


class Reader:
    """Reads the fields of one YAML mapping, recording errors instead of raising.

    Each getter returns None when its key is absent or its value is wrong (after
    recording an error). Every key asked for is known; :meth:`finish` reports
    the keys nobody asked for, with the closest known key as a hint.
    """

    def __init__(self, doc: Document, path: KeyPath, data: dict[str, Any]) -> None:
        self.doc = doc
        self.path = path
        self.data = data
        self.known: list[str] = []

    def error(self, message: str, hint: str | None = None, *, key: str | int | None = None) -> None:
        """Record an error about ``key``, or about the whole mapping without one."""
        self.doc.error(self.path if key is None else (*self.path, key), message, hint)

    def take(
        self,
        key: str,
        expected: str,
        check: Callable[[object], TypeGuard[_T]],
        *,
        required: bool = False,
        hint: str | None = None,
    ) -> _T | None:
        """The value of ``key`` if present and ``check`` accepts it (else None, after an
        error; ``hint`` goes with a type error)."""
        self.known.append(key)
        if key not in self.data:
            if required:
                self.error(f"missing required key {key!r}")
            return None
        value = self.data[key]
        if value is UNREADABLE:
            return None  # reported where it was read
        if not check(value):
            self.error(f"expected {expected}, got {kind_of(value)}", hint, key=key)
            return None
        return value

    def string(self, key: str, *, required: bool = False, hint: str | None = None) -> str | None:
        """A string; one with a NUL byte is an error (no program, path or kernel takes it)."""
        value = self.take(key, "a string", is_str, required=required, hint=hint)
        if value is not None and "\0" in value:
            self.error(NUL, key=key)
            return None
        return value

    def absolute_path(self, key: str, *, required: bool = False) -> str | None:
        value = self.string(key, required=required)
        if value is not None and not value.startswith("/"):
            self.error(f"must be an absolute path, got {value!r}", key=key)
            return None
        return value

    def choice(self, key: str, options: Sequence[str]) -> str | None:
        value = self.string(key)
        if value is not None and value not in options:
            expected = f"expected one of {', '.join(options)}, got {value!r}"
            self.error(expected, did_you_mean(value, options), key=key)
            return None
        return value

    def number(
        self, key: str, minimum: float = 0.0, *, above: bool = False, maximum: float | None = None
    ) -> float | None:
        """A finite int or float, ``>= minimum`` (``> minimum`` if ``above``), ``<= maximum``."""
        value = self.take(key, "a number", is_number)
        if value is None:
            return None
        value = float(value)  # exact enough: integers are at most 64 bits
        low_ok = value > minimum if above else value >= minimum
        if not (math.isfinite(value) and low_ok and (maximum is None or value <= maximum)):
            if maximum is not None:
                bound = f"between {minimum:g} and {maximum:g}"
            else:
                bound = f"{'>' if above else '>='} {minimum:g}"
            self.error(f"must be {bound}, got {value:g}", key=key)
            return None
        return float(value)

    def integer(
        self,
        key: str,
        minimum: int,
        *,
        maximum: int | None = None,
        required: bool = False,
        hint: str | None = None,
    ) -> int | None:
        value = self.take(key, "an integer", is_int, required=required, hint=hint)
        if value is None:
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self.error(f"must be {bound}, got {value}", key=key)
            return None
        return value

    def strings(
        self, key: str, *, required: bool = False, non_empty: bool = False
    ) -> tuple[str, ...] | None:
        """A list of strings; each non-string item is reported on its own."""
        hint = "write a YAML list, one item per argument"
        items = self.take(key, "a list of strings", is_list, required=required, hint=hint)
        if items is None:
            return None
        wrong = [i for i, item in enumerate(items) if not isinstance(item, str)]
        for i in wrong:
            if items[i] is UNREADABLE:
                continue
            message = f"expected a string, got {kind_of(items[i])}"
            self.doc.error((*self.path, key, i), message, "quote it to make it a string")
        for i, item in enumerate(items):
            if isinstance(item, str) and "\0" in item:
                wrong.append(i)
                self.doc.error((*self.path, key, i), "a NUL byte cannot be passed to a program")
        if non_empty and not items:
            self.error("must not be empty", key=key)
            return None
        return None if wrong else tuple(items)

    def mapping(
        self, key: str, *, required: bool = False, hint: str | None = None
    ) -> Reader | None:
        value = self.take(key, "a mapping", is_mapping, required=required, hint=hint)
        return None if value is None else Reader(self.doc, (*self.path, key), value)

    def items(self, key: str, expected: str) -> list[Reader]:
        """A list of mappings, one reader for each; other items are reported."""
        readers = []
        for i, item in enumerate(self.take(key, f"a list of {expected}", is_list) or ()):
            if isinstance(item, dict):
                readers.append(Reader(self.doc, (*self.path, key, i), item))
            else:
                self.doc.error((*self.path, key, i), f"expected {expected}, got {kind_of(item)}")
        return readers

    def finish(self) -> None:
        """Report every key of the mapping that no getter asked for."""
        for key in self.data:
            if key not in self.known:
                hint = did_you_mean(key, self.known) or f"known keys: {', '.join(self.known)}"
                self.error(f"unknown key {key!r}", hint, key=key)
