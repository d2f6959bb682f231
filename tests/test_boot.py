"""k4sinit as PID 1 of a container (``k4sinit dev``): stage 1, cgroups, shutdown, fallback.

Each test boots a real container on this machine: new pid, mount, uts, ipc,
net and cgroup namespaces, k4sinit's own mounts, a cgroup of its own under the
host's cgroup2 hierarchy. Processes are found through that host cgroup (host
pids); the daemon is asked over its control socket, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from k4sinit.pid1.container import host_cgroup2_mount
from tests import disks

from .conftest import child_cmd, pid_alive, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)


NODE = """
hostname: devnode
sysctls: {net.ipv4.ip_forward: 1}
services:
  web:
    command: [python3, -m, http.server, "18082", --bind, 127.0.0.1]
    readinessProbe: {httpGet: {port: 18082}, periodSeconds: 0.2}
  forker:
    command: %s
    dependsOn: {web: Ready}
"""


def test_stage_one_mounts_cgroups_hostname_and_sysctls(boot: Any, tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild"
    node = boot(NODE % json.dumps(child_cmd("--grandchild", str(grandchild))))
    node.wait_ready()
    init = node.init_pid
    mounts = {
        line.split()[4]: line.split(" - ")[1].split()[0]
        for line in Path(f"/proc/{init}/mountinfo").read_text().splitlines()
    }
    assert mounts["/sys/fs/cgroup"] == "cgroup2"
    assert mounts["/proc"] == "proc" and mounts["/sys"] == "sysfs"
    # k4sinit sits in its own leaf; each service in its own cgroup, grandchild included.
    unified = [
        line
        for line in Path(f"/proc/{init}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    ]
    assert unified == [f"0::/{node.cgroup.name}/init"]  # as the host sees it
    assert node.host_pids("init") == [init]
    assert len(node.host_pids("services", "web")) == 1
    wait_until(grandchild.exists, what="the grandchild's pid file")
    forker_pids = node.host_pids("services", "forker")
    assert len(forker_pids) == 2  # the service and its double-forked grandchild
    # The uts and net namespaces got the config's hostname and sysctls.
    nsenter = ["nsenter", "-t", str(init), "-u", "-n"]
    assert (
        subprocess.run([*nsenter, "hostname"], capture_output=True, text=True).stdout.strip()
        == "devnode"
    )
    forward = subprocess.run(
        [*nsenter, "cat", "/proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True
    )
    assert forward.stdout.strip() == "1"
    detail = node.cli("status", "forker").stdout
    assert "cgroup:           /sys/fs/cgroup/services/forker:" in detail
    assert "2 pids" in detail


def test_stopping_a_service_empties_its_cgroup_grandchild_included(
    boot: Any, tmp_path: Path
) -> None:
    grandchild = tmp_path / "grandchild"
    node = boot(NODE % json.dumps(child_cmd("--grandchild", str(grandchild))))
    node.wait_ready()
    wait_until(grandchild.exists, what="the grandchild's pid file")
    pids = node.host_pids("services", "forker")
    assert node.cli("stop", "forker").returncode == 0
    assert node.host_pids("services", "forker") == []
    wait_until(lambda: not any(pid_alive(p) for p in pids), what="the forker's processes to die")
    assert node.status()["web"]["state"] == "running"


def test_sigterm_to_pid_1_stops_in_reverse_order_and_ends_the_namespace(boot: Any) -> None:
    node = boot(NODE % json.dumps(["sleep", "1000"]))
    node.wait_ready()
    service_pids = node.host_pids("services", "web") + node.host_pids("services", "forker")
    os.kill(node.init_pid, signal.SIGTERM)
    assert node.wait_exit() == 0
    stopped = [
        e["service"]
        for e in node.events()
        if e.get("event") == "state" and e.get("state") == "stopped"
    ]
    assert stopped == ["forker", "web"]
    assert any(
        e.get("event") == "shutdown requested" and e.get("action") == "reboot"
        for e in node.events()
    )
    assert not any(pid_alive(p) for p in service_pids)
    assert not node.cgroup.exists()


def test_poweroff_over_the_socket_ends_the_container(boot: Any) -> None:
    node = boot(NODE % json.dumps(["sleep", "1000"]))
    node.wait_ready()
    out = node.cli("poweroff")
    assert out.returncode == 0, out.stderr
    assert "poweroff: 2 services stopped" in out.stdout
    assert node.wait_exit() == 0
    assert any(
        e.get("event") == "syncing and unmounting" and e.get("action") == "poweroff"
        for e in node.events()
    )


def test_orphans_are_reaped_by_pid_1(boot: Any) -> None:
    node = boot(
        """
