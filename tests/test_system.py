"""Stage 1: mounts (synthetic mountinfo and real mount namespaces), modules, sysctls, machine-id.

Everything that mounts or writes a sysctl runs in a subprocess inside its own
namespaces (``unshare``), so the host is never touched and the namespaces die
with the subprocess. Also the pure decisions of ``boot`` that sit on top of
these (should_switch_root) and the emergency shell's wait loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from k4sinit.core.config import SwitchRoot, SystemSpec
from k4sinit.host import system
from k4sinit.pid1 import boot

REPO = Path(__file__).resolve().parent.parent

needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to make private namespaces",
)


def run_python(snippet: str, *unshare: str, timeout: float = 60) -> Any:
    """Run ``snippet`` under ``unshare UNSHARE...`` (or directly); return its JSON output."""
    cmd = [sys.executable, "-c", textwrap.dedent(snippet)]
    if unshare:
        cmd = ["unshare", *unshare, *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert done.returncode == 0, f"{cmd[:-1]} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])


# --- mounted(): synthetic mountinfo ------------------------------------------------


def mountinfo(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


ROOT = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"
PROC = "22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw"
SYS = "23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw"
DEV = "24 27 0:6 / /dev rw,nosuid,relatime shared:3 - devtmpfs devtmpfs rw,mode=755"
PTS = "26 24 0:24 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=600"
CGROUP_TMPFS = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755"
CGROUP_CPU = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"
CGROUP_UNIFIED = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
UNIFIED_CHILD = "42 41 0:40 / /sys/fs/cgroup/unified/x rw - tmpfs tmpfs rw"


def test_mounted_plain_tree(tmp_path: Path) -> None:
    path = mountinfo(tmp_path, ROOT, PROC, SYS, DEV, PTS, CGROUP_TMPFS, CGROUP_UNIFIED)
    assert system.mounted(path) == {
        "/": "ext4",
        "/proc": "proc",
        "/sys": "sysfs",
        "/dev": "devtmpfs",
        "/dev/pts": "devpts",
        "/sys/fs/cgroup": "tmpfs",
        "/sys/fs/cgroup/unified": "cgroup2",
    }


def test_mounted_fresh_sysfs_over_sys_hides_what_was_under_it(tmp_path: Path) -> None:
    # As the kernel shows it: the new sysfs's parent is the covered /sys (23).
    fresh_sys = "63 23 0:39 / /sys rw,relatime - sysfs sysfs rw"
    lines = (ROOT, PROC, SYS, DEV, CGROUP_TMPFS, CGROUP_CPU, CGROUP_UNIFIED, UNIFIED_CHILD)
    path = mountinfo(tmp_path, *lines, fresh_sys)
    assert system.mounted(path) == {
        "/": "ext4",
        "/proc": "proc",
        "/sys": "sysfs",
        "/dev": "devtmpfs",
    }
    # cgroup2 then mounted in the fresh sysfs is visible again.
    new_cgroup = "64 63 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"
    path = mountinfo(tmp_path, *lines, fresh_sys, new_cgroup)
    assert system.mounted(path)["/sys/fs/cgroup"] == "cgroup2"
    assert "/sys/fs/cgroup/unified" not in system.mounted(path)


def test_mounted_stacked_mounts_give_the_top_one(tmp_path: Path) -> None:
    path = mountinfo(
        tmp_path,
        ROOT,
        "50 27 0:50 / /mnt rw - tmpfs tmpfs rw",
        "51 50 8:1 / /mnt rw - ext4 /dev/sda1 rw",
        "52 51 0:52 / /mnt rw - xfs /dev/sdb1 rw",
        DEV,
        PTS,
        "29 26 0:26 / /dev/pts rw - devpts devpts rw,mode=620",
    )
    assert system.mounted(path) == {
        "/": "ext4",
        "/mnt": "xfs",
        "/dev": "devtmpfs",
        "/dev/pts": "devpts",
    }


def test_mounted_does_not_need_parents_first(tmp_path: Path) -> None:
    fresh_sys = "63 23 0:39 / /sys rw,relatime - sysfs sysfs rw"
    path = mountinfo(
        tmp_path, UNIFIED_CHILD, fresh_sys, CGROUP_UNIFIED, PROC, CGROUP_TMPFS, SYS, ROOT
    )
    assert system.mounted(path) == {"/": "ext4", "/proc": "proc", "/sys": "sysfs"}


def test_mounted_unescapes_spaces(tmp_path: Path) -> None:
    path = mountinfo(tmp_path, ROOT, r"70 27 0:70 / /mnt/my\040disk rw - vfat /dev/sdc1 rw")
    assert system.mounted(path) == {"/": "ext4", "/mnt/my disk": "vfat"}


def test_mounted_without_proc_is_empty(tmp_path: Path) -> None:
    assert system.mounted(str(tmp_path / "nothing")) == {}


def test_mounted_initramfs_root_is_its_own_parent(tmp_path: Path) -> None:
    # proc(5): parent ID is "of self for the root of this mount namespace's
    # mount tree", which PID 1 sees when it runs from the initramfs (no switch).
    path = mountinfo(
        tmp_path,
        "1 1 0:2 / / rw - rootfs rootfs rw,size=1000000k",
        "22 1 0:21 / /proc rw - proc proc rw",
        "23 1 0:22 / /sys rw - sysfs sysfs rw",
    )
    assert system.mounted(path) == {"/": "rootfs", "/proc": "proc", "/sys": "sysfs"}


# --- mounted() and mount_filesystems() in real mount namespaces ----------------------


@needs_unshare
def test_mounted_real_fresh_sysfs_hides_the_cgroup_mounts() -> None:
    outer_before = system.mounted()
    if "/sys/fs/cgroup" not in outer_before:
        pytest.skip("nothing mounted at /sys/fs/cgroup on this host to hide")
    inner = run_python(
        """
        import json
        from k4sinit.host import system
        before = system.mounted()
        system.mount("sysfs", "/sys", "sysfs", 0)
        print(json.dumps({"before": before, "after": system.mounted()}))
        """,
        "--mount",
        "--net",
        "--propagation",
        "private",
    )
    assert "/sys/fs/cgroup" in inner["before"]
    assert inner["after"]["/sys"] == "sysfs"
    assert not [p for p in inner["after"] if p.startswith("/sys/")]
    assert system.mounted().get("/sys/fs/cgroup") == outer_before["/sys/fs/cgroup"]


@needs_unshare
def test_mount_filesystems_in_a_container_mounts_sysfs_and_cgroup2_once() -> None:
    outer = system.mounted()
    # --cgroup: mounting cgroup2 with options in the init cgroup namespace would
    # change the host hierarchy's flags (nsdelegate, memory_recursiveprot).
    inner = run_python(
        """
        import json
        from k4sinit.host import system
        first = system.mount_filesystems(container=True)
        second = system.mount_filesystems(container=True)
        print(json.dumps({"first": first, "second": second, "mounted": system.mounted()}))
        """,
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "--cgroup",
        "--propagation",
        "private",
    )
    first, second, mounted = inner["first"], inner["second"], inner["mounted"]
    assert "mounted sysfs on /sys" in first
    assert "mounted cgroup2 on /sys/fs/cgroup" in first
    assert first.index("mounted sysfs on /sys") < first.index("mounted cgroup2 on /sys/fs/cgroup")
    assert not [line for line in first if line.startswith("could not")]
    assert not [line for line in first if line.endswith((" /run", " /tmp", " /dev"))]
    assert second == []
    assert mounted["/sys"] == "sysfs"
    assert mounted["/sys/fs/cgroup"] == "cgroup2"
    assert mounted.get("/run") == outer.get("/run")
    assert mounted.get("/tmp") == outer.get("/tmp")
    assert system.mounted().get("/sys/fs/cgroup") == outer.get("/sys/fs/cgroup")


def test_sysfs_of_our_netns_with_bonding_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    real_listdir = os.listdir

    def listdir(path: Any) -> list[str]:
        entries = real_listdir(path)
        return [*entries, "bonding_masters"] if str(path) == "/sys/class/net" else entries

    assert not system._sysfs_of_another_netns()  # the host's own sysfs
    monkeypatch.setattr(os, "listdir", listdir)
    assert not system._sysfs_of_another_netns()


# --- kernel modules --------------------------------------------------------------------

MODULES_DEP = """\
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/dummy-net.ko:
"""


def test_modules_dep_and_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(MODULES_DEP)
    deps = system._modules_dep(tmp_path / "modules.dep")
    assert set(deps) == {"br_netfilter", "bridge", "stp", "llc", "dummy_net"}
    assert system._dependency_chain("br_netfilter", deps) == [
        "kernel/net/llc/llc.ko",
        "kernel/net/802/stp.ko",
        "kernel/net/bridge/bridge.ko",
        "kernel/net/bridge/br_netfilter.ko",
    ]
    assert system._dependency_chain("llc", deps) == ["kernel/net/llc/llc.ko"]
    assert system._dependency_chain("dummy_net", deps) == ["kernel/drivers/net/dummy-net.ko"]
    assert system._dependency_chain("nope", deps) == []
    assert system._modules_dep(tmp_path / "missing.dep") == {}


def test_load_modules_absent_is_a_problem_line_not_an_exception() -> None:
    problems = system.load_modules(["k4sinit-no-such-module"], release="does-not-exist")
    assert problems == ["module k4sinit-no-such-module: not found in /lib/modules/does-not-exist"]


def test_load_modules_already_there_is_fine() -> None:
    present = [m for m in ("bridge", "printk", "kernel") if Path("/sys/module", m).exists()]
    if not present:
        pytest.skip("no known module in /sys/module")
    # modules.dep of a release that does not exist: only "already there" can pass.
    assert system.load_modules(present[:1], release="does-not-exist") == []


# --- sysctls (in a private network namespace) ----------------------------------------

SYSCTL_SNIPPET = """
import json, sys
from pathlib import Path
from k4sinit.host import system
if {hide_net!r}:  # an empty net/: no sysctl of br_netfilter (nor of any other net.*)
    system.mount("tmpfs", "/proc/sys/net", "tmpfs", 0)
