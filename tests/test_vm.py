"""The node image booted in qemu: the real ``/init`` (k4sinit as PID 1) from power-on
to a clean power-off.

One image (made by the u-root tool: u-root's commands in /bbin, Debian's dash as
/bin/sh) is built and booted once per module (TCG: ~35 s); the tests then read
that boot's console. The services, in dash with u-root's commands: ``hello`` prints
a line and sleeps; ``probe`` (after hello is Ready) runs ``k4sinit status`` and
prints what PID 1 set up and where the commands it needs resolve;
``containerd`` (the k4s build's containerd 2, with runc and the shim beside it,
ready when its socket accepts) and ``ctr-run`` (after containerd is Ready: imports
the image's ``busybox.tar`` and runs an echo in it with ``ctr run --rm``, whose
output is the service's); ``poweroff`` (after all of them) runs ``k4sinit
poweroff``, which must end qemu with exit code 0 after the kernel's power-off
message. Needs root, qemu, Debian's kernel, busybox-static (for the pod image):
installed by ``scripts/vm-deps`` when missing, else skipped; and the Go userland
(rootfs/k4s/gobuild.py) and u-root (rootfs/uroot/urootbuild.py), built when out
of date.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import build  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import oci  # noqa: E402
import vm  # noqa: E402

pytestmark = pytest.mark.vm

CONFIG = """\
hostname: k4s-vm-test
modules: [virtio_pci, virtio_net, br_netfilter, overlay, veth, nf_tables, nft_compat, nft_chain_nat, xt_MASQUERADE]
services:
  hello:
    command: [sh, -c, 'echo hello from the vm; exec sleep 1000']
    resources: {requests: {cpu: 3}}
  probe:
    command: [sh, -c]
    args:
      - |
        say() { while IFS= read -r line; do echo "probe: $1$line"; done; }
        k4sinit status
        echo "probe: hostname=$(hostname)"
        iptables -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE &&
          iptables -t nat -S POSTROUTING | say "iptables: "
        grep " / / " /proc/self/mountinfo | say "root mount: "
        sh -c 'echo $$ > /sys/fs/cgroup/shims/cgroup.procs' && echo "probe: shims takes a process"
        echo "probe: hello's cpu.weight $(cat /sys/fs/cgroup/services/hello/cpu.weight)"
        ip -4 addr show eth0 | grep inet | while read -r _ address _; do echo "probe: eth0 $address"; done
        # the kernel's default route (u-root's ip shows no gateway and no "show default")
        while read -r dev to via _; do
          [ "$to" = 00000000 ] && echo "probe: route default via $via dev $dev"
        done < /proc/net/route
        say "resolv.conf: " < /etc/resolv.conf
        echo "probe: commands" $(for c in mount umount ls cat modprobe sh; do command -v $c; done)
        k4sinit status network
        for m in virtio_net br_netfilter overlay veth; do
          grep -q "^$m " /proc/modules && echo "probe: module $m loaded"
        done
        true
    dependsOn: [hello, network]
    restartPolicy: Never
  pidcap:
    command: [python3.11, -c]
    args:
      - |
        import os, time
        forked = 0
        for _ in range(30):
            try:
                if os.fork() == 0:
                    time.sleep(1000)
                    os._exit(0)
                forked += 1
            except OSError as exc:
                print("pidcap: fork failed:", exc.strerror)
                break
        current = open("/sys/fs/cgroup/services/pidcap/pids.current").read().strip()
        print(f"pidcap: forked {forked}, {current} pids", flush=True)
        time.sleep(1000)
    resources: {limits: {pids: 10}}
  hog:
    # 256 MiB written (u-root's dd streams its blocks: it would stay within the limit)
    command: [sh, -c, 'echo hog allocating; exec python3.11 -c "x = b\\"x\\" * (256 << 20)"']
    resources: {limits: {memory: 32Mi}}
    restartBackoff: {initialSeconds: 0.5, crashLoopLimit: 2}
  limits:
    command: [sh, -c]
    args:
      - |
        for i in $(seq 60); do
          k4sinit status hog --json | grep -q '"state": "failed"' && break
          sleep 1
        done
        k4sinit status hog
        k4sinit status pidcap
        true
    dependsOn: {pidcap: Started}
    restartPolicy: Never
  containerd:
    command: [containerd, --config, /etc/containerd/config.toml]
    readinessProbe:
      unixSocket: {path: /run/containerd/containerd.sock}
  ctr-run:
    command: [sh, -c]
    args:
      - >-
        ctr -n k8s.io images import /var/lib/k4sinit/images/busybox.tar &&
        ctr -n k8s.io run --rm k4sinit.local/busybox:1 hello echo hello from a container
    dependsOn: {containerd: Ready}
    restartPolicy: Never
  poweroff:
    command: [k4sinit, poweroff]
    dependsOn: {hello: Ready, probe: Completed, limits: Completed, ctr-run: Completed}
    restartPolicy: Never
