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

The YAML is composed into nodes and walked here, rather than loaded, so that
every value keeps its line and duplicate keys are caught.

Limits that keep a hostile or broken file from exhausting PID 1, each an
error naming the file (and the line where there is one):

* the file must be a regular file of at most 1 MiB (a FIFO would block the
  read forever, ``/dev/zero`` would never end);
* aliases may add at most 10,000 values to the document, or as many values as
  the file writes if that is more: the "billion laughs" alias bomb stops
  there. This is go-yaml v3's rule (used by Kubernetes' sigs.k8s.io/yaml) in
  a simpler form: go-yaml lets aliases make up 99% of a small document and
  less of a larger one; here they may at most double a large one;
* values nest at most 64 levels deep (a config needs fewer than ten);
* integers fit in 64 bits (no field takes more).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import reprlib
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeGuard, TypeVar

import yaml

from k4sinit.core.config import Config, Fallback, SwitchRoot, SystemSpec
from k4sinit.core.graph import check_dependencies
from k4sinit.core.netspec import (
    DEFAULT_V4,
    DEFAULT_V6,
    DNS,
    Interface,
    InterfaceKind,
    IPAddress,
    IPInterface,
    IPNetwork,
    NetworkSource,
    NetworkSpec,
    Route,
    interface_name_problem,
    normalize_mac,
)
from k4sinit.core.nodespec import (
    ALL_ROLES,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    ONESHOT_ROLES,
    PROFILES,
    Datastore,
    NodeSpec,
    Profile,
    RoleOverride,
    profile_roles,
)
from k4sinit.core.spec import (
    PREFLIGHT,
    STATUS_NAMES,
    Backoff,
    Condition,
    ExecAction,
    FileAction,
    HTTPGetAction,
    Probe,
    ProbeAction,
    Resources,
    RestartPolicy,
    ServiceSpec,
    TCPSocketAction,
    TLSConfig,
    UnixSocketAction,
)

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "load_config",
    "load_config_text",
    "worker_problems",
]

_T = TypeVar("_T")
_NUL = "a NUL byte cannot be passed to a program or the kernel"
_Path = tuple[str | int, ...]  # where a value sits: keys and list indices from the top

_SERVICE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A service so named would shadow a built-in condition or what `k4sinit status NAME` shows.
_RESERVED_NAMES = STATUS_NAMES
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what h11 sends: ASCII, no control characters
_REQUEST_TARGET = re.compile(r"[\x21-\x7e]+")  # h11's request-target: visible ASCII
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_INT_TAG = "tag:yaml.org,2002:int"
_MAX_BYTES = 1 << 20  # a config is a few KiB; this bounds the read and what follows
_ALIAS_FLOOR = 10_000  # values aliases may add whatever the size of the document
_MAX_DEPTH = 64
_INT_BITS = 64


# --- errors ------------------------------------------------------------------


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


# --- entry points --------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``.

    Raises :class:`ConfigErrors` listing every problem found, including an
    unreadable file or one that is not UTF-8.
    """
    source = os.fspath(path)
    data = _read_bytes(source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        message = f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        raise _single(source, line, message) from None
    return load_config_text(text, source)


def load_config_text(text: str, source: str) -> Config:
    """Validate config ``text``; ``source`` names it in errors and in the result.

    Raises :class:`ConfigErrors` listing every problem found.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise _syntax_error(source, text, e) from None
    except RecursionError:  # only the pure-Python composer recurses; libyaml stops at 1000
        raise _single(source, None, f"nested too deeply: more than {_MAX_DEPTH} levels") from None
    doc = _Document(source, 0 if root is None else _count_nodes(root))
    data = None
    if root is not None:
        doc.lines[()] = root.start_mark.line + 1
        try:
            data = doc.plain(root, ())
        except _ExcessiveAliasing as e:
            raise _single(source, e.line, str(e)) from None
    services, system, network, node = _read_config(doc, data)
    if doc.errors:
        raise ConfigErrors(source, sorted(doc.errors, key=lambda e: e.line or 0))
    return Config(
        source=source,
        services=services,
        system=system,
        network=network,
        node=node,
        where=doc.where,
    )


def _read_bytes(source: str) -> bytes:
    """The bytes of the config file at ``source``: a regular file of at most 1 MiB.

    Anything else (a FIFO, a device, a directory) is refused before it is
    opened for reading, as is a larger file before it is read whole. Raises
    :class:`ConfigErrors`.
    """

    def refuse(problem: str) -> ConfigErrors:
        return _single(source, None, f"cannot read the config: {problem}")

    data = bytearray()
    try:
        mode = os.stat(source).st_mode
        if stat.S_ISREG(mode):
            # O_NONBLOCK: should a FIFO take the file's place meanwhile, open does not wait.
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                mode = os.fstat(fd).st_mode
                while stat.S_ISREG(mode) and len(data) <= _MAX_BYTES:
                    more = os.read(fd, _MAX_BYTES + 1 - len(data))
                    if not more:
                        break
                    data += more
            finally:
                os.close(fd)
    except OSError as e:
        raise refuse(e.strerror or str(e)) from None
    if not stat.S_ISREG(mode):
        raise refuse(f"it is {_file_kind(mode)}, not a regular file")
    if len(data) > _MAX_BYTES:
        raise refuse(f"it is larger than {_MAX_BYTES >> 20} MiB")
    return bytes(data)


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), f"of mode {mode:o}")


def _single(source: str, line: int | None, message: str) -> ConfigErrors:
    return ConfigErrors(source, [ConfigError(source, line, None, None, message)])


def _syntax_error(source: str, text: str, e: yaml.YAMLError) -> ConfigErrors:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        line = None if mark is None else mark.line + 1
        detail = ": ".join(str(part) for part in (e.context, e.problem) if part)
    elif isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, e.position) + 1
        detail = f"character {e.character!r} is not allowed"
    else:
        line, detail = None, str(e)
    return _single(source, line, f"YAML syntax error: {detail}")


# --- the YAML document ---------------------------------------------------------


