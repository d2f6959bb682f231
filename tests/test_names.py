"""Tests for k4sinit.core.names: the RFC 1123 names and the resolver's domains,
and each place that checks a name through them."""

from __future__ import annotations

import pytest

from k4sinit.core.names import (
    DNS_SUBDOMAIN_MAX,
    HOST_NAME_MAX,
    is_dns_label,
    is_dns_subdomain,
    is_domain,
)
from k4sinit.core.netspec import parse_ip_option


@pytest.mark.parametrize("name", ["a", "0", "kube-apiserver", "a1-b2", "a" * 63])
def test_dns_labels(name: str) -> None:
    assert is_dns_label(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "a" * 64, "é"])
def test_not_dns_labels(name: str) -> None:
    assert not is_dns_label(name)


def test_dns_subdomains_and_their_length() -> None:
    assert is_dns_subdomain("node-1.lab.example")
    long = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
    assert len(long) == DNS_SUBDOMAIN_MAX and is_dns_subdomain(long)
    assert not is_dns_subdomain(long + "a")
    assert is_dns_subdomain("a" * HOST_NAME_MAX, HOST_NAME_MAX)
    assert not is_dns_subdomain("a" * (HOST_NAME_MAX + 1), HOST_NAME_MAX)
    for name in ("", "a..b", ".a", "a.", "Node-1", "node_1", "a.-b"):
        assert not is_dns_subdomain(name), name


def test_domains_a_resolver_takes() -> None:
    for name in ("cluster.local", "Example.COM", "_srv.example", "example.com.", "a" * 63):
        assert is_domain(name), name
    for name in ("", "a b", "a..b", "-a.com", "a" * 64, "a." * 127 + "ab"):
        assert not is_domain(name), name


def test_the_kernel_ip_hostname_takes_any_case_but_only_ascii() -> None:
    assert parse_ip_option("::::Node-1.LAB::off").hostname == "Node-1.LAB"
    for bad in ("bad_host", "\u212a8s", "a" * 65):  # \u212a: the Kelvin sign, lower() gives k
        with pytest.raises(ValueError, match="is not a valid host name"):
            parse_ip_option(f"::::{bad}::off")
