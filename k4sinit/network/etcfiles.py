"""/etc/resolv.conf and /etc/hosts, written from the network's config and leases.

resolv.conf lists the configured DNS servers and search domains, then those the
DHCP leases bring (each once); it is written only when there is at least one.
/etc/hosts names localhost and the node, on the node's first address. A file is
replaced atomically, and only when its text changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from k4sinit.core.netspec import DNS, Interface, IPAddress


def render_resolv_conf(nameservers: Sequence[IPAddress], search: Sequence[str]) -> str:
    """The text of /etc/resolv.conf for these servers and search domains."""
    lines = ["# written by k4sinit"]
    lines += [f"nameserver {server}" for server in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def render_hosts(hostname: str, address: IPAddress | None) -> str:
    """The text of /etc/hosts: localhost, and the node's name on ``address``
    (127.0.1.1, as Debian does, when the node has no static address)."""
    names = hostname if "." not in hostname else f"{hostname} {hostname.split('.', 1)[0]}"
    return (
        "# written by k4sinit\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{address if address is not None else '127.0.1.1'}\t{names}\n"
    )


def merged_dns(configured: DNS, leased: DNS) -> DNS:
    """The configured servers and domains, then the leases' ones not already there."""
    return DNS(
        configured.nameservers
        + tuple(s for s in leased.nameservers if s not in configured.nameservers),
        configured.search + tuple(s for s in leased.search if s not in configured.search),
    )


def node_address(interfaces: Iterable[Interface]) -> IPAddress | None:
    """The node's first address for /etc/hosts: of the interfaces that are up (as
    effective: static addresses, then leased), IPv4 first."""
    addresses = [a.ip for iface in interfaces if iface.up for a in iface.addresses]
    addresses.sort(key=lambda a: a.version)
    return addresses[0] if addresses else None


def write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` atomically unless it already holds ``text``; True if written.
    Blocking: run it in a worker thread. Raises OSError."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    temporary = path.with_name(f".{path.name}.k4sinit")
    temporary.write_text(text)
    os.replace(temporary, path)
    return True


class EtcFiles:
    """Where the two files go (None: that file is not written) and the node's name."""

    def __init__(self, resolv_conf: Path | None, hosts: Path | None, hostname: str) -> None:
        self.resolv_conf = resolv_conf
        self.hosts = hosts
        self.hostname = hostname

    async def write(self, dns: DNS, address: IPAddress | None, log: Any) -> list[str]:
        """Write what changed (in a worker thread; logs each file written). Returns the
        problems (``"/etc/hosts: cannot write: read-only file system"``); raises nothing."""
        writes: list[tuple[Path, str]] = []
        if self.resolv_conf is not None and (dns.nameservers or dns.search):
            writes.append((self.resolv_conf, render_resolv_conf(dns.nameservers, dns.search)))
        if self.hosts is not None:
            writes.append((self.hosts, render_hosts(self.hostname, address)))
        problems: list[str] = []
        for path, text in writes:
            try:
                if await trio.to_thread.run_sync(write_if_changed, path, text):
                    log.info("written", path=str(path))
            except OSError as e:
                problems.append(f"{path}: cannot write: {e.strerror or e}")
        return problems
