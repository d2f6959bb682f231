"""The config file as YAML: read within limits, composed into plain values that keep their lines.

The YAML is composed into nodes and walked here, rather than loaded, so that
every value keeps its line and duplicate keys are caught. :class:`Document`
holds those lines and the errors found so far, for every section's reader
(:mod:`k4sinit.config.reader`).

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

import os
import reprlib
import stat
import sys
from typing import Any

import yaml

from k4sinit.config.errors import ConfigError, ConfigErrors, single

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

__all__ = ["UNREADABLE", "Document", "KeyPath", "compose", "field_of", "read_text"]

KeyPath = tuple[str | int, ...]  # where a value sits: keys and list indices from the top

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_INT_TAG = "tag:yaml.org,2002:int"
_MAX_BYTES = 1 << 20  # a config is a few KiB; this bounds the read and what follows
_ALIAS_FLOOR = 10_000  # values aliases may add whatever the size of the document
_MAX_DEPTH = 64
_INT_BITS = 64


def read_text(source: str) -> str:
    """The text of the config file at ``source`` (see :func:`_read_bytes`), as UTF-8.

    Raises :class:`ConfigErrors` for an unreadable file or one that is not UTF-8.
    """
    data = _read_bytes(source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        message = f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        raise single(source, line, message) from None


def compose(text: str, source: str) -> tuple[Document, Any]:
    """The YAML ``text`` as plain values (None for an empty document), and the
    :class:`Document` that knows their lines and holds the errors found so far.

    Raises :class:`ConfigErrors` for what stops the reading: a syntax error,
    nesting the composer cannot take, an alias bomb.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise _syntax_error(source, text, e) from None
    except RecursionError:  # only the pure-Python composer recurses; libyaml stops at 1000
        raise single(source, None, f"nested too deeply: more than {_MAX_DEPTH} levels") from None
    doc = Document(source, 0 if root is None else _count_nodes(root))
    data = None
    if root is not None:
        doc.lines[()] = root.start_mark.line + 1
        try:
            data = doc.plain(root, ())
        except _ExcessiveAliasing as e:
            raise single(source, e.line, str(e)) from None
    return doc, data


def _read_bytes(source: str) -> bytes:
    """The bytes of the config file at ``source``: a regular file of at most 1 MiB.

    Anything else (a FIFO, a device, a directory) is refused before it is
    opened for reading, as is a larger file before it is read whole. Raises
    :class:`ConfigErrors`.
    """

    def refuse(problem: str) -> ConfigErrors:
        return single(source, None, f"cannot read the config: {problem}")

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
    return single(source, line, f"YAML syntax error: {detail}")


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


UNREADABLE = _Unreadable()


class Document:
    """One config being read: the errors found so far and the line of every value.

    ``written`` is the number of nodes in the composed document; aliases may
    add ``max(10000, written)`` more values as they are expanded (see the
    module docstring).
    """

    def __init__(self, file: str, written: int = 0) -> None:
        self.file = file
        self.errors: list[ConfigError] = []
        self.lines: dict[KeyPath, int] = {}
        # (service, dependency or None) -> (line, field): where the file wrote it,
        # for the errors the expansion finds (Config.where).
        self.where: dict[tuple[str, str | None], tuple[int | None, str | None]] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._open: set[int] = set()  # ids of collection nodes being built, to stop at recursion
        self._built: set[int] = set()  # ids of nodes built once: building one again is an alias
        self._written = written
        self._alias_limit = max(_ALIAS_FLOOR, written)
        self._aliased = 0  # values built again through aliases
        self._expanding: KeyPath | None = None  # where the alias being expanded is used

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor with a known line."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(
        self, path: KeyPath, message: str, hint: str | None = None, line: int | None = None
    ) -> None:
        """Record an error about the value at ``path`` (on ``line`` if given)."""
        if len(path) >= 2 and path[0] == "services":
            service, field_path = str(path[1]), path[2:]
        else:
            service, field_path = None, path
        line = self.line(path) if line is None else line
        self.errors.append(
            ConfigError(self.file, line, service, field_of(field_path), message, hint)
        )

    def plain(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
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

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        """The value of a scalar, or :data:`UNREADABLE` after an error."""
        kind = node.tag.rpartition(":")[2]
        digits = sum(c.isdigit() for c in node.value)
        if node.tag == _INT_TAG and digits > sys.get_int_max_str_digits():
            message = f"an integer of {digits} digits is too long for k4sinit, which takes 64 bits"
            self.error(path, message)
            return UNREADABLE
        try:
            value = self._constructor.construct_object(node)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or e
            self.error(path, f"unsupported YAML value: {problem}")
            return UNREADABLE
        except (ValueError, KeyError, AttributeError, OverflowError):
            # SafeConstructor's own failures on a value its tag cannot take:
            # int('abc') for !!int, a KeyError for !!bool, a failed match for !!timestamp.
            self.error(path, f"cannot read {reprlib.repr(node.value)} as a YAML {kind}")
            return UNREADABLE
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value.bit_length() >= _INT_BITS
        ):
            bits = value.bit_length()
            self.error(
                path, f"an integer of {bits} bits is too large for k4sinit, which takes 64 bits"
            )
            return UNREADABLE
        return value

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
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


def field_of(path: KeyPath) -> str | None:
    """How an error names ``path`` inside its service (or from the top): ``a.b[2]``."""
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return field.lstrip(".") or None