services:
  orphans:
    command: {}
    restartPolicy: Never
""".format(json.dumps(child_cmd("--orphans", "1000", "--sleep", "0")))
    )
    wait_until(
        lambda: sum(1 for e in node.events() if e.get("event") == "reaped orphan") == 1000,
        timeout=60,
        what="1000 reaped orphans",
    )
    zombies = [
        pid
        for pid in map(
            int, Path(f"/proc/{node.init_pid}/task/{node.init_pid}/children").read_text().split()
        )
        if "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    ]
    assert zombies == []
    assert node.status()["orphans"]["state"] == "completed"


def test_a_broken_config_shows_its_errors_falls_back_and_boots_once_fixed(boot: Any) -> None:
    node = boot(
        """
services:
  api:
    command: [sleep, "1000"]
    dependsOn: {containrd: Ready}
  containerd:
    comand: [sleep, "1000"]
"""
    )
    wait_until(lambda: "retrying the boot" in node.log_text(), timeout=60, what="the fallback")
    errors = [e["event"] for e in node.events() if e.get("level") == "error"]
    assert "boot failed: the config is invalid" in errors
    assert any(
        "node.yaml:5: service 'api', field dependsOn.containrd: unknown service 'containrd'" in e
        and "did you mean 'containerd'?" in e
        for e in errors
    )
    assert any("unknown key 'comand', did you mean 'command'?" in e for e in errors)
    assert "Traceback" not in node.log_text()
    assert node.proc.poll() is None  # PID 1 is still there
    # An operator fixes the file; the next attempt boots.
    node.config.write_text("services:\n  api:\n    command: [sleep, '1000']\n")
    wait_until(lambda: node.socket.exists(), timeout=60, what="the retried boot")
    node.wait_ready()
    assert node.status()["api"]["state"] == "running"


STORAGE = """
storage:
  device: {label: %(label)s, path: %(device)s}
  format: ifBlank
  mountPoint: %(mount)s
  waitSeconds: %(wait)s
services:
  writer:
    command: [/bin/sh, -c, 'echo boot >> %(mount)s/boots && exec sleep 1000']
"""


@disks.needs_loop
def test_storage_is_mounted_before_services_and_kept_across_boots(
    boot: Any, tmp_path: Path
) -> None:
    mount = tmp_path / "data"
    with disks.loop_devices(tmp_path) as attach:
        device = attach()
        config = STORAGE % {"label": "k4s-boot", "device": device, "mount": mount, "wait": 5}
        for boots in ("boot\n", "boot\nboot\n"):
            node = boot(config)
            node.wait_ready()
            # The mount is the container's own: seen through its PID 1's root.
            seen = Path(f"/proc/{node.init_pid}/root") / str(mount).lstrip("/")
            written = seen / "boots"
            wait_until(written.exists, timeout=30, what="the service's write")
            assert written.read_text() == boots
            storage_lines = [
                e["event"] for e in node.events() if e["event"].startswith("storage: ")
            ]
            first = boots == "boot\n"
            assert any(
                line.startswith(f"storage: {device} (ext4 labelled 'k4s-boot' (UUID ")
                and (" formatted and mounted on " if first else ") mounted on ") in line
                for line in storage_lines
            ), storage_lines
            assert node.cli("poweroff").returncode == 0
            assert node.wait_exit() == 0
            assert not mount.joinpath("boots").exists()  # it was never on the host's side


@disks.needs_loop
def test_missing_storage_fails_the_boot_into_the_fallback(boot: Any, tmp_path: Path) -> None:
    config = STORAGE % {
        "label": "k4s-nowhere",
        "device": "/dev/k4s-nowhere",
        "mount": tmp_path / "data",
        "wait": 0,
    }
    node = boot(config)
    wait_until(lambda: "retrying the boot" in node.log_text(), timeout=60, what="the fallback")
    failed = [e for e in node.events() if e.get("event") == "boot failed"]
    assert failed and failed[0]["error"].startswith(
        "storage: no filesystem with label 'k4s-nowhere', and no block device at"
        " /dev/k4s-nowhere after 0s; block devices: "
    )
    assert not node.socket.exists()  # no service started
    assert node.proc.poll() is None  # PID 1 is still there
    node.proc.kill()  # PID 1 takes no SIGTERM between boot attempts: end the namespace
    node.proc.wait()
