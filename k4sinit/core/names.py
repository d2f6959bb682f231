"""The name rules shared by the config, the node's expansion and the kernel's ``ip=``.

Kubernetes' names follow RFC 1123: a *DNS label* (a service, which also
names a cgroup) is lowercase letters, digits and ``-``, starting and ending
with a letter or digit, at most 63 characters; a *DNS subdomain* (a node
name, a hostname) is labels joined by ``.``, at most 253 characters, or as
many as the caller's limit allows (the kernel's hostname: 64). A *domain* as
a resolver takes it (a ``search`` entry, a probe's host, the cluster domain)
is looser: any case, ``_`` allowed, a trailing dot. Pure: no I/O.
"""

from __future__ import annotations

import re

__all__ = [
    "DNS_LABEL_MAX",
    "DNS_SUBDOMAIN_MAX",
    "HOST_NAME_MAX",
    "is_dns_label",
    "is_dns_subdomain",
    "is_domain",
]

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
HOST_NAME_MAX = 64  # the kernel's: sethostname refuses longer

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_RESOLVER_LABEL = r"[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(
    rf"(?=.{{1,253}}\.?$){_RESOLVER_LABEL}(\.{_RESOLVER_LABEL})*\.?", re.IGNORECASE
)


def is_dns_label(name: str) -> bool:
    """Whether ``name`` is an RFC 1123 label: ``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most 63."""
    return len(name) <= DNS_LABEL_MAX and _DNS_LABEL.fullmatch(name) is not None


def is_dns_subdomain(name: str, max_length: int = DNS_SUBDOMAIN_MAX) -> bool:
    """Whether ``name`` is RFC 1123 labels joined by dots, at most ``max_length`` long."""
    return len(name) <= max_length and _DNS_SUBDOMAIN.fullmatch(name) is not None


def is_domain(name: str) -> bool:
    """Whether a resolver takes ``name`` as a domain: labels of letters (any case),
    digits, ``-`` and ``_``, each at most 63, at most 253 in all, a trailing dot allowed."""
    return _DOMAIN.fullmatch(name) is not None