class _ExcessiveAliasing(Exception):
    """Aliases would add more values than allowed; the message says how many."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _count_nodes(root: yaml.Node) -> int:
    """How many distinct nodes the composed document has (aliases counted once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return len(seen)


class _Unreadable:
    """The value of a scalar YAML could not make (already reported): getters skip it."""

    def __repr__(self) -> str:
        return "<unreadable>"


_UNREADABLE = _Unreadable()


class _Document:
    """One config being read: the errors found so far and the line of every value.

    ``written`` is the number of nodes in the composed document; aliases may
    add ``max(10000, written)`` more values as they are expanded (see the
    module docstring).
    """

    def __init__(self, file: str, written: int = 0) -> None:
        self.file = file
        self.errors: list[ConfigError] = []
        self.lines: dict[_Path, int] = {}
        # (service, dependency or None) -> (line, field): where the file wrote it,
        # for the errors the expansion finds (Config.where).
        self.where: dict[tuple[str, str | None], tuple[int | None, str | None]] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._open: set[int] = set()  # ids of collection nodes being built, to stop at recursion
        self._built: set[int] = set()  # ids of nodes built once: building one again is an alias
        self._written = written
        self._alias_limit = max(_ALIAS_FLOOR, written)
        self._aliased = 0  # values built again through aliases
        self._expanding: _Path | None = None  # where the alias being expanded is used

    def line(self, path: _Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor with a known line."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(
        self, path: _Path, message: str, hint: str | None = None, line: int | None = None
    ) -> None:
        """Record an error about the value at ``path`` (on ``line`` if given)."""
        if len(path) >= 2 and path[0] == "services":
            service, field_path = str(path[1]), path[2:]
        else:
            service, field_path = None, path
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in field_path)
        line = self.line(path) if line is None else line
        self.errors.append(
            ConfigError(self.file, line, service, field.lstrip(".") or None, message, hint)
        )

    def plain(self, node: yaml.Node, path: _Path, depth: int = 0) -> Any:
        """Plain Python values from ``node`` at ``path``, noting the line of every child.

        Mapping keys are taken as written (strings). Duplicate keys, odd tags,
        recursive aliases, values nested deeper than 64 levels and scalars
        YAML cannot make (``!!int abc``, integers beyond 64 bits) are reported
        and skipped; ``<<`` merges work. Raises :class:`_ExcessiveAliasing`
        when aliases add more values than allowed.
        """
        if id(node) not in self._built:
            self._built.add(id(node))
        elif self._expanding is None:  # an alias, and not one inside another: note where
            self._expanding = path
            try:
                return self.plain(node, path, depth)
            finally:
                self._expanding = None
        else:
            self._aliased += 1
            if self._aliased > self._alias_limit:
                message = (
                    f"excessive YAML aliasing: aliases add more than {self._alias_limit}"
                    f" values to a document of {self._written}"
                )
                # A node keeps the line of its anchor, not of the alias: name the key using it.
                where = self._expanding
                while where and isinstance(where[-1], int):
                    where = where[:-1]
                raise _ExcessiveAliasing(message, self.line(where))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            self.error(path, "recursive YAML alias")
            return None
        if depth >= _MAX_DEPTH:
            line = node.start_mark.line + 1
            self.error(path, f"nested too deeply: more than {_MAX_DEPTH} levels", line=line)
            return None
        if node.tag not in _PLAIN_TAGS:
            self.error(path, f"unsupported YAML tag {node.tag}")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for i, item in enumerate(node.value):
                    self.lines[(*path, i)] = item.start_mark.line + 1
                    items.append(self.plain(item, (*path, i), depth + 1))
                return items
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, path, depth)
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: _Path) -> Any:
        """The value of a scalar, or :data:`_UNREADABLE` after an error."""
        kind = node.tag.rpartition(":")[2]
        digits = sum(c.isdigit() for c in node.value)
        if node.tag == _INT_TAG and digits > sys.get_int_max_str_digits():
            message = f"an integer of {digits} digits is too long for k4sinit, which takes 64 bits"
            self.error(path, message)
            return _UNREADABLE
        try:
            value = self._constructor.construct_object(node)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or e
            self.error(path, f"unsupported YAML value: {problem}")
            return _UNREADABLE
        except (ValueError, KeyError, AttributeError, OverflowError):
            # SafeConstructor's own failures on a value its tag cannot take:
            # int('abc') for !!int, a KeyError for !!bool, a failed match for !!timestamp.
            self.error(path, f"cannot read {reprlib.repr(node.value)} as a YAML {kind}")
            return _UNREADABLE
        if _is_int(value) and value.bit_length() >= _INT_BITS:
            bits = value.bit_length()
            self.error(
                path, f"an integer of {bits} bits is too large for k4sinit, which takes 64 bits"
            )
            return _UNREADABLE
        return value

    def _mapping(self, node: yaml.MappingNode, path: _Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in reversed(sources):  # the first source wins
                    if isinstance(source, yaml.MappingNode):
                        merged = self.plain(source, path, depth + 1)
                        if isinstance(merged, dict):  # else a recursive alias, reported
                            out.update(merged)
                    else:
                        self.error(
                            path, "'<<' merges only mappings", line=source.start_mark.line + 1
                        )
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(path, "mapping keys must be plain strings", line=line)
                continue
            key = key_node.value
            if key in first_line:
                message = f"duplicate key {key!r} (first at line {first_line[key]})"
                self.error((*path, key), message, "remove one of them", line=line)
                continue
            first_line[key] = self.lines[(*path, key)] = line
            out[key] = self.plain(value_node, (*path, key), depth + 1)
        return out


def _kind(value: object) -> str:
    """How a YAML value reads to a person, for 'expected X, got Y'."""
    if value is None:
        return "null"
    if value is _UNREADABLE:
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


def _did_you_mean(word: str, options: Sequence[str]) -> str | None:
    """A 'did you mean ...?' hint for the option closest to ``word``, if any is close."""
    same_case = {option.lower(): option for option in options}.get(word.lower())
    close = same_case or next(iter(difflib.get_close_matches(word, options, 1, 0.6)), None)
    return None if close is None else f"did you mean {close!r}?"


def _is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def _is_mapping(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict)


def _given(**values: Any) -> dict[str, Any]:
    """The values that were given, so the spec's dataclass defaults fill the rest."""
    return {name: value for name, value in values.items() if value is not None}


class _Reader:
    """Reads the fields of one YAML mapping, recording errors instead of raising.

    Each getter returns None when its key is absent or its value is wrong (after
    recording an error). Every key asked for is known; :meth:`finish` reports
    the keys nobody asked for, with the closest known key as a hint.
    """

    def __init__(self, doc: _Document, path: _Path, data: dict[str, Any]) -> None:
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
        if value is _UNREADABLE:
            return None  # reported where it was read
        if not check(value):
            self.error(f"expected {expected}, got {_kind(value)}", hint, key=key)
            return None
        return value

    def string(self, key: str, *, required: bool = False, hint: str | None = None) -> str | None:
        """A string; one with a NUL byte is an error (no program, path or kernel takes it)."""
        value = self.take(key, "a string", _is_str, required=required, hint=hint)
        if value is not None and "\0" in value:
            self.error(_NUL, key=key)
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
            self.error(expected, _did_you_mean(value, options), key=key)
            return None
        return value

    def number(
        self, key: str, minimum: float = 0.0, *, above: bool = False, maximum: float | None = None
    ) -> float | None:
        """A finite int or float, ``>= minimum`` (``> minimum`` if ``above``), ``<= maximum``."""
        value = self.take(key, "a number", _is_number)
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
        value = self.take(key, "an integer", _is_int, required=required, hint=hint)
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
        items = self.take(key, "a list of strings", _is_list, required=required, hint=hint)
        if items is None:
            return None
        wrong = [i for i, item in enumerate(items) if not isinstance(item, str)]
        for i in wrong:
            if items[i] is _UNREADABLE:
                continue
            message = f"expected a string, got {_kind(items[i])}"
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
    ) -> _Reader | None:
        value = self.take(key, "a mapping", _is_mapping, required=required, hint=hint)
        return None if value is None else _Reader(self.doc, (*self.path, key), value)

    def items(self, key: str, expected: str) -> list[_Reader]:
        """A list of mappings, one reader for each; other items are reported."""
        readers = []
        for i, item in enumerate(self.take(key, f"a list of {expected}", _is_list) or ()):
            if isinstance(item, dict):
                readers.append(_Reader(self.doc, (*self.path, key, i), item))
            else:
                self.doc.error((*self.path, key, i), f"expected {expected}, got {_kind(item)}")
        return readers

    def finish(self) -> None:
        """Report every key of the mapping that no getter asked for."""
        for key in self.data:
            if key not in self.known:
                hint = _did_you_mean(key, self.known) or f"known keys: {', '.join(self.known)}"
                self.error(f"unknown key {key!r}", hint, key=key)


