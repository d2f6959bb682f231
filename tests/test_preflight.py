"""Preflight: each check passes, warns and fails on a fake root tree; this host's cgroup state."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from k4sinit.cli import main
from k4sinit.core.config import StorageSpec
from k4sinit.core.nodespec import Profile
from k4sinit.host import system
from k4sinit.node import preflight
from k4sinit.node.preflight import Check, Status
from tests import disks

GiB = 1 << 30
MiB = 1 << 20
RELEASE = "6.1.0-test"
MOUNTINFO_V2 = (
    "1 1 0:1 / / rw - overlay overlay rw\n"
    "2 1 0:2 / /proc rw - proc proc rw\n"
    "3 1 0:3 / /sys rw - sysfs sysfs rw\n"
    "4 3 0:4 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
)
MOUNTINFO_HYBRID = (
    "1 1 0:1 / / rw - overlay overlay rw\n"
    "3 1 0:3 / /sys rw - sysfs sysfs rw\n"
    "4 3 0:4 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    "5 4 0:5 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "6 4 0:6 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)
MOUNTINFO_V1 = (
    "1 1 0:1 / / rw - overlay overlay rw\n"
    "3 1 0:3 / /sys rw - sysfs sysfs rw\n"
    "4 3 0:4 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    "5 4 0:5 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
)


def write(root: Path, path: str, text: str = "", mode: int | None = None) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    if mode is not None:
        target.chmod(mode)


def remove(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()


def free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> list[str]:
    """Make os.statvfs report ``free`` bytes available; returns the paths it was asked."""
    asked: list[str] = []

    def statvfs(path: os.PathLike[str] | str) -> SimpleNamespace:
        asked.append(str(path))
        return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)

    monkeypatch.setattr(os, "statvfs", statvfs)  # the os module preflight calls
    return asked


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake root on which every check of every profile passes."""
    write(tmp_path, "/proc/sys/kernel/osrelease", RELEASE + "\n")
    write(tmp_path, "/proc/self/mountinfo", MOUNTINFO_V2)
    write(tmp_path, "/proc/self/cgroup", "0::/\n")
    write(tmp_path, "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma\n")
    write(tmp_path, "/proc/filesystems", "nodev\tsysfs\nnodev\tcgroup2\nnodev\toverlay\n\text4\n")
    write(tmp_path, "/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n")
    write(tmp_path, "/proc/net/ip_tables_names", "")
    for ns in ("pid", "net", "ipc", "uts", "mnt", "cgroup", "user"):
        write(tmp_path, f"/proc/self/ns/{ns}")
    write(tmp_path, "/proc/sys/user/max_user_namespaces", "1000\n")
    write(
        tmp_path,
        f"/lib/modules/{RELEASE}/modules.dep",
        "kernel/drivers/net/veth.ko.xz:\n"
        "kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n",
    )
    write(tmp_path, "/proc/self/status", "Name:\tk4sinit\nSeccomp:\t0\nSeccomp_filters:\t0\n")
    for name in ("containerd", "containerd-shim-runc-v2", "runc"):
        write(tmp_path, f"/bbin/{name}", "#!/bin/sh\n", 0o755)
    write(tmp_path, "/proc/meminfo", "MemTotal:        4194304 kB\nMemFree:  1 kB\n")
    (tmp_path / "var/lib").mkdir(parents=True)
    write(tmp_path, "/proc/sys/net/ipv4/ip_forward", "1\n")
    write(tmp_path, "/proc/sys/vm/overcommit_memory", "1\n")
    write(tmp_path, "/proc/sys/kernel/panic", "10\n")
    write(tmp_path, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
    write(tmp_path, "/dev/kmsg")
    (tmp_path / "sys/module").mkdir(parents=True)
    free_space(monkeypatch, 10 * GiB)
    return tmp_path


def run(root: Path, profile: str = "single", **kwargs: Any) -> dict[str, Check]:
    checks = preflight.run_checks(Profile(profile), root=root, search_path="/bbin", **kwargs)
    by_name = {c.name: c for c in checks}
    assert len(by_name) == len(checks), "check names are unique"
    return by_name


def result(root: Path, name: str, profile: str = "single", **kwargs: Any) -> tuple[Status, str]:
    check = run(root, profile, **kwargs)[name]
    return check.status, check.detail


# --- this machine -------------------------------------------------------------


def test_cgroup2_on_this_host_matches_its_mountinfo() -> None:
    """A v1 or hybrid host fails, naming which; a unified host passes."""
    covering: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        covering[fields[4]] = fields[fields.index("-") + 1]  # later mounts cover earlier
    check = {c.name: c for c in preflight.run_checks(Profile.SINGLE)}["cgroup2"]
    if covering.get("/sys/fs/cgroup") == "cgroup2":
        assert check.status is Status.PASS
        assert check.detail == "cgroup2 at /sys/fs/cgroup"
        return
    assert check.status is Status.FAIL and check.fatal
    if any(fstype == "cgroup2" for fstype in covering.values()):
        assert check.detail.startswith("hybrid cgroup v1/v2: v1 at /sys/fs/cgroup/*")
    elif any(fstype == "cgroup" for fstype in covering.values()):
        assert check.detail.startswith("cgroup v1 only")
    assert check.detail.endswith("containers need cgroup2 at /sys/fs/cgroup")


# --- every check on a fake root -----------------------------------------------


def test_a_good_root_passes_everything(root: Path) -> None:
    write(root, "/bbin/kube-apiserver", "", 0o755)
    checks = preflight.run_checks(
        Profile.SINGLE, root=root, search_path="/bbin", binaries=["kube-apiserver"]
    )
    assert [(c.name, c.status) for c in checks if c.status is not Status.PASS] == []
    assert [c.name for c in checks] == [
        "kernel",
        "cgroup2",
        "cgroup controllers",
        "overlay",
        "br_netfilter",
        "netfilter",
        "namespaces",
        "user namespaces",
        "veth",
        "bridge",
        "seccomp",
        "binary containerd",
        "binary containerd-shim-runc-v2",
        "binary runc",
        "binary kube-apiserver",
        "memory",
        "disk",
        "sysctl net.ipv4.ip_forward",
        "sysctl net.bridge.bridge-nf-call-iptables",
        "sysctl vm.overcommit_memory",
        "sysctl kernel.panic",
        "swap",
        "/dev/kmsg",
    ]
    assert preflight.fatal(checks) == []


@pytest.mark.parametrize(
    ("release", "status", "detail", "fatal"),
    [
        ("6.1.0-test", Status.PASS, "6.1.0-test", False),
        ("5.4.0-150-generic", Status.PASS, "5.4.0-150-generic", False),
        (
            "4.19.0-26-amd64",
            Status.WARN,
            "4.19.0-26-amd64: older than 5.4, cgroup2 features may be missing",
            False,
        ),
        (
            "3.10.0-1160.el7",
            Status.FAIL,
            "3.10.0-1160.el7: older than 4.15, no cgroup2 cpu controller",
            True,
        ),
        ("4.14.1", Status.FAIL, "4.14.1: older than 4.15, no cgroup2 cpu controller", True),
        ("weird", Status.WARN, "weird: cannot parse the version", False),
    ],
)
def test_kernel_version(root: Path, release: str, status: Status, detail: str, fatal: bool) -> None:
    write(root, "/proc/sys/kernel/osrelease", release + "\n")
    assert run(root)["kernel"] == Check("kernel", status, detail, fatal)


def test_kernel_release_falls_back_to_uname(root: Path) -> None:
    remove(root, "/proc/sys/kernel/osrelease")
    assert run(root)["kernel"].detail.startswith(os.uname().release)


def test_cgroup2_hybrid_and_v1_fail_for_containers_and_warn_for_a_controller(root: Path) -> None:
    write(root, "/proc/self/mountinfo", MOUNTINFO_HYBRID)
    hybrid = "hybrid cgroup v1/v2: v1 at /sys/fs/cgroup/*, cgroup2 only at /sys/fs/cgroup/unified"
    assert run(root)["cgroup2"] == Check(
        "cgroup2",
        Status.FAIL,
        f"{hybrid}; containers need cgroup2 at /sys/fs/cgroup",
        fatal=True,
    )
    assert result(root, "cgroup2", "controller") == (
        Status.WARN,
        f"{hybrid}; services run without limits",
    )
    write(root, "/proc/self/mountinfo", MOUNTINFO_V1)
    assert result(root, "cgroup2", "worker") == (
        Status.FAIL,
        "cgroup v1 only: no cgroup2 mounted; containers need cgroup2 at /sys/fs/cgroup",
    )


def test_cgroup2_not_mounted_or_not_in_the_kernel(root: Path) -> None:
    write(root, "/proc/self/mountinfo", "1 1 0:1 / / rw - overlay overlay rw\n")
    assert result(root, "cgroup2") == (
        Status.FAIL,
        "no cgroup2 mounted at /sys/fs/cgroup; containers need cgroup2 at /sys/fs/cgroup",
    )
    write(root, "/proc/filesystems", "nodev\toverlay\n")
    assert result(root, "cgroup2") == (
        Status.FAIL,
        "the kernel has no cgroup2 filesystem; containers need cgroup2 at /sys/fs/cgroup",
    )


def test_cgroup_controllers(root: Path) -> None:
    assert result(root, "cgroup controllers") == (
        Status.PASS,
        "cpu, cpuset, hugetlb, io, memory, pids, rdma",
    )
    write(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory pids cpuset\n")
    assert result(root, "cgroup controllers") == (
        Status.WARN,
        "cgroup2 controllers: io, hugetlb missing",
    )
    write(root, "/sys/fs/cgroup/cgroup.controllers", "cpu pids cpuset io hugetlb\n")
    check = run(root)["cgroup controllers"]
    assert check == Check(
        "cgroup controllers", Status.FAIL, "cgroup2 controllers: memory missing", fatal=True
    )
    # A controller runs without limits rather than not at all.
    assert result(root, "cgroup controllers", "controller") == (
        Status.WARN,
        "cgroup2 controllers: memory missing",
    )


def test_cgroup_controllers_are_read_in_our_own_cgroup(root: Path) -> None:
    write(root, "/proc/self/cgroup", "0::/k4s.scope\n")
    write(root, "/sys/fs/cgroup/k4s.scope/cgroup.controllers", "cpu pids\n")
    assert result(root, "cgroup controllers") == (
        Status.FAIL,
        "cgroup2 controllers: memory missing (optional cpuset, io, hugetlb missing too)",
    )


def test_cgroup_controllers_of_a_hybrid_layout_name_where_they_were_read(root: Path) -> None:
    write(root, "/proc/self/mountinfo", MOUNTINFO_HYBRID)
    write(root, "/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    assert result(root, "cgroup controllers") == (
        Status.FAIL,
        "cgroup2 controllers: cpu, memory, pids missing (optional cpuset, io missing too)"
        " in /sys/fs/cgroup/unified",
    )
    write(root, "/proc/self/mountinfo", MOUNTINFO_V1)
    assert result(root, "cgroup controllers") == (
        Status.FAIL,
        "no cgroup2 hierarchy to read controllers from",
    )


def test_overlay(root: Path) -> None:
    assert result(root, "overlay") == (Status.PASS, "overlay in /proc/filesystems")
    write(root, "/proc/filesystems", "nodev\tcgroup2\n")
    write(root, f"/lib/modules/{RELEASE}/modules.dep", "kernel/fs/overlayfs/overlay.ko.xz:\n")
    assert result(root, "overlay") == (Status.PASS, "module overlay installed")
    write(root, f"/lib/modules/{RELEASE}/modules.dep", "")
    assert run(root)["overlay"] == Check(
        "overlay",
        Status.FAIL,
        f"not in /proc/filesystems, no module in /lib/modules/{RELEASE}: containerd's snapshotter needs it",
        fatal=True,
    )


def test_br_netfilter(root: Path) -> None:
    assert result(root, "br_netfilter") == (
        Status.PASS,
        "loaded or built in (/proc/sys/net/bridge)",
    )
    remove(root, "/proc/sys/net/bridge")
    write(root, f"/lib/modules/{RELEASE}/modules.builtin", "kernel/net/bridge/br_netfilter.ko\n")
    assert result(root, "br_netfilter") == (Status.PASS, "module br_netfilter built in")
    remove(root, f"/lib/modules/{RELEASE}/modules.builtin")
    write(root, "/proc/modules", "br_netfilter 32768 0 - Live 0x0000000000000000\n")
    assert result(root, "br_netfilter") == (Status.PASS, "module br_netfilter loaded")
    remove(root, "/proc/modules")
    # Not fatal: the node comes up, bridged pod traffic just skips iptables.
    assert run(root)["br_netfilter"] == Check(
        "br_netfilter",
        Status.FAIL,
        f"no /proc/sys/net/bridge, no module in /lib/modules/{RELEASE}: bridged pod traffic bypasses iptables",
        fatal=False,
    )


def test_netfilter(root: Path) -> None:
    assert result(root, "netfilter") == (
        Status.PASS,
        "ip_tables active (/proc/net/ip_tables_names)",
    )
    remove(root, "/proc/net/ip_tables_names")
    write(root, "/proc/config.gz", "")
    (root / "proc/config.gz").write_bytes(
        gzip.compress(b"CONFIG_NF_TABLES=y\nCONFIG_IP_NF_IPTABLES=m\n")
    )
    assert result(root, "netfilter") == (Status.PASS, "nf_tables built in")
    remove(root, "/proc/config.gz")
    assert run(root)["netfilter"] == Check(
        "netfilter",
        Status.FAIL,
        f"neither nf_tables nor ip_tables (none loaded, none in /lib/modules/{RELEASE}): no masquerade for pods",
        fatal=False,
    )


def test_namespaces(root: Path) -> None:
    assert result(root, "namespaces") == (Status.PASS, "pid, net, ipc, uts, mnt, cgroup")
    assert result(root, "user namespaces") == (Status.PASS, "max 1000")
    remove(root, "/proc/self/ns/cgroup")
    assert run(root)["namespaces"] == Check(
        "namespaces", Status.FAIL, "namespaces: cgroup missing", fatal=True
    )
    write(root, "/proc/sys/user/max_user_namespaces", "0\n")
    assert result(root, "user namespaces") == (
        Status.WARN,
        "user.max_user_namespaces is 0: pods with hostUsers: false cannot run",
    )
    remove(root, "/proc/self/ns/user")
    assert result(root, "user namespaces") == (
        Status.WARN,
        "not in this kernel: pods with hostUsers: false cannot run",
    )


def test_veth_and_bridge_modules(root: Path) -> None:
    assert result(root, "veth") == (Status.PASS, "module veth installed")
    (root / "sys/module/bridge").mkdir()  # a built-in module with parameters
    assert result(root, "bridge") == (Status.PASS, "module bridge built in")
    write(root, f"/lib/modules/{RELEASE}/modules.dep", "")
    assert result(root, "veth") == (
        Status.WARN,
        f"not loaded, not found in /lib/modules/{RELEASE}: needed by pods' network interfaces",
    )


def test_seccomp(root: Path) -> None:
    assert result(root, "seccomp") == (Status.PASS, "supported (Seccomp in /proc/self/status)")
    write(root, "/proc/self/status", "Name:\tk4sinit\n")
    assert result(root, "seccomp") == (
        Status.WARN,
        "no Seccomp field in /proc/self/status: RuntimeDefault profiles fail",
    )


def test_binaries(root: Path) -> None:
    write(root, "/usr/bin/kube-scheduler", "", 0o755)
    write(root, "/bbin/kubelet", "", 0o644)
    checks = preflight.run_checks(
        Profile.SINGLE,
        root=root,
        search_path="/bbin:/usr/bin",
        binaries=["kube-apiserver", "kube-scheduler", "kubelet", "runc"],
    )
    binaries = [c for c in checks if c.name.startswith("binary ")]
    assert binaries == [
        Check("binary containerd", Status.PASS, "/bbin/containerd"),
        Check("binary containerd-shim-runc-v2", Status.PASS, "/bbin/containerd-shim-runc-v2"),
        Check("binary runc", Status.PASS, "/bbin/runc"),  # once, though asked twice
        Check(
            "binary kube-apiserver",
            Status.FAIL,
            "kube-apiserver: not found in /bbin:/usr/bin",
            fatal=True,
        ),
        Check("binary kube-scheduler", Status.PASS, "/usr/bin/kube-scheduler"),
        Check(
            "binary kubelet",
            Status.FAIL,
            "kubelet: /bbin/kubelet is not executable",
            fatal=True,
        ),
    ]


def test_memory_thresholds_depend_on_the_profile(root: Path) -> None:
    write(root, "/proc/meminfo", "MemTotal:        1572864 kB\n")  # 1.5 GiB
    assert result(root, "memory", "worker") == (Status.PASS, "MemTotal 1.5 GiB")
    assert result(root, "memory", "controller") == (
        Status.WARN,
        "MemTotal 1.5 GiB, below the 2 GiB a controller wants",
    )
    write(root, "/proc/meminfo", "MemTotal:         524288 kB\n")
    assert result(root, "memory", "worker") == (
        Status.WARN,
        "MemTotal 512 MiB, below the 1 GiB a worker wants",
    )
    write(root, "/proc/meminfo", "MemTotal:        2097152 kB\n")
    assert result(root, "memory", "single") == (Status.PASS, "MemTotal 2 GiB")


@pytest.mark.parametrize(
    ("free", "status", "detail", "fatal"),
    [
        (10 * GiB, Status.PASS, "/var/lib: 10 GiB free", False),
        (GiB, Status.PASS, "/var/lib: 1 GiB free", False),
        (GiB - MiB, Status.WARN, "/var/lib: 1023 MiB free, below 1 GiB", False),
        (100 * MiB, Status.WARN, "/var/lib: 100 MiB free, below 1 GiB", False),
        (99 * MiB, Status.FAIL, "/var/lib: 99 MiB free, below 100 MiB", True),
    ],
)
def test_free_space_on_the_data_dir(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    free: int,
    status: Status,
    detail: str,
    fatal: bool,
) -> None:
    free_space(monkeypatch, free)
    assert run(root)["disk"] == Check("disk", status, detail, fatal)


def test_free_space_is_measured_where_the_data_dir_will_be(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = free_space(monkeypatch, 5 * GiB)
    assert result(root, "disk", data_dir="/var/lib/k4s/data") == (
        Status.PASS,
        "/var/lib/k4s/data: 5 GiB free",
    )
    assert asked == [str(root / "var/lib")]


def test_sysctls_only_warn(root: Path) -> None:
    write(root, "/proc/sys/net/ipv4/ip_forward", "0\n")
    write(root, "/proc/sys/net/bridge/bridge-nf-call-iptables", "0\n")
    write(root, "/proc/sys/vm/overcommit_memory", "0\n")
    write(root, "/proc/sys/kernel/panic", "0\n")
    checks = run(root)
    assert [checks[name] for name in checks if name.startswith("sysctl ")] == [
        Check(
            "sysctl net.ipv4.ip_forward",
            Status.WARN,
            "0, want 1; pods cannot reach beyond the node (k4sinit sets it at boot)",
        ),
        Check(
            "sysctl net.bridge.bridge-nf-call-iptables",
            Status.WARN,
            "0, want 1 (k4sinit sets it at boot)",
        ),
        Check(
            "sysctl vm.overcommit_memory",
            Status.WARN,
            "0, want 1; kubelet's default (k4sinit sets it at boot, outside a container)",
        ),
        Check(
            "sysctl kernel.panic",
            Status.WARN,
            "0: a panicked node hangs instead of rebooting",
        ),
    ]
    remove(root, "/proc/sys/net/bridge")
    assert result(root, "sysctl net.bridge.bridge-nf-call-iptables") == (
        Status.PASS,
        "absent (br_netfilter not loaded)",
    )
    remove(root, "/proc/sys/net/ipv4/ip_forward")
    assert result(root, "sysctl net.ipv4.ip_forward") == (Status.WARN, "absent")


def test_swap_and_kmsg(root: Path) -> None:
    assert result(root, "swap") == (Status.PASS, "off")
    assert result(root, "/dev/kmsg") == (Status.PASS, "present")
    write(
        root,
        "/proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0  partition\t4194300\t0\t100\n",
    )
    assert result(root, "swap") == (
        Status.WARN,
        "on (/dev/zram0): kubelet's failSwapOn refuses to start",
    )
    remove(root, "/dev/kmsg")
    assert result(root, "/dev/kmsg") == (Status.WARN, "missing: kubelet's OOM watcher reads it")


# --- profiles -----------------------------------------------------------------


def test_a_controller_needs_no_container_runtime(root: Path) -> None:
    for name in ("containerd", "containerd-shim-runc-v2", "runc"):
        remove(root, f"/bbin/{name}")
    write(root, "/proc/filesystems", "nodev\tcgroup2\n")
    write(root, f"/lib/modules/{RELEASE}/modules.dep", "")
    remove(root, "/proc/sys/net/bridge")
    write(root, "/bbin/kube-apiserver", "", 0o755)
    controller = preflight.run_checks(
        Profile.CONTROLLER, root=root, search_path="/bbin", binaries=["kube-apiserver"]
    )
    assert [c.name for c in controller] == [
        "kernel",
        "cgroup2",
        "cgroup controllers",
        "binary kube-apiserver",
        "memory",
        "disk",
        "sysctl kernel.panic",
    ]
    assert all(c.status is Status.PASS for c in controller)
    worker = run(root, "worker")
    assert worker["overlay"].fatal
    assert worker["binary containerd"] == Check(
        "binary containerd", Status.FAIL, "containerd: not found in /bbin", fatal=True
    )
    assert worker["br_netfilter"].status is Status.FAIL
    assert "binary kube-apiserver" not in worker


def test_an_unknown_profile_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["preflight", "--profile", "singel"])
    assert exited.value.code == 2
    assert "argument --profile: invalid choice: 'singel'" in capsys.readouterr().err


# --- presenting ---------------------------------------------------------------

CHECKS = [
    Check("kernel", Status.PASS, "6.1.0"),
    Check("cgroup2", Status.FAIL, "cgroup v1 only: no cgroup2 mounted", fatal=True),
    Check("sysctl kernel.panic", Status.WARN, "0: a panicked node hangs"),
    Check("br_netfilter", Status.FAIL, "no /proc/sys/net/bridge"),
]


def test_table() -> None:
    assert preflight.format_table(CHECKS) == (
        "CHECK                RESULT  DETAIL\n"
        "kernel               pass    6.1.0\n"
        "cgroup2              FAIL!   cgroup v1 only: no cgroup2 mounted\n"
        "sysctl kernel.panic  warn    0: a panicked node hangs\n"
        "br_netfilter         FAIL    no /proc/sys/net/bridge\n"
        "1 passed, 1 warning, 2 failed (1 fatal: FAIL! means the profile cannot run here)\n"
    )
    assert preflight.format_table(CHECKS[:1]).splitlines()[-1] == "1 passed, 0 warnings, 0 failed"


def test_summary_fatal_and_json() -> None:
    assert preflight.summary(CHECKS) == (1, 1, 2)
    assert preflight.fatal(CHECKS) == [CHECKS[1]]
    assert preflight.to_json(CHECKS[1:2]) == [
        {
            "name": "cgroup2",
            "status": "fail",
            "detail": "cgroup v1 only: no cgroup2 mounted",
            "fatal": True,
        }
    ]


# --- storage: the config's disk, checked where it is mounted -------------------------


@pytest.fixture
def attach(tmp_path: Path) -> Iterator[disks.Attach]:
    with disks.loop_devices(tmp_path) as make:
        yield make


def test_storage_not_mounted_is_fatal(tmp_path: Path) -> None:
    spec = StorageSpec(label="k4s-data", mount_point=str(tmp_path / "data"))
    check = preflight.check_storage(spec)
    assert (check.status, check.fatal) == (Status.FAIL, True)
    assert check.detail == (
        f"{tmp_path}/data: no disk mounted (label 'k4s-data' expected):"
        " the node's state would be lost at reboot"
    )


@disks.needs_loop
def test_storage_shows_device_and_space_and_fails_when_wrong(
    attach: disks.Attach, tmp_path: Path
) -> None:
    ours, other = attach(), attach()
    disks.mkfs(ours, label="k4s-ours")
    disks.mkfs(other, label="k4s-other")
    target = tmp_path / "data"
    target.mkdir()
    spec = StorageSpec(label="k4s-ours", mount_point=str(target))

    def mounted(device: str, flags: int = 0) -> Check:
        system.mount(device, str(target), "ext4", flags)
        return preflight.check_storage(spec)

    check = disks.isolated(lambda: mounted(ours))
    assert check.status is Status.PASS
    assert check.detail.startswith(f"{ours} (ext4 labelled 'k4s-ours' (UUID ")
    assert re.search(rf"\) on {target}, \d\d MiB free of \d\d MiB$", check.detail)

    check = disks.isolated(lambda: mounted(other))
    assert (check.status, check.fatal) == (Status.FAIL, True)
    assert check.detail.startswith(f"{target}: {other} (ext4 labelled 'k4s-other' (UUID ")
    assert check.detail.endswith(") is mounted, not label 'k4s-ours'")

    check = disks.isolated(lambda: mounted(ours, system.MS_RDONLY))
    assert (check.status, check.detail[-19:]) == (Status.FAIL, ": mounted read-only")


@disks.needs_loop
def test_a_full_storage_is_fatal(attach: disks.Attach, tmp_path: Path) -> None:
    device = attach(8 * MiB)
    disks.mkfs(device, label="k4s-full")
    target = tmp_path / "data"
    target.mkdir()

    def full() -> Check:
        system.mount(device, str(target), "ext4")
        disks.fill(str(target / "filler"))
        return preflight.check_storage(StorageSpec(label="k4s-full", mount_point=str(target)))

    check = disks.isolated(full)
    assert (check.status, check.fatal) == (Status.FAIL, True)
    assert re.search(rf" on {target}, 0 MiB free of \d MiB: full \(no space left\)$", check.detail)