def read(key):
    path = Path("/proc/sys", key.replace(".", "/"))
    return path.read_text().strip() if path.exists() else None
before = read("net.ipv4.ip_forward")
problems = system.apply_sysctls({sysctls!r}, container={container!r})
print(json.dumps({{"before": before, "after": read("net.ipv4.ip_forward"), "problems": problems}}))
"""


def sysctls_in_netns(
    sysctls: list[tuple[str, str]], *, container: bool = True, hide_net: bool = False
) -> Any:
    snippet = SYSCTL_SNIPPET.format(sysctls=sysctls, container=container, hide_net=hide_net)
    if hide_net:
        return run_python(snippet, "--mount", "--net", "--propagation", "private")
    return run_python(snippet, "--net")


def read_sysctl(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text()


@needs_unshare
def test_sysctl_ip_forward_is_set_in_the_namespace_only() -> None:
    outer = read_sysctl("net.ipv4.ip_forward")
    result = sysctls_in_netns([])
    assert result["before"] == "0"  # a new network namespace starts without forwarding
    assert result["after"] == "1"
    assert result["problems"] == []
    assert read_sysctl("net.ipv4.ip_forward") == outer


@needs_unshare
def test_sysctl_in_a_container_leaves_the_hosts_alone() -> None:
    keys = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom")
    before = {key: read_sysctl(key) for key in keys}
    result = sysctls_in_netns([("kernel.panic", "77"), ("net.ipv4.ip_forward", "1")])
    assert result["problems"] == []
    assert {key: read_sysctl(key) for key in keys} == before


@needs_unshare
def test_sysctl_bad_keys_and_values_of_the_config_are_reported() -> None:
    result = sysctls_in_netns(
        [("net.ipv4.k4sinit_no_such_key", "1"), ("net.ipv4.tcp_syncookies", "banana")]
    )
    assert result["problems"] == [
        "sysctl net.ipv4.k4sinit_no_such_key=1: No such file or directory",
        "sysctl net.ipv4.tcp_syncookies=banana: Invalid argument",
    ]


@needs_unshare
def test_sysctl_missing_default_is_quiet_but_a_missing_configured_one_is_not() -> None:
    # An empty tmpfs over /proc/sys/net: no net/bridge/, as without br_netfilter.
    assert sysctls_in_netns([], hide_net=True)["problems"] == []
    configured = [("net.bridge.bridge-nf-call-iptables", "1")]
    assert sysctls_in_netns(configured, hide_net=True)["problems"] == [
        "sysctl net.bridge.bridge-nf-call-iptables=1: No such file or directory"
    ]


# --- machine id ------------------------------------------------------------------------


def is_machine_id(text: str) -> bool:
    return (
        len(text) == 33 and text.endswith("\n") and all(c in "0123456789abcdef" for c in text[:32])
    )


def test_machine_id_is_created_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "machine-id"
    first = system.ensure_machine_id(str(path))
    assert is_machine_id(path.read_text())
    assert path.read_text() == first + "\n"
    assert system.ensure_machine_id(str(path)) == first
    assert path.read_text() == first + "\n"


def test_machine_id_comes_from_the_persisted_file(tmp_path: Path) -> None:
    persisted = tmp_path / "persist" / "machine-id"
    persisted.parent.mkdir()
    persisted.write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "machine-id"
    assert system.ensure_machine_id(str(path), str(persisted)) == "0123456789abcdef0123456789abcdef"
    assert path.read_text() == "0123456789abcdef0123456789abcdef\n"


def test_machine_id_missing_persisted_file_makes_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "machine-id"
    system.ensure_machine_id(str(path), str(tmp_path / "not-there"))
    assert is_machine_id(path.read_text())


def test_machine_id_existing_valid_one_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "machine-id"
    path.write_text("fedcba9876543210fedcba9876543210\n")
    persisted = tmp_path / "persisted"
    persisted.write_text("0123456789abcdef0123456789abcdef\n")
    assert system.ensure_machine_id(str(path), str(persisted)) == "fedcba9876543210fedcba9876543210"
    assert path.read_text() == "fedcba9876543210fedcba9876543210\n"


def test_machine_id_uninitialized_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "machine-id"
    path.write_text("uninitialized\n")
    system.ensure_machine_id(str(path))
    assert is_machine_id(path.read_text())


def test_machine_id_invalid_persisted_content_is_not_copied(tmp_path: Path) -> None:
    persisted = tmp_path / "persisted"
    persisted.write_text("not-a-machine-id\n")
    path = tmp_path / "machine-id"
    system.ensure_machine_id(str(path), str(persisted))
    assert is_machine_id(path.read_text())


# --- boot.should_switch_root -------------------------------------------------------------


@pytest.fixture
def not_switched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(boot.SWITCHED_ENV, raising=False)


@pytest.mark.usefixtures("not_switched")
@pytest.mark.parametrize("kernel", [None, "always", "auto"])
def test_switch_root_never_in_a_container(kernel: str | None) -> None:
    spec = SystemSpec(switch_root=SwitchRoot.ALWAYS)
    assert boot.should_switch_root(spec, kernel, container=True) is False


def test_switch_root_never_again_after_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(boot.SWITCHED_ENV, "1")
    spec = SystemSpec(switch_root=SwitchRoot.ALWAYS)
    assert boot.should_switch_root(spec, "always", container=False) is False


@pytest.mark.usefixtures("not_switched")
@pytest.mark.parametrize(
    ("spec_choice", "kernel", "expected"),
    [
        (SwitchRoot.ALWAYS, None, True),
        (SwitchRoot.NEVER, None, False),
        (SwitchRoot.ALWAYS, "never", False),
        (SwitchRoot.NEVER, "always", True),
        (SwitchRoot.AUTO, "always", True),
        (SwitchRoot.AUTO, None, False),  # this host's / is not an initramfs
        (SwitchRoot.ALWAYS, "auto", False),
    ],
)
def test_switch_root_choices(spec_choice: SwitchRoot, kernel: str | None, expected: bool) -> None:
    assert system.mounted().get("/") not in ("rootfs", "ramfs")
    spec = SystemSpec(switch_root=spec_choice)
    assert boot.should_switch_root(spec, kernel, container=False) is expected


# --- boot.run_console_shell (forks and waits with waitpid(-1): in a subprocess) -----------


@pytest.mark.parametrize(
    ("argv", "code"),
    [(("sh", "-c", "exit 3"), 3), (("/nonexistent/k4sinit-shell",), 127)],
)
def test_run_console_shell_returns_the_wait_status(argv: tuple[str, ...], code: int) -> None:
    result = run_python(
        f"""
        import json, os
        from k4sinit.pid1.boot import run_console_shell
        status = run_console_shell({argv!r})
        print(json.dumps({{"exited": os.WIFEXITED(status), "code": os.WEXITSTATUS(status)}}))
        """
    )
    assert result == {"exited": True, "code": code}


def test_run_console_shell_reports_a_killed_shell() -> None:
    result = run_python(
        """
        import json, os
        from k4sinit.pid1.boot import run_console_shell
        status = run_console_shell(("sh", "-c", "kill -TERM $$"))
        print(json.dumps({"signalled": os.WIFSIGNALED(status), "signal": os.WTERMSIG(status)}))
        """
    )
    assert result == {"signalled": True, "signal": signal.SIGTERM}