# --- the config ------------------------------------------------------------------


def _read_config(
    doc: _Document, data: Any
) -> tuple[dict[str, ServiceSpec], SystemSpec, NetworkSpec, NodeSpec | None]:
    """The top level: one reader per section."""
    if data is None:
        doc.error((), "the config is empty", "it needs a 'services' or a 'node' mapping")
        return {}, SystemSpec(), NetworkSpec(), None
    if not isinstance(data, dict):
        doc.error((), f"expected a mapping at the top level, got {_kind(data)}")
        return {}, SystemSpec(), NetworkSpec(), None
    top = _Reader(doc, (), data)
    node = _read_node(top)
    services = _read_services(top, node)
    system = _read_system(top)
    network = _read_network(top)
    top.finish()
    return services, system, network, node


_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MODULE = re.compile(r"[A-Za-z0-9_-]+")
_SYSCTL = re.compile(r"[a-z0-9_*-]+([./][a-z0-9_*-]+)+", re.IGNORECASE)


def _read_system(top: _Reader) -> SystemSpec:
    """``hostname``, ``modules``, ``sysctls`` and ``boot``: what PID 1 sets up."""
    hostname = top.string("hostname")
    if hostname is not None and (len(hostname) > 64 or not _HOSTNAME.fullmatch(hostname)):
        top.error(
            f"invalid hostname {hostname!r}",
            "lowercase letters, digits, '-' and '.'",
            key="hostname",
        )
        hostname = None
    modules = top.strings("modules")
    for i, module in enumerate(modules or ()):
        if not _MODULE.fullmatch(module):
            top.doc.error(
                ("modules", i),
                f"invalid module name {module!r}",
                "a name like br_netfilter, without .ko",
            )
    sysctls: list[tuple[str, str]] = []
    section = top.mapping(
        "sysctls", hint="write it as key: value pairs, e.g. net.ipv4.ip_forward: 1"
    )
    for key in section.data if section else ():
        assert section is not None
        section.known.append(key)
        value = section.data[key]
        if not _SYSCTL.fullmatch(key):
            section.error(f"invalid sysctl name {key!r}", "like net.ipv4.ip_forward", key=key)
        elif value is _UNREADABLE:
            continue  # reported where it was read
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            section.error(f"expected a string or number, got {_kind(value)}", key=key)
        elif isinstance(value, str) and "\0" in value:
            section.error(_NUL, key=key)
        else:
            sysctls.append((key, str(value)))
    boot = top.mapping("boot")
    fields: dict[str, Any] = {}
    if boot is not None:
        fallback = boot.choice("fallback", [f.value for f in Fallback])
        delay = boot.number("fallbackDelaySeconds")
        switch = boot.choice("switchRoot", [s.value for s in SwitchRoot])
        shell = boot.strings("shell", non_empty=True)
        preflight = boot.choice("preflight", ["enforce", "warn"])
        coldplug = boot.take("coldplug", "a boolean", _is_bool, hint="true or false")
        boot.finish()
        fields = _given(
            fallback=None if fallback is None else Fallback(fallback),
            fallback_delay=delay,
            switch_root=None if switch is None else SwitchRoot(switch),
            shell=shell,
            preflight=preflight,
            coldplug=coldplug,
        )
    return SystemSpec(
        **_given(hostname=hostname, modules=modules, sysctls=tuple(sysctls) or None),
        **fields,
    )


# --- node ------------------------------------------------------------------------

_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
_FLAG_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")
# The apiserver refuses a service range of more than 2^20 addresses; the
# controller-manager cuts the pod range into /24 (IPv4) or /64 (IPv6) per node.
_MAX_SERVICE_HOST_BITS = 20
_NODE_MASK = {4: 24, 6: 64}


def _read_node(top: _Reader) -> NodeSpec | None:
    """``node``: the Kubernetes roles this node runs; see :mod:`k4sinit.core.nodespec`.

    Only what can be known from the file is checked here: the kernel's
    ``k4sinit.role=`` may still change the profile, so k4sinit.node.roles
    checks the profile's needs (a worker's server and token) again.
    """
    r = top.mapping("node", hint="write it as node: {profile: single}")
    if r is None:
        return None
    profile = r.choice("profile", PROFILES)
    name = r.string("name")
    if name is not None and (len(name) > 253 or not _NODE_NAME.fullmatch(name)):
        hint = "a Kubernetes node name: lowercase letters, digits, '-' and '.'"
        r.error(f"invalid node name {name!r}", hint, key="name")
    data_dir = r.absolute_path("dataDir")
    pki_dir = r.absolute_path("pkiDir")
    datastore = r.choice("datastore", [d.value for d in Datastore])
    service_cidr = _node_network(r, "serviceCIDR", "like 10.96.0.0/12")
    pod_cidr = _node_network(r, "podCIDR", "like 10.244.0.0/16")
    domain = r.string("clusterDomain")
    if domain is not None and (domain.endswith(".") or not _DOMAIN.fullmatch(domain)):
        r.error(f"invalid cluster domain {domain!r}", "like cluster.local", key="clusterDomain")
    cluster_dns = _node_address(r, "clusterDNS")
    advertise = _node_address(r, "advertiseAddress")
    bin_path = _read_bin_path(r)
    multicall = r.absolute_path("multicall")
    server = r.string("server")
    if server is not None and not server.startswith("https://"):
        r.error(
            f"expected an https:// URL, got {server!r}", "like https://10.0.0.1:6443", key="server"
        )
    token = r.string("token")
    if token is not None and not _BOOTSTRAP_TOKEN.fullmatch(token):
        r.error("invalid bootstrap token", "it has the form abcdef.0123456789abcdef", key="token")
    bootstrap = r.absolute_path("bootstrapKubeconfig")
    images_dir = r.absolute_path("imagesDir")
    manifests_dir = r.absolute_path("manifestsDir")
    pause_image = r.string("pauseImage")
    cni_bin_dir = r.absolute_path("cniBinDir")
    cni_conf_dir = r.absolute_path("cniConfDir")
    roles = _read_roles(r)
    r.finish()

    services, pods = service_cidr or DEFAULT_SERVICE_CIDR, pod_cidr or DEFAULT_POD_CIDR
    given = pod_cidr is not None or service_cidr is not None
    if given and services.version == pods.version and services.overlaps(pods):
        key = "podCIDR" if pod_cidr is not None else "serviceCIDR"
        r.error(f"podCIDR {pods} overlaps serviceCIDR {services}", key=key)
    if (
        service_cidr is not None
        and service_cidr.max_prefixlen - service_cidr.prefixlen > _MAX_SERVICE_HOST_BITS
    ):
        smallest = service_cidr.max_prefixlen - _MAX_SERVICE_HOST_BITS
        hint = f"the apiserver takes at most 2^20 addresses, a /{smallest}"
        r.error(f"serviceCIDR {service_cidr} is too large", hint, key="serviceCIDR")
    if pod_cidr is not None and pod_cidr.prefixlen > _NODE_MASK[pod_cidr.version]:
        mask = _NODE_MASK[pod_cidr.version]
        hint = f"each node gets a /{mask} of it, so it must be a /{mask} or larger"
        r.error(f"podCIDR {pod_cidr} is too small", hint, key="podCIDR")
    if cluster_dns is not None and cluster_dns not in services:
        r.error(f"clusterDNS {cluster_dns} is not in serviceCIDR {services}", key="clusterDNS")
    spec = NodeSpec(
        **_given(
            profile=None if profile is None else Profile(profile),
            name=name,
            data_dir=data_dir,
            pki_dir=pki_dir,
            datastore=None if datastore is None else Datastore(datastore),
            service_cidr=service_cidr,
            pod_cidr=pod_cidr,
            cluster_domain=domain,
            cluster_dns=cluster_dns,
            advertise_address=advertise,
            bin_path=bin_path,
            multicall=multicall,
            server=server,
            token=token,
            bootstrap_kubeconfig=bootstrap,
            images_dir=images_dir,
            manifests_dir=manifests_dir,
            pause_image=pause_image,
            cni_bin_dir=cni_bin_dir,
            cni_conf_dir=cni_conf_dir,
        ),
        roles=roles,
        line=top.doc.line(("node",)),
    )
    for problem, fix, where in worker_problems(spec):
        r.error(problem, fix, key=where)
    return spec


