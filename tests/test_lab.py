"""rootfs/lab.py without VMs: the lab's network namespace, its forward, the nodes' kernel lines.

The VMs themselves boot in tests/test_cluster.py (marked vm and e2e).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from k4sinit.core import netspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rootfs"))
import lab  # rootfs/ is a directory of scripts, not a package
import vm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns)")


@pytest.fixture
def network() -> Iterator[lab.LabNetwork]:
    net = lab.LabNetwork(f"k4sinit-test-{uuid.uuid4().hex[:8]}")
    net.create()
    try:
        yield net
    finally:
        net.destroy()


def test_the_lab_network_is_a_bridge_in_a_namespace_of_its_own(network: lab.LabNetwork) -> None:
    network.add_tap("tap-worker-1")
    assert sorted(network.links()) == ["lab0", "lo", "tap-worker-1"]
    master = lab.ip("-o", "link", "show", "tap-worker-1", netns=network.name)
    assert "master lab0" in master
    addresses = lab.ip("-o", "addr", "show", "lab0", netns=network.name)
    assert "192.168.44.1/24" in addresses
    # Nothing of it on the host.
    assert "lab0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    network.destroy()
    assert not os.path.exists(network.path)
    network.destroy()  # idempotent


def test_a_namespace_left_by_a_killed_lab_is_removed_unless_in_use(network: lab.LabNetwork) -> None:
    again = lab.LabNetwork(network.name)
    again.create()  # nothing runs in it: a leftover, made anew
    assert again.created and sorted(again.links()) == ["lab0", "lo"]
    sleeper = subprocess.Popen(["ip", "netns", "exec", network.name, "sleep", "60"])
    try:
        deadline_pids = ""
        for _ in range(100):
            deadline_pids = lab.ip("netns", "pids", network.name)
            if deadline_pids.strip():
                break
            threading.Event().wait(0.05)
        with pytest.raises(lab.LabError, match=r"is in use \(pids .*\): is a lab running"):
            lab.LabNetwork(network.name).create()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_forward_reaches_a_listener_inside_the_namespace(network: lab.LabNetwork) -> None:
    """127.0.0.1:port on the host -> the gateway address in the lab (a listener there)."""
    ready = threading.Event()
    got: list[bytes] = []

    def serve() -> None:
        lab.enter_netns(network.path)
        with socket.create_server((str(network.gateway), 6443)) as server:
            ready.set()
            conn, _ = server.accept()
            with conn:
                got.append(conn.recv(100))
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forward = lab.ApiForward(network.path, (str(network.gateway), 6443), port)
    forward.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"pong"
        thread.join(timeout=10)
        assert got == [b"ping"]
    finally:
        forward.stop()


def test_a_taken_port_is_a_clear_error(network: lab.LabNetwork) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(lab.LabError, match=rf"127\.0\.0\.1:{port}: .*\(--api-port\)"):
            lab.ApiForward(network.path, ("192.168.44.10", 6443), port).start()


def test_each_node_is_made_by_its_kernel_command_line() -> None:
    controller, worker = lab.controller_node(), lab.worker_node(2)
    assert (controller.name, str(controller.address)) == ("controller", "192.168.44.10")
    assert (worker.name, str(worker.address), worker.tap) == (
        "worker-2",
        "192.168.44.12",
        "tap-worker-2",
    )
    assert controller.mac != worker.mac
    line = worker.append("k4sinit.role=worker")
    assert line.split() == [
        "k4sinit.hostname=worker-2",
        "ip=192.168.44.12::192.168.44.1:255.255.255.0:worker-2:eth0:off:192.168.44.1",
        "k4sinit.role=worker",
    ]
    # What PID 1 makes of ip=: the address, the default route, the DNS server, the name.
    ip = line.split()[1].removeprefix("ip=")
    spec = netspec.parse_ip_option(ip)
    (interface,) = spec.interfaces
    assert interface.name == "eth0" and not interface.dhcp
    assert [str(a) for a in interface.addresses] == ["192.168.44.12/24"]
    assert [str(r.via) for r in interface.routes] == ["192.168.44.1"]
    assert [str(a) for a in spec.dns.nameservers] == ["192.168.44.1"]
    assert spec.hostname == "worker-2"


def test_qemu_runs_in_the_namespace_on_its_tap_with_its_own_mac(tmp_path: Path) -> None:
    node = lab.worker_node(1)
    cmd = vm.qemu_command(
        tmp_path / "image",
        kernel=tmp_path / "kernel",
        accel=vm.TCG,
        tap=node.tap,
        mac=node.mac,
        netns="/run/netns/k4sinit-lab",
        disks=[tmp_path / "disk.raw"],
    )
    assert cmd[:3] == ["nsenter", "--net=/run/netns/k4sinit-lab", vm.QEMU]
    assert "tap,id=n0,ifname=tap-worker-1,script=no,downscript=no" in cmd
    assert f"virtio-net-pci,netdev=n0,romfile=,mac={node.mac}" in cmd
    assert f"file={tmp_path / 'disk.raw'},if=virtio,format=raw" in cmd
    with pytest.raises(ValueError, match="forward needs the user-mode network"):
        vm.qemu_command(tmp_path / "image", kernel="k", accel=vm.TCG, tap="t", forward=[(1, 2)])
