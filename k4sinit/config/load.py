"""The entry points: a config file (or text) in, a whole :class:`~k4sinit.core.config.Config`
out, or :class:`~k4sinit.config.errors.ConfigErrors` with every problem found.

The file is read and composed (:mod:`k4sinit.config.document`), then each
section is read in turn by its own module, all recording into one
:class:`~k4sinit.config.document.Document`: nothing stops at the first error.
"""

from __future__ import annotations

import os
from typing import Any

from k4sinit.config.document import Document, compose, read_text
from k4sinit.config.errors import ConfigErrors
from k4sinit.config.metrics import read_metrics
from k4sinit.config.network import read_network
from k4sinit.config.node import read_node
from k4sinit.config.reader import Reader, given, kind_of
from k4sinit.config.services import read_services
from k4sinit.config.storage import read_storage
from k4sinit.config.system import read_system
from k4sinit.config.watchdog import read_watchdog
from k4sinit.core.config import Config, StorageSpec, SystemSpec
from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.nodespec import NodeSpec
from k4sinit.core.spec import ServiceSpec

__all__ = ["load_config", "load_config_text"]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``.

    Raises :class:`ConfigErrors` listing every problem found, including an
    unreadable file or one that is not UTF-8.
    """
    source = os.fspath(path)
    return load_config_text(read_text(source), source)


def load_config_text(text: str, source: str) -> Config:
    """Validate config ``text``; ``source`` names it in errors and in the result.

    Raises :class:`ConfigErrors` listing every problem found, in line order.
    """
    doc, data = compose(text, source)
    monitoring: dict[str, Any] = {}
    services, system, network, node, storage = _read_sections(doc, data, monitoring)
    if doc.errors:
        raise ConfigErrors(source, sorted(doc.errors, key=lambda e: e.line or 0))
    return Config(
        source=source,
        services=services,
        system=system,
        network=network,
        node=node,
        storage=storage,
        where=doc.where,
        **monitoring,
    )


def _read_sections(
    doc: Document, data: Any, monitoring: dict[str, Any]
) -> tuple[dict[str, ServiceSpec], SystemSpec, NetworkSpec, NodeSpec | None, StorageSpec | None]:
    """The top level: one reader per section (the node first: services depend on its roles).

    ``monitoring`` receives the ``metrics`` and ``watchdog`` sections given, as
    Config's keyword arguments.
    """
    if data is None:
        doc.error((), "the config is empty", "it needs a 'services' or a 'node' mapping")
        return {}, SystemSpec(), NetworkSpec(), None, None
    if not isinstance(data, dict):
        doc.error((), f"expected a mapping at the top level, got {kind_of(data)}")
        return {}, SystemSpec(), NetworkSpec(), None, None
    top = Reader(doc, (), data)
    node = read_node(top)
    services = read_services(top, node)
    system = read_system(top)
    network = read_network(top)
    storage = read_storage(top, node)
    monitoring.update(given(metrics=read_metrics(top), watchdog=read_watchdog(top)))
    top.finish()
    return services, system, network, node, storage