def worker_problems(node: NodeSpec) -> list[tuple[str, str | None, str | None]]:
    """What a worker lacks to join its control plane: (message, hint, key) each.

    A worker joins with ``server`` and a bootstrap ``token``, or with a
    ``bootstrapKubeconfig`` (which names the server itself). Other profiles
    need neither (and keep them, in case the kernel makes the node a worker).
    """
    if node.profile is not Profile.WORKER:
        return []
    join = "a worker joins with server and token, or with bootstrapKubeconfig"
    if node.bootstrap_kubeconfig is not None:
        if node.token is not None:
            return [("give token or bootstrapKubeconfig, not both", join, "token")]
        return []
    if node.server is None and node.token is None:
        return [("profile worker needs a control plane to join", join, None)]
    if node.server is None:
        return [("a token needs a server", "add server: https://<controller>:6443", None)]
    if node.token is None:
        return [("a server needs a token", "add token: abcdef.0123456789abcdef", None)]
    return []


def _node_network(r: _Reader, key: str, example: str) -> IPNetwork | None:
    text = r.string(key)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        hint = _network_hint(text) if "/" in text else f"write a network {example}"
        r.error(f"invalid network {text!r}", hint, key=key)
        return None


def _node_address(r: _Reader, key: str) -> IPAddress | None:
    text = r.string(key)
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        hint = "one address, without /prefix" if "/" in text else None
        r.error(f"invalid IP address {text!r}", hint, key=key)
        return None


def _read_bin_path(r: _Reader) -> tuple[str, ...] | None:
    dirs = r.strings("binPath", non_empty=True)
    for i, directory in enumerate(dirs or ()):
        if not directory.startswith("/") or ":" in directory:
            hint = "an absolute directory without ':' (it joins PATH)"
            r.doc.error((*r.path, "binPath", i), f"invalid directory {directory!r}", hint)
            return None
    return dirs


def _read_roles(parent: _Reader) -> tuple[tuple[str, RoleOverride], ...]:
    """``roles``: per role, ``disabled``, ``extraArgs``, probes, ``resources``, ``env``."""
    section = parent.mapping("roles", hint="write it as roles: {kubelet: {extraArgs: {...}}}")
    if section is None:
        return ()
    roles = []
    for role in section.data:
        if role not in ALL_ROLES:
            hint = _did_you_mean(role, ALL_ROLES) or f"the roles are {', '.join(ALL_ROLES)}"
            section.error(f"unknown role {role!r}", hint, key=role)
            section.known.append(role)
            continue
        r = section.mapping(role)
        if r is None:
            continue
        disabled = r.take("disabled", "a boolean", _is_bool)
        extra_args = _read_extra_args(r)
        readiness = _read_probe(r, "readinessProbe")
        liveness = _read_probe(r, "livenessProbe", single_success=True)
        resources = _read_resources(r)
        env = _read_env(r)
        r.finish()
        override = RoleOverride(
            **_given(
                disabled=disabled,
                extra_args=extra_args,
                readiness_probe=readiness,
                liveness_probe=liveness,
                resources=resources,
                env=env,
            )
        )
        roles.append((role, override))
    return tuple(roles)


def _read_extra_args(parent: _Reader) -> tuple[tuple[str, str | None], ...] | None:
    """``extraArgs: {flag: value}``; a flag set to null removes the role's default."""
    r = parent.mapping("extraArgs", hint="write it as flag: value pairs, e.g. v: '2'")
    if r is None:
        return None
    args: dict[str, str | None] = {}
    for key in r.data:
        r.known.append(key)
        flag = key.lstrip("-")
        value = r.data[key]
        if not _FLAG_NAME.fullmatch(flag):
            r.error(f"invalid flag name {key!r}", "like feature-gates or v", key=key)
        elif flag in args:
            r.error(f"the flag {flag!r} is given twice", key=key)
        elif value is not None and not isinstance(value, str):
            hint = "quote it to make it a string (null removes the flag)"
            r.error(f"expected a string or null, got {_kind(value)}", hint, key=key)
        elif isinstance(value, str) and "\0" in value:
            r.error("a NUL byte cannot be passed to a program", key=key)
        else:
            args[flag] = value
    return tuple(args.items())


# --- network ---------------------------------------------------------------------

_MAX_NAMESERVERS = 3  # glibc's and musl's MAXNS: the resolver never asks a fourth
_LABEL = r"[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?", re.IGNORECASE)
_TO_HINT = "a network like 192.168.50.0/24, or default"


def _read_network(top: _Reader) -> NetworkSpec:
    """``network``: interfaces by name or MAC, their addresses and routes, and DNS.

    A ``network`` section, even an empty one, takes the place of the kernel's
    ``ip=``. :mod:`k4sinit.core.netspec` says what each field means.
    """
    r = top.mapping("network", hint="write it as network: {interfaces: [...], dns: {...}}")
    if r is None:
        return NetworkSpec()
    entries = []
    for item in r.items("interfaces", "an interface (a mapping with name or mac)"):
        interface = _read_interface(item)
        if interface is not None:
            entries.append((interface, item))
    _check_interfaces(entries)
    dns = _read_dns(r)
    wait = r.take("waitForCarrier", "a boolean", _is_bool)
    r.finish()
    return NetworkSpec(
        interfaces=tuple(interface for interface, _ in entries),
        **_given(dns=dns, wait_for_carrier=wait),
        source=NetworkSource.CONFIG,
    )


def _is_bool(value: object) -> TypeGuard[bool]:
    return isinstance(value, bool)


