"""The network inside a k4sinit container: the ``network`` condition, link flaps, DHCP.

A veth pair joins the container to a namespace the test makes (the "switch"):
the container's end is moved into the container's network namespace, the
other end stays in the switch, where the test pulls it down and up, and where
busybox udhcpd serves leases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Container, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


class Switch:
    """A namespace holding the far end of a veth whose near end goes into a container."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = f"k4s-sw-{tag}"
        self.near, self.far = f"k4n{tag}", f"k4f{tag}"
        ip("netns", "add", self.ns)
        ip("link", "add", self.near, "type", "veth", "peer", "name", self.far)
        ip("link", "set", self.far, "netns", self.ns)
        self.run("ip", "addr", "add", "10.77.0.1/24", "dev", self.far)
        self.servers: list[subprocess.Popen[bytes]] = []

    def run(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv], check=True, capture_output=True, text=True
        ).stdout

    def far_end(self, state: str) -> None:
        self.run("ip", "link", "set", self.far, state)

    def give_to(self, container: Container) -> None:
        """Move the near end into the container's network namespace."""
        ip("link", "set", self.near, "netns", str(container.init_pid))

    def serve_dhcp(self, tmp_path: Path) -> Path:
        leases = tmp_path / "udhcpd.leases"
        conf = tmp_path / "udhcpd.conf"
        conf.write_text(
            f"start 10.77.0.100\nend 10.77.0.120\ninterface {self.far}\n"
            f"lease_file {leases}\noption subnet 255.255.255.0\noption router 10.77.0.1\n"
            "option dns 10.77.0.53\noption domain lab.example\noption lease 600\n"
        )
        leases.touch()
        self.servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "busybox", "udhcpd", "-f", "-a", "100", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return leases

    def lease_table(self, leases: Path) -> dict[str, str]:
        """udhcpd's leases as ip -> expiry, after asking it to write them (SIGUSR1)."""
        for server in self.servers:
            server.send_signal(signal.SIGUSR1)
        out = subprocess.run(
            ["busybox", "dumpleases", "-f", str(leases)], capture_output=True, text=True
        ).stdout
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return {row[1]: row[-1] for row in rows if len(row) >= 3}

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.near], check=False, capture_output=True)


@pytest.fixture
def switch() -> Iterator[Switch]:
    sw = Switch()
    try:
        yield sw
    finally:
        sw.close()


def network_status(node: Container) -> dict[str, Any]:
    out = node.cli("status", "network", "--json")
    network: dict[str, Any] = json.loads(out.stdout)["network"]
    return network


def test_network_condition_holds_a_dependent_until_carrier_and_reports_flaps(
    boot: Any, switch: Switch
) -> None:
    node = boot(
        f"""
network:
  interfaces:
    - name: {switch.near}
      addresses: [10.77.0.2/24]
      routes: [{{to: default, via: 10.77.0.1}}]
services:
  kubelet:
    command: [sleep, "1000"]
    dependsOn: {{network: Ready}}
"""
    )
    wait_until(lambda: node.socket.exists(), timeout=60, what="the control socket")
    wait_until(
        lambda: node.status()["kubelet"]["reason"].startswith("waiting for network:"),
        what="kubelet waiting for the network",
    )
    assert "no such interface" in node.status()["kubelet"]["reason"]
    switch.give_to(node)  # the NIC arrives late, and without carrier (the far end is down)
    wait_until(
        lambda: "no carrier" in node.status()["kubelet"]["reason"], what="waiting for carrier"
    )
    assert node.status()["kubelet"]["state"] == "waiting"
    switch.far_end("up")
    wait_until(lambda: node.status()["kubelet"]["state"] == "running", what="kubelet running")
    events = node.events()
    ready_at = next(
        i for i, e in enumerate(events) if e.get("event") == "network readiness" and e["ready"]
    )
    started_at = next(
        i
        for i, e in enumerate(events)
        if e.get("service") == "kubelet" and e.get("state") == "running"
    )
    assert ready_at < started_at
    net = network_status(node)
    assert net["ready"] and "10.77.0.2/24" in net["interfaces"][switch.near]["addresses"]
    assert any("default via 10.77.0.1" in r for r in net["interfaces"][switch.near]["routes"])
    # Pull the link: reported, the dependent is left alone; plug it back: ready again.
    kubelet_pid = node.status()["kubelet"]["pid"]
    switch.far_end("down")
    wait_until(lambda: not network_status(node)["ready"], what="the network not ready")
    assert network_status(node)["reason"] == f"{switch.near}: no carrier"
    detail = node.cli("status", "network").stdout
    assert f"{switch.near}: " in detail and "no carrier" in detail
    switch.far_end("up")
    wait_until(lambda: network_status(node)["ready"], what="the network ready again")
    assert node.status()["kubelet"]["pid"] == kubelet_pid


def test_dhcp_lease_applied_in_the_container_and_released_on_poweroff(
    boot: Any, switch: Switch, tmp_path: Path
) -> None:
    leases = switch.serve_dhcp(tmp_path)
    switch.far_end("up")
    node = boot(
        f"""
network:
  interfaces:
    - name: {switch.near}
      dhcp: true
services:
  app:
    command: [sleep, "1000"]
    dependsOn: [network]
"""
    )
    wait_until(lambda: node.socket.exists(), timeout=60, what="the control socket")
    switch.give_to(node)
    wait_until(lambda: node.status()["app"]["state"] == "running", timeout=60, what="app running")
    net = network_status(node)
    (address,) = [a for a in net["interfaces"][switch.near]["addresses"] if "." in a]
    assert address.startswith("10.77.0.1") and address.endswith("/24")
    assert any("default via 10.77.0.1" in r for r in net["interfaces"][switch.near]["routes"])
    assert any(e.get("event") == "lease" for e in node.events())
    assert node.cli("poweroff").returncode == 0
    assert node.wait_exit() == 0
    # The release reached the server: udhcpd marks the 600 s lease expired at once.
    wait_until(
        lambda: switch.lease_table(leases).get(address.split("/")[0]) == "expired",
        what="the lease released",
    )
