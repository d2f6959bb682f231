"""Coldplug: devices' modaliases matched against modules.alias, modules loaded until
no new device asks for one.

A fake sysfs (``devices/.../modalias``, ``module/``) and a fake
``/lib/modules/RELEASE`` in tmp_path; the loader is a callback that records what
it is asked for and, like a real bus driver, makes new devices appear. The last
tests read this host's real /sys and Debian's modules.alias, and only match.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from k4sinit.host import system

VIRTIO_PCI_NET = "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00"
VIRTIO_PCI_RNG = "pci:v00001AF4d00001044sv00001AF4sd00001044bcFFscFFi00"
HOST_BRIDGE = "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"
VIRTIO_NET = "virtio:d00000001v00001AF4"
VIRTIO_RNG = "virtio:d00000004v00001AF4"

# As depmod writes it for the image's modules (and a few others to match against).
MODULES_ALIAS = """\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000004v* virtio_rng
alias fs-overlay overlay
alias rtnl-link-veth veth
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
"""

MODULES_DEP = """\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/char/hw_random/virtio-rng.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/net/veth.ko:
kernel/drivers/usb/host/xhci-pci.ko:
kernel/drivers/usb/storage/usb-storage.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/net/net_failover.ko:
kernel/net/core/failover.ko:
"""


def modules_dir(tmp_path: Path, alias: str = MODULES_ALIAS, **files: str | bytes) -> Path:
    """A fake /lib/modules/RELEASE with modules.alias, modules.dep and ``files``."""
    base = tmp_path / "lib/modules/6.1.0-test"
    base.mkdir(parents=True)
    (base / "modules.alias").write_text(alias)
    (base / "modules.dep").write_text(MODULES_DEP)
    for name, content in files.items():
        path = base / name.replace("_", ".")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return base


def add_device(sysfs: Path, devpath: str, modalias: str | None) -> Path:
    """A device directory under sysfs/devices, with its modalias (None: without one)."""
    directory = sysfs / devpath.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "uevent").write_text("")
    (directory / "power").mkdir(exist_ok=True)
    if modalias is not None:
        (directory / "modalias").write_text(modalias + "\n")
    return directory


def fake_sysfs(
    tmp_path: Path, devices: dict[str, str | None], loaded: tuple[str, ...] = ()
) -> Path:
    sysfs = tmp_path / "sys"
    (sysfs / "devices").mkdir(parents=True)
    for name in loaded:
        (sysfs / "module" / name).mkdir(parents=True)
    for devpath, modalias in devices.items():
        add_device(sysfs, devpath, modalias)
    return sysfs


class Recorder:
    """A loader callback: records names, returns ``failures[name]``, runs ``effects[name]``."""

    def __init__(
        self,
        effects: Mapping[str, Callable[[], object]] | None = None,
        failures: dict[str, str] | None = None,
    ) -> None:
        self.effects = effects or {}
        self.failures = failures or {}
        self.calls: list[str] = []

    def __call__(self, name: str) -> str | None:
        self.calls.append(name)
        if name in self.failures:
            return self.failures[name]
        if name in self.effects:
            self.effects[name]()
        return None


# --- matching ------------------------------------------------------------------


def test_normalize_alias_reads_dashes_as_underscores_outside_brackets() -> None:
    assert system.normalize_alias("of:Nfoo-barT*Cvendor,a-b") == "of:Nfoo_barT*Cvendor,a_b"
    assert system.normalize_alias("dmi*:pn[A-Z]-x*") == "dmi*:pn[A-Z]_x*"
    assert system.normalize_alias("pci:v00001AF4d*") == "pci:v00001AF4d*"


def test_match_globs_like_fnmatch() -> None:
    aliases = system.ModuleAliases(
        [
            ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
            ("pci:v*d*sv*sd*bc0Csc03i30*", "xhci_pci"),
            ("usb:v046Dp?52Bd*", "logitech"),
            ("acpi*:PNP0[5-6]01:*", "serial_pnp"),
            ("platform:rtc_cmos", "rtc_cmos"),
            ("*:ANY", "anything"),
        ]
    )
    assert aliases.match(VIRTIO_PCI_NET) == ["virtio_pci"]
    assert aliases.match("pci:v00008086d00001E31sv00008086sd00007270bc0Csc03i30") == ["xhci_pci"]
    assert aliases.match("pci:v00008086d00001E31sv00008086sd00007270bc0Csc03i20") == []
    assert aliases.match("usb:v046DpC52Bd1201dc00") == ["logitech"]
    assert aliases.match("usb:v046DpCC52Bd1201dc00") == []  # ? is one character
    assert aliases.match("acpi:PNP0501:") == ["serial_pnp"]
    assert aliases.match("acpi:PNP0701:") == []
    assert aliases.match("platform:rtc_cmos") == ["rtc_cmos"]
    assert aliases.match("platform:rtc_cmos2") == []  # a literal pattern is the whole alias
    assert aliases.match("platform:rtc_cmo") == []
    assert aliases.match("x:y:ANY") == ["anything"]  # a wildcard prefix is tried on everything
    assert aliases.match("PCI:v00001AF4d00001041") == []  # case sensitive, as kmod's fnmatch
    assert aliases.match("") == []


def test_match_keeps_file_order_and_names_a_module_once() -> None:
    aliases = system.ModuleAliases(
        [
            ("cpu:type:x86,*feature:*0099*", "sha1_ssse3"),
            ("cpu:type:x86,*feature:*0081*", "aesni_intel"),
            ("cpu:type:x86,*feature:*00C0*", "sha1_ssse3"),
            ("cpu:type:*", "generic"),
        ]
    )
    cpu = "cpu:type:x86,ven0002fam0019mod0011:feature:,0000,0081,0099,00C0"
    assert aliases.match(cpu) == ["sha1_ssse3", "aesni_intel", "generic"]


def test_match_normalizes_dashes_on_both_sides() -> None:
    aliases = system.ModuleAliases([("of:N*T*Cqcom,usb-hs-phy*", "phy_qcom"), ("i2c:ab-cd", "x")])
    assert aliases.match("of:NphyT(null)Cqcom,usb_hs_phy-msm8916") == ["phy_qcom"]
    assert aliases.match("i2c:ab_cd") == aliases.match("i2c:ab-cd") == ["x"]


def test_read_takes_aliases_dep_and_builtins(tmp_path: Path) -> None:
    modinfo = b"\0".join(
        [
            b"serial8250.alias=platform:serial8250",
            b"serial8250.parm=nr_uarts:uint",
            b"virtio_console.alias=virtio:d00000003v*",
            b"",
        ]
    )
    base = modules_dir(
        tmp_path,
        modules_builtin="kernel/drivers/tty/serial/8250/8250.ko\nkernel/drivers/char/virtio_console.ko\n",
        modules_builtin_modinfo=modinfo,
    )
    aliases = system.ModuleAliases.read(base)
    assert "virtio_rng" in aliases.modules and "usb_storage" in aliases.modules
    assert aliases.builtin == {"8250", "serial8250", "virtio_console"}
    assert aliases.match("virtio:d00000004v00001AF4") == ["virtio_rng"]  # virtio-rng.ko's name
    assert aliases.match("virtio:d00000003v00001AF4") == ["virtio_console"]
    assert aliases.match("platform:serial8250") == ["serial8250"]
    assert aliases.match("fs-overlay") == ["overlay"]


def test_read_without_modules_alias_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        system.ModuleAliases.read(tmp_path)


# --- sysfs ---------------------------------------------------------------------


def test_read_modaliases_walks_devices_without_following_links(tmp_path: Path) -> None:
    sysfs = fake_sysfs(
        tmp_path,
        {
            "/devices/pci0000:00/0000:00:00.0": HOST_BRIDGE,
            "/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET,
            "/devices/pci0000:00/0000:00:03.0/virtio0": VIRTIO_NET,
            "/devices/virtual/net/lo": None,
            "/devices/platform/empty": "",
        },
    )
    device = sysfs / "devices/pci0000:00/0000:00:03.0"
    (device / "subsystem").symlink_to(sysfs / "devices")  # a loop, if followed
    (device / "virtio0/device").symlink_to(device)
    expected = {
        "/devices/pci0000:00/0000:00:00.0": HOST_BRIDGE,
        "/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET,
        "/devices/pci0000:00/0000:00:03.0/virtio0": VIRTIO_NET,
    }
    assert system.read_modaliases(str(sysfs)) == expected
    assert list(system.read_modaliases(str(sysfs) + "/")) == list(expected)
    assert system.read_modaliases(str(tmp_path / "nothing")) == {}


# --- coldplug ------------------------------------------------------------------


def test_coldplug_reaches_a_fixed_point_as_bus_drivers_add_devices(tmp_path: Path) -> None:
    """virtio_pci makes the virtio devices appear; they ask for virtio_net and virtio_rng."""
    base = modules_dir(tmp_path)
    sysfs = fake_sysfs(
        tmp_path,
        {
            "/devices/pci0000:00/0000:00:00.0": HOST_BRIDGE,
            "/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET,
            "/devices/pci0000:00/0000:00:04.0": VIRTIO_PCI_RNG,
            "/devices/platform/serial8250": "platform:serial8250",
        },
    )

    def virtio_pci_probes() -> None:
        add_device(sysfs, "/devices/pci0000:00/0000:00:03.0/virtio0", VIRTIO_NET)
        add_device(sysfs, "/devices/pci0000:00/0000:00:04.0/virtio1", VIRTIO_RNG)

    loader = Recorder(effects={"virtio_pci": virtio_pci_probes})
    result = system.coldplug(sysfs=str(sysfs), base=base, load=loader)
    assert loader.calls == ["virtio_pci", "virtio_net", "virtio_rng"]  # each once
    assert result.modules == ["virtio_pci", "virtio_net", "virtio_rng"]
    assert result.problems == ()
    assert (result.devices, result.rounds) == (6, 3)  # load, load, nothing new
    assert result.summary() == (
        "loaded virtio_pci, virtio_net, virtio_rng for 4 devices"
        " (6 devices with a modalias, 3 rounds)"
    )
    assert result.details() == [
        f"virtio_pci for /devices/pci0000:00/0000:00:03.0 ({VIRTIO_PCI_NET})",
        f"virtio_pci for /devices/pci0000:00/0000:00:04.0 ({VIRTIO_PCI_RNG})",
        f"virtio_net for /devices/pci0000:00/0000:00:03.0/virtio0 ({VIRTIO_NET})",
        f"virtio_rng for /devices/pci0000:00/0000:00:04.0/virtio1 ({VIRTIO_RNG})",
    ]


def test_coldplug_leaves_loaded_and_builtin_modules_alone(tmp_path: Path) -> None:
    base = modules_dir(
        tmp_path,
        modules_builtin="kernel/drivers/virtio/virtio_pci.ko\n",
        modules_builtin_modinfo=b"virtio_pci.alias=pci:v00001AF4d*sv*sd*bc*sc*i*\0",
    )
    sysfs = fake_sysfs(
        tmp_path,
        {
            "/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET,
            "/devices/pci0000:00/0000:00:03.0/virtio0": VIRTIO_NET,
            "/devices/platform/rtc_cmos": "platform:rtc_cmos",
        },
        loaded=("virtio_net",),
    )
    loader = Recorder()
    result = system.coldplug(sysfs=str(sysfs), base=base, load=loader)
    assert loader.calls == []  # virtio_pci is built in, virtio_net loaded, no pcspkr alias
    assert result.problems == ()
    assert result.summary() == "nothing to load for the 3 devices with a modalias"
    assert result.rounds == 1


def test_coldplug_a_device_without_a_module_is_normal(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {"/devices/pci0000:00/0000:00:00.0": HOST_BRIDGE})
    result = system.coldplug(sysfs=str(sysfs), base=modules_dir(tmp_path), load=Recorder())
    assert result == system.Coldplug(devices=1, rounds=1)
    assert result.summary() == "nothing to load for the 1 device with a modalias"


def test_coldplug_failures_are_lines_and_are_not_retried(tmp_path: Path) -> None:
    # usb_storage in modules.alias but not in modules.dep: an alias file out of date.
    alias = MODULES_ALIAS + "alias usb:v0781p5581d*dc*dsc*dp*ic*isc*ip*in* sandisk_extra\n"
    base = modules_dir(tmp_path, alias=alias)
    sysfs = fake_sysfs(
        tmp_path,
        {
            "/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET,
            "/devices/pci0000:00/0000:00:14.0": "pci:v8086d1E31sv0sd0bc0Csc03i30",
            "/devices/pci0000:00/0000:00:14.0/usb2/2-1": "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00",
        },
    )

    def more_devices() -> None:  # a new device that wants the module that failed
        add_device(sysfs, "/devices/pci0000:00/0000:00:05.0", VIRTIO_PCI_RNG)
        add_device(sysfs, "/devices/pci0000:00/0000:00:03.0/virtio0", VIRTIO_NET)

    failures = {"virtio_pci": "module virtio_ring: Invalid argument"}
    loader = Recorder(effects={"xhci_pci": more_devices}, failures=failures)
    result = system.coldplug(sysfs=str(sysfs), base=base, load=loader)
    assert loader.calls == ["virtio_pci", "xhci_pci", "usb_storage", "virtio_net"]
    assert result.modules == ["xhci_pci", "usb_storage", "virtio_net"]
    assert result.problems == (
        "module virtio_ring: Invalid argument"
        f" (for /devices/pci0000:00/0000:00:03.0, {VIRTIO_PCI_NET})",
        "module sandisk_extra (for usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00):"
        f" not in {base}",
    )


def test_coldplug_stops_after_max_rounds(tmp_path: Path) -> None:
    alias = "".join(f"alias chain:{i} chain{i}\n" for i in range(10))
    base = modules_dir(tmp_path, alias=alias)
    (base / "modules.dep").write_text("".join(f"chain{i}.ko:\n" for i in range(10)))
    sysfs = fake_sysfs(tmp_path, {"/devices/chain0": "chain:0"})
    effects = {
        f"chain{i}": (lambda i=i: add_device(sysfs, f"/devices/chain{i + 1}", f"chain:{i + 1}"))
        for i in range(9)
    }
    result = system.coldplug(sysfs=str(sysfs), base=base, load=Recorder(effects), max_rounds=4)
    assert result.modules == ["chain0", "chain1", "chain2", "chain3"]
    assert result.problems == ("still loading after 4 rounds; stopped",)


def test_coldplug_without_modules_alias_skips(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {"/devices/pci0000:00/0000:00:03.0": VIRTIO_PCI_NET})
    loader = Recorder()
    result = system.coldplug(sysfs=str(sysfs), base=tmp_path / "none", load=loader)
    assert loader.calls == [] and result.problems == ()
    assert result.summary() == (
        f"nothing to load: {tmp_path / 'none/modules.alias'}: No such file or directory"
    )


# --- this host: real /sys, a real modules.alias, matching only ---------------------


def host_modules() -> Path | None:
    """/lib/modules of the running kernel, else of an installed one (Debian's, for the VM)."""
    running = Path("/lib/modules", os.uname().release)
    if (running / "modules.alias").exists():
        return running
    installed = sorted(Path("/lib/modules").glob("*/modules.alias"), reverse=True)
    return installed[0].parent if installed else None


@pytest.fixture
def host_base(vm_tools: None) -> Path:
    """This host's modules, or Debian's kernel's (vm_tools installs linux-image-amd64)."""
    base = host_modules()
    assert base is not None, "no /lib/modules/*/modules.alias even after scripts/vm-deps"
    if not system.read_modaliases():
        pytest.skip("this machine's /sys has no device with a modalias: nothing to match")
    return base


def test_host_devices_match_as_modprobe_resolves_them(host_base: Path) -> None:
    aliases = system.ModuleAliases.read(host_base)
    devices = system.read_modaliases()
    assert devices and all(devpath.startswith("/devices/") for devpath in devices)
    if shutil.which("modprobe") is None:
        pytest.skip("modprobe (kmod) is not installed: nothing to compare the matches with")
    for modalias in set(devices.values()):
        resolved = subprocess.run(
            ["modprobe", "-S", host_base.name, "-R", modalias],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert set(aliases.match(modalias)) == set(resolved), modalias


def test_host_coldplug_with_a_loader_that_loads_nothing(host_base: Path) -> None:
    loader = Recorder()
    result = system.coldplug(base=host_base, load=loader)
    aliases = system.ModuleAliases.read(host_base)
    assert result.problems == ()
    assert len(loader.calls) == len(set(loader.calls))
    assert all(m in aliases.modules and m not in aliases.builtin for m in loader.calls)
    assert result.modules == loader.calls
    assert result.rounds == (2 if loader.calls else 1)  # nothing really loaded: no new device
    assert result.devices == len(system.read_modaliases())