def _read_interface(r: _Reader) -> Interface | None:
    """One ``interfaces`` item; None (after recording why) if it is not valid."""
    name = _interface_name(r, "name")
    mac = _read_mac(r)
    kind_name = r.choice("kind", [k.value for k in InterfaceKind])
    kind = InterfaceKind.PHYSICAL if kind_name is None else InterfaceKind(kind_name)
    up = r.take("up", "a boolean", _is_bool)
    mtu = r.integer("mtu", 68, maximum=65535)
    dhcp = r.take("dhcp", "a boolean", _is_bool)
    addresses, addresses_ok = _read_addresses(r)
    routes = _read_routes(r)
    ports = _read_names(r, "ports")
    vlan_id = r.integer("id", 1, maximum=4094)
    link = _interface_name(r, "link")
    r.finish()
    read: dict[str, object] = {
        "name": name,
        "mac": mac,
        "kind": kind_name,
        "up": up,
        "mtu": mtu,
        "dhcp": dhcp,
        "addresses": addresses if addresses_ok else None,
        "routes": routes,
        "ports": ports,
        "id": vlan_id,
        "link": link,
    }
    ok = all(value is not None for key, value in read.items() if key in r.data)  # None: wrong

    problems: list[tuple[str, str | None, str | None]] = []  # message, hint, key
    if "name" in r.data and "mac" in r.data:
        why = "mac selects a physical interface whose name is not stable"
        problems.append(("give name or mac, not both", why, None))
    elif kind is not InterfaceKind.PHYSICAL and "name" not in r.data:
        problems.append((f"a {kind} needs a name", f"k4sinit creates the {kind} by name", None))
    elif "name" not in r.data and "mac" not in r.data:
        fix = "add name: eth0, or mac: 52:54:00:12:34:56"
        problems.append(("an interface needs a name or a mac", fix, None))
    if "ports" in r.data and kind is not InterfaceKind.BRIDGE:
        problems.append(("ports are for a bridge", "add kind: bridge", "ports"))
    for vlan_key in ("id", "link"):
        if vlan_key in r.data and kind is not InterfaceKind.VLAN:
            problems.append((f"{vlan_key!r} is for a vlan", "add kind: vlan", vlan_key))
        elif vlan_key not in r.data and kind is InterfaceKind.VLAN:
            problems.append((f"a vlan needs {vlan_key!r}", "like link: eth0 and id: 100", None))
    if link is not None and link == name:
        problems.append(("a vlan cannot be its own link", None, "link"))
    if name is not None and name in (ports or ()):
        problems.append((f"the bridge {name!r} cannot be its own port", None, "ports"))
    if mtu is not None and mtu < 1280 and any(a.version == 6 for a in addresses):
        problems.append((f"IPv6 needs an MTU of at least 1280, got {mtu}", None, "mtu"))
    for message, hint, key in problems:
        r.error(message, hint, key=key)
    if routes and addresses_ok and dhcp is not True:
        _check_gateways(addresses, routes)
    if problems or not ok:
        return None
    return Interface(
        name=name,
        mac=mac,
        kind=kind,
        addresses=addresses,
        routes=tuple(route for route, _ in routes or ()),
        bridge_ports=ports or (),
        vlan_id=vlan_id,
        vlan_link=link,
        **_given(up=up, mtu=mtu, dhcp=dhcp),
    )


def _interface_name(r: _Reader, key: str) -> str | None:
    name = r.string(key)
    problem = None if name is None else interface_name_problem(name)
    if problem is not None:
        r.error(f"invalid interface name {name!r}: it {problem}", key=key)
        return None
    return name


def _read_mac(r: _Reader) -> str | None:
    value = r.take("mac", "a MAC address like 52:54:00:12:34:56", _is_mac_like)
    if value is None:
        return None
    text = value if isinstance(value, str) else _sexagesimal(value)
    mac = None if text is None else normalize_mac(text)
    if mac is None and isinstance(value, int):
        message = f"invalid MAC address (YAML read it as the number {value})"
        r.error(message, 'quote it, like mac: "52:54:00:12:34:56"', key="mac")
    elif mac is None:
        r.error(f"invalid MAC address {value!r}", "like 52:54:00:12:34:56", key="mac")
    return mac


def _is_mac_like(value: object) -> TypeGuard[str | int]:
    return isinstance(value, str) or _is_int(value)


def _sexagesimal(value: int) -> str | None:
    """The text of an unquoted MAC that YAML 1.1 read as a base-60 integer.

    ``52:54:00:12:34:56`` has only digits and every group after the first is
    below 60, so YAML 1.1 reads it as a number; its six two-digit groups come
    back from that number exactly. Anything else gives None.
    """
    groups = []
    for _ in range(5):
        value, group = divmod(value, 60)
        groups.append(group)
    if not 10 <= value <= 99:  # the first group: two digits, YAML allows no leading 0
        return None
    return ":".join(f"{g:02d}" for g in (value, *reversed(groups)))


def _read_addresses(r: _Reader) -> tuple[tuple[IPInterface, ...], bool]:
    """``addresses``: the valid ones, and whether all were (after errors about the rest)."""
    items = r.take("addresses", "a list of addresses like 10.0.0.5/24", _is_list)
    addresses: dict[IPInterface, None] = {}  # an ordered set: long lists stay linear
    for i, item in enumerate(items or ()):
        path = (*r.path, "addresses", i)
        address = _address_with_prefix(r.doc, path, item)
        if address is not None and address in addresses:
            r.doc.error(path, f"{address} is listed twice")
        elif address is not None:
            addresses[address] = None
    ok = "addresses" not in r.data or (items is not None and len(addresses) == len(items))
    return tuple(addresses), ok


def _address_with_prefix(doc: _Document, path: _Path, item: object) -> IPInterface | None:
    if not isinstance(item, str):
        doc.error(path, f"expected an address like 10.0.0.5/24, got {_kind(item)}")
        return None
    try:
        address = ipaddress.ip_interface(item)
    except ValueError:
        hint = "write it as address/prefix, like 10.0.0.5/24 or fd00::5/64"
        doc.error(path, f"invalid address {item!r}", hint)
        return None
    if "/" not in item:
        hint = f"like {item}/{24 if address.version == 4 else 64}"
        doc.error(path, f"{item!r} has no prefix length", hint)
        return None
    if address.ip.is_unspecified or address.ip.is_multicast:
        doc.error(path, f"{item!r} is not a host address")
        return None
    return address


def _read_routes(r: _Reader) -> list[tuple[Route, _Reader]] | None:
    """``routes``, each with its reader (for errors found later); None if any is wrong."""
    raw = r.data.get("routes")
    readers = r.items("routes", "a route (a mapping with to, via and metric)")
    routes = [(route, item) for item in readers if (route := _read_route(item)) is not None]
    ok = raw is None or (isinstance(raw, list) and len(routes) == len(raw))
    first: dict[tuple[IPNetwork, int | None], int | None] = {}
    for route, item in routes:
        key = (route.to, route.metric)
        if key in first:
            metric = "" if route.metric is None else f" with metric {route.metric}"
            message = (
                f"the route to {route.to}{metric} is listed twice (first at line {first[key]})"
            )
            item.error(message, "give one of them another metric")
            ok = False
        else:
            first[key] = r.doc.line(item.path)
    return routes if ok else None


def _read_route(r: _Reader) -> Route | None:
    to_text = r.take("to", _TO_HINT, _is_str)
    via_text = r.string("via")
    metric = r.integer("metric", 0, maximum=2**32 - 1)
    r.finish()
    read = {"to": to_text, "via": via_text, "metric": metric}
    if any(key in r.data and value is None for key, value in read.items()):
        return None  # already reported
    via = None
    if via_text is not None:
        try:
            via = ipaddress.ip_address(via_text)
        except ValueError:
            hint = "a gateway is one address, without /prefix" if "/" in via_text else None
            r.error(f"invalid gateway address {via_text!r}", hint, key="via")
            return None
    to: IPNetwork = DEFAULT_V4 if via is None or via.version == 4 else DEFAULT_V6
    if to_text is not None and to_text != "default":
        try:
            to = ipaddress.ip_network(to_text)
        except ValueError:
            r.error(f"invalid network {to_text!r}", _network_hint(to_text), key="to")
            return None
    if via is not None and via.version != to.version:
        message = f"gateway {via} is IPv{via.version} but {to} is IPv{to.version}"
        r.error(message, "a route's to and via are of one family", key="via")
        return None
    return Route(to=to, via=via, metric=metric)