"""

# Booted with a static ip= on the kernel command line: no network section here, and
# no modules: the NIC's drivers (virtio_pci, then virtio_net) come from coldplug alone.
NETONLY = """\
services:
  probe:
    command: [sh, -c, 'ip -4 addr show eth0; cat /proc/net/route /etc/resolv.conf; hostname']
    dependsOn: [network]
    restartPolicy: Never
  poweroff:
    command: [k4sinit, poweroff]
    dependsOn: {probe: Completed}
    restartPolicy: Never
"""

BROKEN = """\
services:
  api:
    command: [sleep, "1000"]
    dependsOn: {containrd: Ready}
"""

BOOT_TIMEOUT = 300  # TCG on 2 busy cores: ~35 s when quiet, minutes when loaded


@pytest.fixture(scope="module")
def image(vm_tools: None, userland: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vm-image")
    config = out / "config.yaml"
    config.write_text(CONFIG)
    image = build.build(
        config,
        out,
        extra_files={
            "/etc/k4sinit/broken.yaml": BROKEN.encode(),
            "/etc/k4sinit/netonly.yaml": NETONLY.encode(),
        },
        userland=userland,
        quiet=True,
    )
    shutil.rmtree(out / "rootfs")  # the staged tree (~170 MB); the image is all we need
    return image


@pytest.fixture(scope="module")
def booted(image: Path) -> Iterator[vm.VM]:
    """The VM after it powered off (or failed to): qemu is killed by pid on teardown."""
    # ip=dhcp: no network section in the config, so the kernel's option rules.
    machine = vm.VM(image, log_path=image.with_name("console.log"), append="ip=dhcp")
    with machine:
        try:
            machine.wait_for(re.escape(vm.POWER_OFF), BOOT_TIMEOUT)
            machine.wait(60)
        except vm.VMError as exc:
            pytest.fail(f"the VM did not power off (console in {machine.log_path}): {exc}")
        yield machine


def read_cpio(path: Path) -> dict[str, tuple[int, bytes]]:
    """A gzipped newc cpio as ``{path: (mode, data)}``, parsed independently of build.py."""
    raw = gzip.decompress(path.read_bytes())
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert raw[pos : pos + 6] == b"070701", f"bad cpio magic at {pos}"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = pos + 110 + namesize
        name = raw[pos + 110 : name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data = raw[data_start : data_start + size]
        pos = data_start + size + (-(data_start + size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data)


def test_image_holds_the_runtime_and_the_config(image: Path) -> None:
    files = read_cpio(image)
    init_mode, init = files["init"]
    assert init_mode & 0o111 and init.startswith(b"#!/usr/bin/python3.11 ")
    assert b"k4sinit.cli" in init
    assert files["usr/bin/k4sinit"] == files["init"]
    assert files["etc/k4sinit/config.yaml"][1] == CONFIG.encode()
    for path in (
        "usr/bin/python3.11",
        "lib64/ld-linux-x86-64.so.2",
        "bbin/bb",
        "usr/lib/k4sinit/site-packages/k4sinit/pid1/__pycache__/boot.cpython-311.pyc",
        "usr/lib/k4sinit/site-packages/trio/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
    ):
        assert path in files, path
    assert files["bin/sh"][1] == Path(build.DASH).resolve().read_bytes()  # Debian's dash
    assert "bin/busybox" not in files and files["bbin/ls"][1] == b"bb"  # u-root's
    for binary in build.DEFAULT_BINARIES:
        mode, data = files[binary.lstrip("/")]
        assert mode & 0o111 and data == Path(binary).resolve().read_bytes(), binary
    containerd_config = files["etc/containerd/config.toml"][1].decode()
    assert "version = 3" in containerd_config
    assert '  "io.containerd.grpc.v1.cri",' in containerd_config  # disabled without the role
    assert files["var/lib/k4sinit/images/busybox.tar"][1] == oci.busybox_archive()
    for empty in ("proc", "sys", "dev", "run", "tmp", "bbin"):
        assert empty in files
    assert not any("/test/" in p or p.startswith("usr/lib/python3.11/tkinter") for p in files)
    (modules_dep,) = (d for p, (_, d) in files.items() if p.endswith("/modules.dep"))
    assert re.search(rb"virtio_net\.ko: .*net_failover\.ko", modules_dep)
    assert re.search(rb"br_netfilter\.ko: .*bridge\.ko", modules_dep)
    (modules_alias,) = (d for p, (_, d) in files.items() if p.endswith("/modules.alias"))
    assert re.search(rb"^alias pci:v00001AF4d\*\S* virtio_pci$", modules_alias, re.M)
    assert re.search(rb"^alias virtio:d00000001v\* virtio_net$", modules_alias, re.M)


def test_image_holds_the_go_userland_and_the_pause_image(image: Path, userland: Any) -> None:
    files = read_cpio(image)
    mode, k4s = files["bbin/k4s"]
    assert mode & 0o111 and k4s == userland.k4s.read_bytes()
    for role in userland.roles():
        assert files[f"bbin/{role}"][1] == b"k4s", role
    for path, built in (
        (build.SHIM_PATH, userland.shim),
        (build.RUNC_PATH, userland.runc),
        *((f"/opt/cni/bin/{name}", plugin) for name, plugin in userland.cni.items()),
    ):
        assert files[path.lstrip("/")][1] == built.read_bytes(), path
    description = json.loads(files["etc/k4sinit/image.json"][1])
    assert description["k4s"]["sha256"] == hashlib.sha256(k4s).hexdigest()
    assert description["versions"] == userland.versions
    pause = oci.pause_archive(userland.pause, oci.pause_ref(userland.versions["pause"]))
    assert files["var/lib/k4sinit/images/pause.tar"][1] == pause
    assert files["sbin/modprobe"][1] == build.KMOD.encode()
    assert not any(p.startswith("usr/lib/k4sinit/standins") for p in files)  # no stand-ins


def test_kernel_runs_k4sinit_as_pid_1(booted: vm.VM) -> None:
    assert re.search(r"k4sinit starting.*container=False.*pid=1\b", booted.console)
    assert "Failed to execute /init" not in booted.console


def test_services_reach_ready_and_their_output_is_on_the_console(booted: vm.VM) -> None:
    console = booted.console
    assert re.search(r"hello from the vm.*service=hello", console)
    assert re.search(r"ready=True .*service=hello state=running", console)
    assert re.search(r"service=probe state=completed", console)


def test_status_and_system_setup_inside_the_vm(booted: vm.VM) -> None:
    console = booted.console
    # kubelet's mount and umount are u-root's; the shell and modprobe Debian's
    commands = "/bbin/mount /bbin/umount /bbin/ls /bbin/cat /sbin/modprobe /bin/sh"
    assert f"probe: commands {commands}" in console
    assert re.search(r"hello\s+running\s+yes\s+\d+", console), "k4sinit status table"
    assert "probe: hostname=k4s-vm-test" in console
    for module in ("virtio_net", "br_netfilter", "overlay", "veth"):
        assert f"probe: module {module} loaded" in console
    # The rule the CNI bridge plugin's ipMasq writes, read back (iptables-nft on nf_tables).
    rule = "-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE"
    assert f"probe: iptables: {rule}" in console


def test_k4sinit_poweroff_ends_qemu_cleanly(booted: vm.VM) -> None:
    console = booted.console
    assert booted.exit_code == 0
    assert booted.powered_off and not booted.panicked
    requested = console.index("shutdown requested")
    assert re.search(r"reason=.?k4sinit poweroff", console[requested:].splitlines()[0])
    assert requested < console.index("all services stopped") < console.index(vm.POWER_OFF)


def test_the_shim_cgroup_can_hold_containerds_shims(booted: vm.VM) -> None:
    # cgroup2 refuses processes in a cgroup whose subtree_control is set.
    assert "probe: shims takes a process" in booted.console


def test_cgroup_limits_are_enforced(booted: vm.VM) -> None:
    console = booted.console
    assert "probe: hello's cpu.weight 300" in console  # requests.cpu: 3
    # pids.max 10: the loop cannot fork 30 sleeps; the cgroup holds at most 10.
    assert "pidcap: fork failed: Resource temporarily unavailable" in console
    (forked, count) = re.findall(r"pidcap: forked (\d+), (\d+) pids", console)[0]
    assert (int(forked), int(count)) == (9, 10)
    assert re.search(r"cgroup:\s+/sys/fs/cgroup/services/pidcap: .*\d+ pids of 10", console)
    # memory.max 32Mi: dd's 256M buffer is OOM-killed, restarted by policy, then failed.
    assert re.search(
        r"reason='killed by SIGKILL \(out of memory: limit 32Mi\); restarting in", console
    )
    assert re.search(
        r"hog: failed.*\n[^\n]*reason:\s+crash loop: 2 quick exits in a row, last killed by SIGKILL \(out of memory: limit 32Mi\)",
        console,
    )
    assert re.search(
        r"cgroup:\s+/sys/fs/cgroup/services/hog: .* of 32\.0Mi.*[1-9]\d* OOM kills", console
    )


def test_a_container_started_by_ctr_under_the_supervised_containerd_prints(
    booted: vm.VM,
) -> None:
    console = booted.console
    # the switch into a tmpfs root happened: runc cannot pivot_root out of rootfs
    (root_mount,) = re.findall(r"probe: root mount: .*", console)
    assert " - tmpfs " in root_mount and "rootfs" not in root_mount, root_mount
    assert re.search(r"ready=True reason=ready service=containerd state=running", console)
    # the container's stdout reaches the console through ctr, as ctr-run's output
    assert re.search(
        r"\] hello from a container\s+pid=\d+ service=ctr-run stream=stdout$", console, re.M
    )
    assert re.search(r"reason='exit code 0' service=ctr-run state=completed", console)
    assert re.search(r"k4sinit\.local/busybox:1\s+saved", console)  # containerd 2's ctr import
    lines = console.splitlines()
    assert not [line for line in lines if "service=containerd" in line and "level=error" in line]


def test_a_broken_config_reaches_the_fallback_with_readable_errors(image: Path) -> None:
    """Boot the same image with k4sinit.config= pointing at a broken file."""
    machine = vm.VM(
        image,
        log_path=image.with_name("console-broken.log"),
        append="k4sinit.config=/etc/k4sinit/broken.yaml",
    )
    with machine:
        try:
            machine.wait_for(r"starting an emergency shell", BOOT_TIMEOUT)
        except vm.VMError as exc:
            pytest.fail(f"no fallback (console in {machine.log_path}): {exc}")
        console = machine.console
    assert "boot failed: the config is invalid" in console
    assert re.search(
        r"/etc/k4sinit/broken\.yaml:4: service 'api', field dependsOn\.containrd: "
        r"unknown service 'containrd' in dependsOn",
        console,
    )
    assert "Traceback" not in console
    assert "Kernel panic" not in console


def test_ip_dhcp_gets_a_lease_from_qemus_user_network(booted: vm.VM) -> None:
    console = booted.console
    assert re.search(
        r"event.*lease.*address=10\.0\.2\.15/24|lease .*address=10\.0\.2\.15/24", console
    )
    assert "probe: eth0 10.0.2.15/24" in console
    # qemu's restricted user network (the VM reaches nothing outside) offers
    # no router and no DNS; the static ip= boot below checks those.
    assert "probe: route default" not in console
    assert re.search(r"network: ready \(eth0 10\.0\.2\.15/24", console)


def test_a_static_ip_option_configures_the_node(image: Path) -> None:
    option = "ip=10.0.2.42::10.0.2.2:255.255.255.0:k4s-static:eth0:off:10.0.2.3"
    machine = vm.VM(
        image,
        log_path=image.with_name("console-static.log"),
        append=f"k4sinit.config=/etc/k4sinit/netonly.yaml {option}",
    )
    with machine:
        try:
            machine.wait_for(re.escape(vm.POWER_OFF), BOOT_TIMEOUT)
        except vm.VMError as exc:
            pytest.fail(f"the VM did not power off (console in {machine.log_path}): {exc}")
        console = machine.console
    assert re.search(r"inet 10\.0\.2\.42/24 .*service=probe", console)
    # the default route as the kernel lists it: to 0.0.0.0 via 10.0.2.2 (little-endian hex)
    assert re.search(r"eth0\s+00000000\s+0202000A\s.*service=probe", console)
    assert re.search(r"nameserver 10\.0\.2\.3.*service=probe", console)
    assert re.search(r"k4s-static.*service=probe", console)
    # netonly.yaml names no module: coldplug loaded the NIC's bus driver, then the NIC's.
    coldplug = re.findall(r"stage 1: coldplug: .*", console)
    assert len(coldplug) == 1, coldplug  # the summary, and no problem
    assert re.search(r"loaded virtio_pci, .*virtio_net.* for \d+ devices", coldplug[0]), coldplug
