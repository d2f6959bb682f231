"""k4sinit.network.etcfiles: the texts of /etc/resolv.conf and /etc/hosts, and how they are written."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface
from pathlib import Path

import structlog

from k4sinit.core.netspec import DNS, Interface
from k4sinit.network.etcfiles import (
    EtcFiles,
    merged_dns,
    node_address,
    render_hosts,
    render_resolv_conf,
    write_if_changed,
)


def test_resolv_conf_and_hosts_text() -> None:
    text = render_resolv_conf([ip_address("10.0.0.53"), ip_address("fd00::53")], ["a.test", "b"])
    assert text.splitlines()[1:] == [
        "nameserver 10.0.0.53",
        "nameserver fd00::53",
        "search a.test b",
    ]
    hosts = render_hosts("node1.example", ip_address("10.0.0.5"))
    assert "10.0.0.5\tnode1.example node1" in hosts.splitlines()
    assert "127.0.1.1\tnode1" in render_hosts("node1", None).splitlines()


def test_the_leases_dns_comes_after_the_configured() -> None:
    a, b, c = ip_address("10.0.0.53"), ip_address("10.77.0.53"), ip_address("fd00::53")
    merged = merged_dns(DNS((a, c), ("cluster.test",)), DNS((b, a), ("k4s.test", "cluster.test")))
    assert merged == DNS((a, c, b), ("cluster.test", "k4s.test"))


def test_the_node_address_is_the_first_of_an_up_interface_ipv4_first() -> None:
    down = Interface(name="eth9", up=False, addresses=(ip_interface("10.9.0.5/24"),))
    v6 = Interface(name="eth0", addresses=(ip_interface("fd00::5/64"),))
    v4 = Interface(name="eth1", addresses=(ip_interface("10.1.0.5/24"),))
    assert node_address([down, v6, v4]) == ip_address("10.1.0.5")
    assert node_address([down, v6]) == ip_address("fd00::5")
    assert node_address([down]) is None


def test_a_file_is_written_only_when_its_text_changes(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert write_if_changed(path, "a\n") and path.read_text() == "a\n"
    inode = path.stat().st_ino
    assert not write_if_changed(path, "a\n") and path.stat().st_ino == inode
    assert write_if_changed(path, "b\n") and path.read_text() == "b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]  # no temporary left


async def test_no_resolv_conf_without_dns_and_problems_named_by_file(tmp_path: Path) -> None:
    files = EtcFiles(tmp_path / "resolv.conf", tmp_path / "hosts", "node1")
    assert await files.write(DNS(), None, structlog.get_logger()) == []
    assert not (tmp_path / "resolv.conf").exists() and (tmp_path / "hosts").exists()
    missing = tmp_path / "no" / "such"
    files = EtcFiles(missing / "resolv.conf", None, "node1")
    problems = await files.write(DNS((ip_address("10.0.0.53"),)), None, structlog.get_logger())
    assert problems == [f"{missing}/resolv.conf: cannot write: No such file or directory"]