def _network_hint(text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"write {_TO_HINT}"
    return f"it has host bits set, did you mean {str(network)!r}?"


def _check_gateways(
    addresses: Sequence[IPInterface], routes: Sequence[tuple[Route, _Reader]]
) -> None:
    """Report each IPv4 gateway the kernel would refuse on this interface.

    Without ``onlink`` the kernel takes a gateway only inside a network of the
    same interface: an address's, or an on-link route's. Not checked with DHCP
    (the lease brings a network) nor for IPv6 (gateways are mostly link-local,
    and router advertisements bring prefixes).
    """
    on_link = [a.network for a in addresses if a.version == 4]
    on_link += [route.to for route, _ in routes if route.via is None and route.to.version == 4]
    for route, item in routes:
        via = route.via
        if isinstance(via, ipaddress.IPv4Address) and not any(via in n for n in on_link):
            message = f"gateway {via} is not in a network of this interface"
            hint = (
                "add an address in its network (like 10.0.0.5/24), an on-link route, or dhcp: true"
            )
            item.error(message, hint, key="via")


def _read_names(r: _Reader, key: str) -> tuple[str, ...] | None:
    """A list of interface names (None if any is wrong, after errors)."""
    items = r.take(key, "a list of interface names", _is_list)
    names: dict[str, None] = {}  # an ordered set
    for i, item in enumerate(items or ()):
        path = (*r.path, key, i)
        problem = interface_name_problem(item) if isinstance(item, str) else None
        if not isinstance(item, str):
            r.doc.error(path, f"expected an interface name, got {_kind(item)}")
        elif problem is not None:
            r.doc.error(path, f"invalid interface name {item!r}: it {problem}")
        elif item in names:
            r.doc.error(path, f"{item!r} is listed twice")
        else:
            names[item] = None
    return tuple(names) if items is not None and len(names) == len(items) else None


def _check_interfaces(entries: Sequence[tuple[Interface, _Reader]]) -> None:
    """Checks across interfaces: names and MACs once each, a port in one bridge,
    no bridge as a port, one vlan per id and link."""
    first: dict[tuple[str, object], int | None] = {}
    port_of: dict[str, str] = {}
    bridges = {i.name for i, _ in entries if i.kind is InterfaceKind.BRIDGE}
    for interface, r in entries:
        vlan = (interface.vlan_link, interface.vlan_id)
        for key, value in (("name", interface.name), ("mac", interface.mac), ("id", vlan)):
            if value is None or value == (None, None):
                continue
            if (key, value) in first:
                what = f"vlan {vlan[1]} on {vlan[0]!r}" if key == "id" else repr(value)
                message = f"{what} is configured twice (first at line {first[key, value]})"
                r.error(message, key=key)
            else:
                first[key, value] = r.doc.line((*r.path, key))
        for i, port in enumerate(interface.bridge_ports):
            path = (*r.path, "ports", i)
            if port in bridges:
                r.doc.error(path, f"the bridge {port!r} cannot be a port of another bridge")
            elif port in port_of:
                r.doc.error(path, f"{port!r} is already a port of {port_of[port]!r}")
            else:
                port_of[port] = interface.label


def _read_dns(parent: _Reader) -> DNS | None:
    r = parent.mapping("dns", hint="write it as dns: {nameservers: [...], search: [...]}")
    if r is None:
        return None
    items = r.take("nameservers", "a list of IP addresses", _is_list) or []
    nameservers: dict[IPAddress, None] = {}  # an ordered set
    for i, item in enumerate(items):
        path = (*r.path, "nameservers", i)
        if not isinstance(item, str):
            r.doc.error(path, f"expected an IP address, got {_kind(item)}")
            continue
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            hint = "a nameserver is one address, without /prefix" if "/" in item else None
            r.doc.error(path, f"invalid nameserver address {item!r}", hint)
            continue
        if address in nameservers:
            r.doc.error(path, f"{address} is listed twice")
        else:
            nameservers[address] = None
    if len(items) > _MAX_NAMESERVERS:
        message = f"at most {_MAX_NAMESERVERS} nameservers, got {len(items)}"
        r.error(message, "the resolver asks only the first 3", key="nameservers")
    search = r.take("search", "a list of domains", _is_list) or []
    seen: set[str] = set()
    for i, domain in enumerate(search):
        path = (*r.path, "search", i)
        if not isinstance(domain, str):
            r.doc.error(path, f"expected a domain, got {_kind(domain)}")
        elif not _DOMAIN.fullmatch(domain):
            r.doc.error(path, f"invalid search domain {domain!r}", "like cluster.local")
        elif domain in seen:
            r.doc.error(path, f"{domain!r} is listed twice")
        else:
            seen.add(domain)
    r.finish()
    return DNS(
        nameservers=tuple(nameservers), search=tuple(d for d in search if isinstance(d, str))
    )


@dataclass(frozen=True, slots=True)
class _Dependency:
    name: str
    condition: Condition | None  # None: invalid, already reported
    path: _Path


@dataclass(frozen=True, slots=True)
class _Service:
    """What one service entry gave: its spec (None if invalid) and what cross-checks need."""

    spec: ServiceSpec | None
    restart_policy: RestartPolicy | None
    dependencies: tuple[_Dependency, ...]


def _read_services(top: _Reader, node: NodeSpec | None) -> dict[str, ServiceSpec]:
    """``services``: required, unless a ``node`` section brings role services.

    With a node section the profile's roles are services too: a service of the
    file may depend on them but not take their names (a disabled role's name
    is free: the file's service of that name takes its place).
    """
    section = top.mapping("services", required=node is None)
    if section is None:
        return {}
    roles = frozenset() if node is None else _active_roles(node)
    services: dict[str, _Service] = {}
    for name in section.data:
        _check_service_name(section, name)
        if node is not None and name in roles:
            message = f"{name!r} is a role of profile {node.profile.value}"
            hint = f"override it under node.roles.{name}, or disable the role there to replace it"
            section.error(message, hint, key=name)
        entry = section.mapping(name)
        if entry is not None:
            services[name] = _read_service(entry, name)
    top.doc.where = _check_dependencies(
        top.doc, services, list(section.data), None if node is None else roles
    )
    return {name: s.spec for name, s in services.items() if s.spec is not None}


def _active_roles(node: NodeSpec) -> frozenset[str]:
    """The role services ``node`` runs: its profile's roles minus the disabled ones."""
    roles = profile_roles(node.profile, node.datastore)
    return frozenset(role for role in roles if not node.override(role).disabled)


def _check_service_name(section: _Reader, name: str) -> None:
    if name in _RESERVED_NAMES:
        hint = (
            "choose another name, it is kept for the boot's checks (k4sinit status preflight)"
            if name == PREFLIGHT
            else "choose another name, it is kept for a built-in condition"
        )
        section.error(f"the name {name!r} is reserved", hint, key=name)
    elif len(name) > 63 or not _SERVICE_NAME.fullmatch(name):
        hint = (
            "use at most 63 lowercase letters, digits and '-', starting and ending"
            " with a letter or digit (it names a cgroup and is typed on the command line)"
        )
        section.error("invalid service name", hint, key=name)


def _read_service(r: _Reader, name: str) -> _Service:
    command = r.strings("command", required=True, non_empty=True)
    args = r.strings("args")
    env = _read_env(r)
    working_dir = r.absolute_path("workingDir")
    dependencies = _read_dependencies(r)
    readiness = _read_probe(r, "readinessProbe")
    liveness = _read_probe(r, "livenessProbe", single_success=True)
    startup = _read_probe(r, "startupProbe", single_success=True)
    policy = r.choice("restartPolicy", [p.value for p in RestartPolicy])
    restart_policy = None if policy is None else RestartPolicy(policy)
    backoff = _read_backoff(r)
    stop_signal = _read_signal(r)
    grace = r.number("terminationGracePeriodSeconds")
    resources = _read_resources(r)
    r.finish()
    spec = None
    if command is not None:
        depends_on = tuple((d.name, d.condition) for d in dependencies if d.condition)
        fields = _given(
            args=args,
            env=env,
            working_dir=working_dir,
            depends_on=depends_on,
            readiness_probe=readiness,
            liveness_probe=liveness,
            startup_probe=startup,
            restart_policy=restart_policy,
            backoff=backoff,
            stop_signal=stop_signal,
            termination_grace_period=grace,
            resources=resources,
        )
        spec = ServiceSpec(name=name, command=command, **fields)
    if "restartPolicy" not in r.data:
        restart_policy = RestartPolicy.ALWAYS  # the spec's default
    return _Service(spec, restart_policy, tuple(dependencies))


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?")
_MEMORY_UNITS = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


_CPU_UNITS: dict[str | None, int] = {None: 1000, "m": 1}
_CPU_HINT = "cores (0.5, 2) or millicores (500m)"
# What the kernel takes: memory.max in bytes as a signed 64-bit page count's worth
# (Kubernetes' int64 quantities end there too); cpu.max's quota (100 per millicore,
# in microseconds) well below its 2^44 limit; pids.max up to PID_MAX_LIMIT.
_MAX_MEMORY = (2**63 - 1, "9223372036854775807 bytes")
_MAX_CPU = (10**9, "1000000 cores")
_MAX_PIDS = 4 * 1024 * 1024


def _read_resources(r: _Reader) -> Resources | None:
    """``resources: {limits: {memory, cpu, pids}, requests: {cpu}}``, Kubernetes quantities.

    ``requests.cpu`` becomes cgroup2's cpu.weight at 100 per CPU (1000m: 100, the
    kernel's default), within cpu.weight's 1-10000.
    """
    resources = r.mapping("resources")
    if resources is None:
        return None
    limits = resources.mapping("limits", hint="write it as limits: {memory: 256Mi, cpu: 500m}")
    requests = resources.mapping("requests", hint="write it as requests: {cpu: 2}")
    resources.finish()
    memory = cpu = pids = weight = None
    if limits is not None:
        memory = _quantity(
            limits, "memory", _MEMORY_UNITS, "bytes, or 256Mi / 1Gi / 500M", _MAX_MEMORY
        )
        cpu = _quantity(limits, "cpu", _CPU_UNITS, _CPU_HINT, _MAX_CPU)
        pids = limits.integer("pids", 1, maximum=_MAX_PIDS)
        limits.finish()
    if requests is not None:
        request = _quantity(requests, "cpu", _CPU_UNITS, _CPU_HINT, _MAX_CPU)
        requests.finish()
        if request is not None:
            weight = min(max(round(request / 10), 1), 10000)
    if limits is None and requests is None:
        return None
    return Resources(memory=memory, cpu_millis=cpu, pids=pids, cpu_weight=weight)


def _quantity(
    r: _Reader, key: str, units: dict[str | None, int], hint: str, maximum: tuple[int, str]
) -> int | None:
    """A Kubernetes quantity as an integer in the smallest unit of ``units``, at most
    ``maximum`` (the number, and how an error says it)."""
    r.known.append(key)
    value = r.data.get(key)
    if value is None or value is _UNREADABLE:
        return None
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None or match.group(2) not in units:
        r.error(f"invalid quantity {reprlib.repr(value)}", hint, key=key)
        return None
    exact = Decimal(match.group(1)) * units[match.group(2)]  # exact, however many digits
    if exact > maximum[0]:
        r.error(f"too large, at most {maximum[1]}", key=key)
        return None
    amount = round(exact)
    if amount < 1:
        r.error(f"must be positive, got {value!r}", hint, key=key)
        return None
    return amount


def _read_env(r: _Reader) -> tuple[tuple[str, str], ...] | None:
    env = r.mapping("env", hint="write it as NAME: value pairs")
    if env is None:
        return None
    pairs = []
    for name in env.data:
        if not name or "=" in name or "\0" in name:
            env.error(
                "invalid environment variable name", "it must be non-empty without '='", key=name
            )
        value = env.string(name, hint="quote it to make it a string")
        if value is not None:
            pairs.append((name, value))
    return tuple(pairs)


def _read_dependencies(r: _Reader) -> list[_Dependency]:
    """``dependsOn``: a mapping of service -> condition, or a list of services (Ready)."""
    expected = "a mapping of service: condition or a list of services"
    value = r.take("dependsOn", expected, _is_deps)
    path = (*r.path, "dependsOn")
    if isinstance(value, list):
        deps: dict[str, _Dependency] = {}  # by name: a long list is checked in linear time
        for i, name in enumerate(value):
            if not isinstance(name, str):
                r.doc.error((*path, i), f"expected a service name, got {_kind(name)}")
            elif name in deps:
                r.doc.error((*path, i), f"{name!r} is listed twice")
            else:
                deps[name] = _Dependency(name, Condition.READY, (*path, i))
        return list(deps.values())
    if isinstance(value, dict):
        conditions = _Reader(r.doc, path, value)
        listed = []
        for name in value:
            condition = conditions.choice(name, [c.value for c in Condition])
            known = None if condition is None else Condition(condition)
            listed.append(_Dependency(name, known, (*path, name)))
        return listed
    return []


def _is_deps(value: object) -> TypeGuard[dict[str, Any] | list[Any]]:
    return isinstance(value, dict | list)


def _check_dependencies(
    doc: _Document,
    services: dict[str, _Service],
    names: list[str],
    roles: frozenset[str] | None = None,
) -> dict[tuple[str, str | None], tuple[int | None, str | None]]:
    """The file's dependencies through :func:`k4sinit.core.graph.check_dependencies`.

    ``names`` are all the file's service names, in order, the invalid ones
    too (a dependency on one is not unknown). ``roles`` are the node
    section's role services (None without one): they
    stand in with their restartPolicy (Always, but OnFailure for the oneshot
    ``images``) and no dependencies of their own, which :func:`k4sinit.node.roles`
    checks. Each problem is reported where the dependency (or, for a cycle,
    the service) is written. Returns where that is for every service and
    dependency (line, field), for the errors the expansion finds.
    """
    paths: dict[tuple[str, str | None], _Path] = {}
    stand_ins = {}
    for name in names:
        paths[(name, None)] = ("services", name)
        service = services.get(name, _Service(None, None, ()))
        for dep in service.dependencies:
            paths[(name, dep.name)] = dep.path
        # An invalid condition or restartPolicy is reported already: stand-ins that
        # raise no second error (the name of the dependency is still checked).
        depends_on = tuple((d.name, d.condition or Condition.READY) for d in service.dependencies)
        policy = service.restart_policy or RestartPolicy.NEVER
        stand_ins[name] = ServiceSpec(name, (name,), depends_on=depends_on, restart_policy=policy)
    for role in sorted(roles or ()):
        policy = RestartPolicy.ON_FAILURE if role in ONESHOT_ROLES else RestartPolicy.ALWAYS
        stand_ins.setdefault(role, ServiceSpec(role, (role,), restart_policy=policy))
    for problem in check_dependencies(stand_ins, roles):
        doc.error(paths[(problem.service, problem.dependency)], problem.message, problem.hint)
    return {key: _where(doc, path) for key, path in paths.items()}


def _where(doc: _Document, path: _Path) -> tuple[int | None, str | None]:
    """The line and field of ``path`` inside its service, as an error names them."""
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[2:])
    return doc.line(path), field.lstrip(".") or None


# --- probes ------------------------------------------------------------------------

_PORT_HINT = "named ports are not supported, give the number"


def _read_probe(parent: _Reader, key: str, *, single_success: bool = False) -> Probe | None:
    """A Kubernetes probe: exactly one handler, plus timing (seconds may be fractional)."""
    r = parent.mapping(key)
    if r is None:
        return None
    actions = [read(h) for name, read in _HANDLERS if (h := r.mapping(name)) is not None]
    timing = _given(
        initial_delay=r.number("initialDelaySeconds"),
        period=r.number("periodSeconds", above=True),
        timeout=r.number("timeoutSeconds", above=True),
        success_threshold=r.integer("successThreshold", 1),
        failure_threshold=r.integer("failureThreshold", 1),
    )
    r.finish()
    handlers = [name for name, _ in _HANDLERS if name in r.data]
    if not handlers:
        r.error("a probe needs a handler", f"add one of {', '.join(n for n, _ in _HANDLERS)}")
    elif len(handlers) > 1:
        r.error(f"more than one handler ({', '.join(handlers)}), a probe takes exactly one")
    if single_success and timing.get("success_threshold", 1) != 1:
        r.error(f"must be 1 for {key}", key="successThreshold")
    if len(actions) != 1 or actions[0] is None:
        return None
    return Probe(actions[0], **timing)


def _read_exec(r: _Reader) -> ExecAction | None:
    command = r.strings("command", required=True, non_empty=True)
    r.finish()
    return None if command is None else ExecAction(command)


def _read_http_get(r: _Reader) -> HTTPGetAction | None:
    scheme = r.choice("scheme", ("HTTP", "HTTPS"))
    host = _probe_host(r)
    port = r.integer("port", 1, maximum=65535, required=True, hint=_PORT_HINT)
    path = r.string("path")
    if path is not None and not path.startswith("/"):
        r.error(f"must start with '/', got {path!r}", key="path")
    elif path is not None and not _REQUEST_TARGET.fullmatch(path):
        hint = "percent-encode the rest, like %20 for a space"
        r.error(
            f"invalid path {path!r}: HTTP sends printable ASCII without spaces", hint, key="path"
        )
    headers = []
    for h in r.items("httpHeaders", "a mapping with name and value"):
        name, value = h.string("name", required=True), h.string("value", required=True)
        h.finish()
        if name is not None and not _HEADER_NAME.fullmatch(name):
            h.error(f"invalid HTTP header name {name!r}", key="name")
        elif value is not None and ("\r" in value or "\n" in value):
            h.error("an HTTP header value cannot contain a line break", key="value")
        elif value is not None and not _HEADER_VALUE.fullmatch(value):
            h.error("an HTTP header value must be printable ASCII", key="value")
        elif name is not None and value is not None:
            headers.append((name, value))
    tls = _read_tls(r, scheme)
    r.finish()
    if port is None:
        return None
    options = _given(host=host, path=path, scheme=scheme, tls=tls)
    return HTTPGetAction(port=port, headers=tuple(headers), **options)


def _read_tls(parent: _Reader, scheme: str | None) -> TLSConfig | None:
    r = parent.mapping("tls")
    if r is None:
        return None
    tls = TLSConfig(
        **_given(
            ca_file=r.string("caFile"),
            cert_file=r.string("certFile"),
            key_file=r.string("keyFile"),
            server_name=r.string("serverName"),
        )
    )
    r.finish()
    if (tls.cert_file is None) != (tls.key_file is None):
        r.error("certFile and keyFile must be given together")
    if scheme != "HTTPS":
        r.error("tls needs scheme HTTPS", "add scheme: HTTPS")
    return tls


def _probe_host(r: _Reader) -> str | None:
    """``host``: a DNS name or an IP address (it goes into a Host header as it is)."""
    host = r.string("host")
    if host is None:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _DOMAIN.fullmatch(host):
            r.error(f"invalid host {host!r}", "a host name or an IP address", key="host")
            return None
    return host


def _read_tcp_socket(r: _Reader) -> TCPSocketAction | None:
    host = _probe_host(r)
    port = r.integer("port", 1, maximum=65535, required=True, hint=_PORT_HINT)
    r.finish()
    return None if port is None else TCPSocketAction(port=port, **_given(host=host))


def _read_unix_socket(r: _Reader) -> UnixSocketAction | None:
    path = r.absolute_path("path", required=True)
    r.finish()
    return None if path is None else UnixSocketAction(path)


def _read_file(r: _Reader) -> FileAction | None:
    path = r.absolute_path("path", required=True)
    r.finish()
    return None if path is None else FileAction(path)


_HANDLERS: tuple[tuple[str, Callable[[_Reader], ProbeAction | None]], ...] = (
    ("exec", _read_exec),
    ("httpGet", _read_http_get),
    ("tcpSocket", _read_tcp_socket),
    ("unixSocket", _read_unix_socket),
    ("file", _read_file),
)


# --- restarts and stopping -----------------------------------------------------------


def _read_backoff(parent: _Reader) -> Backoff | None:
    """``restartBackoff``, a k4sinit extension; see :class:`~k4sinit.core.spec.Backoff`."""
    r = parent.mapping("restartBackoff")
    if r is None:
        return None
    backoff = Backoff(
        **_given(
            initial=r.number("initialSeconds"),
            max=r.number("maxSeconds"),
            # Bounded so that check refuses what restarts could not compute.
            multiplier=r.number("multiplier", 1.0, maximum=_MAX_MULTIPLIER),
            jitter=r.number("jitter", maximum=1.0),
            reset_after=r.number("resetAfterSeconds"),
            crash_loop_limit=r.integer("crashLoopLimit", 1),
        )
    )
    r.finish()
    if backoff.initial > backoff.max:
        r.error(f"initialSeconds ({backoff.initial:g}) is more than maxSeconds ({backoff.max:g})")
    return backoff


_MAX_MULTIPLIER = 10.0


def _read_signal(r: _Reader) -> signal.Signals | None:
    """``stopSignal``: a name with or without ``SIG`` (``SIGTERM``, ``TERM``) or a number."""
    value = r.take("stopSignal", "a signal name or number", _is_signal_like)
    if value is None:
        return None
    if isinstance(value, int):
        try:
            return signal.Signals(value)
        except ValueError:
            r.error(f"no signal has number {value}", key="stopSignal")
            return None

    def with_prefix(name: str) -> str:
        return name if name.startswith("SIG") else f"SIG{name}"

    name = with_prefix(value)
    if name not in signal.Signals.__members__:
        hint = _did_you_mean(with_prefix(value.upper()), list(signal.Signals.__members__))
        r.error(f"unknown signal {value!r}", hint, key="stopSignal")
        return None
    return signal.Signals[name]


def _is_signal_like(value: object) -> TypeGuard[str | int]:
    return isinstance(value, str) or _is_int(value)
