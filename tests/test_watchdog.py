"""The hardware watchdog without hardware: petting on trio's virtual clock (a pipe
stands in for the device), the health that stops it, opening's warnings, the
kernel's debug flag and the debug_hang request's gate. tests/test_watchdog_vm.py
boots qemu with an i6300esb and shows the resets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from k4sinit.config import ConfigErrors, load_config_text
from k4sinit.control.wire import Op, Request, RequestError
from k4sinit.core import cmdline
from k4sinit.core.monitoring import WatchdogSpec
from k4sinit.core.state import State
from k4sinit.daemon import Daemon
from k4sinit.daemon.root import Options, _open_watchdog
from k4sinit.node import roles
from k4sinit.pid1.watchdog import Watchdog, critical_failure, open_watchdog
from k4sinit.supervision.runner import ServiceRunner
from tests.test_daemon import Recorder


@pytest.fixture
def device() -> Iterator[tuple[Watchdog, int]]:
    """A watchdog whose "device" is a pipe's write end; the read end to see what it got."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    watchdog = Watchdog(write, "/dev/test-watchdog", 9.0)
    yield watchdog, read
    watchdog.disarm()
    os.close(read)


def written(read: int) -> bytes:
    try:
        return os.read(read, 65536)
    except BlockingIOError:
        return b""


def test_the_kernels_debug_hang_flag() -> None:
    hang = cmdline.parse("k4sinit.debug=hang")
    assert hang.debug and hang.debug_hang and not hang.warnings
    assert not cmdline.parse("k4sinit.debug").debug_hang
    assert not cmdline.parse("k4sinit.debug=1").debug_hang
    assert Options.init("s", hang, container=False, named=True).debug_hang
    assert not Options.init("s", cmdline.parse(""), container=False, named=True).debug_hang


async def test_pets_every_third_of_the_timeout_while_healthy(
    device: tuple[Watchdog, int], autojump_clock: trio.abc.Clock
) -> None:
    watchdog, read = device
    log = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run, lambda: None, log)
        await trio.sleep(3 * 10 + 1)  # pets at 0, 3, 6, ... 30
        nursery.cancel_scope.cancel()
    assert watchdog.pets == 11 and written(read) == b"\0" * 11
    assert log.events == []


async def test_an_unhealthy_daemon_stops_petting_for_good_and_says_why(
    device: tuple[Watchdog, int], autojump_clock: trio.abc.Clock
) -> None:
    watchdog, _ = device
    log = Recorder()
    reason: list[str | None] = [None]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run, lambda: reason[0], log)
        await trio.sleep(4)  # pets at 0 and 3
        reason[0] = "critical service x failed"
        await trio.sleep(60)
        reason[0] = None  # too late: a reset is on its way
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert watchdog.pets == 2
    assert [(e, f["reason"]) for e, f, _ in log.events] == [
        ("watchdog: no longer petted; the machine resets", "critical service x failed")
    ]


def test_disarm_is_the_magic_close(device: tuple[Watchdog, int]) -> None:
    watchdog, read = device
    watchdog.pet()
    watchdog.disarm()
    watchdog.disarm()
    watchdog.pet()  # nothing: closed
    assert written(read) == b"\0V"
    assert watchdog.fd is None


def test_a_missing_device_or_one_without_a_timeout_is_a_warning_naming_it(
    tmp_path: Path,
) -> None:
    log = Recorder()
    assert open_watchdog(WatchdogSpec(str(tmp_path / "watchdog")), log) is None
    not_a_watchdog = tmp_path / "file"
    not_a_watchdog.write_bytes(b"")
    assert open_watchdog(WatchdogSpec(str(not_a_watchdog), 10), log) is None
    assert [(e, f["device"]) for e, f, _ in log.events] == [
        ("watchdog: not used", str(tmp_path / "watchdog")),
        ("watchdog: not used", str(not_a_watchdog)),
    ]
    assert log.events[0][1]["error"] == "No such file or directory"
    assert log.events[1][1]["error"].startswith("cannot set a timeout of 10s: ")
    assert not_a_watchdog.read_bytes() == b"V"  # what was opened is closed the magic way


def test_pid_1_opens_the_watchdog_only_where_the_config_has_one_and_not_in_a_container(
    tmp_path: Path,
) -> None:
    log = Recorder()
    without = load_config_text("services: {}\n", "t")
    assert _open_watchdog(without, False, log) is None and log.events == []
    config = load_config_text(f"services: {{}}\nwatchdog: {{device: {tmp_path}/wd}}\n", "t")
    assert _open_watchdog(config, True, log) is None
    assert log.names() == ["watchdog: not in a container (the device is the host's)"]


CRITICAL = """
watchdog: {graceSeconds: 600}
services:
  vital: {command: [/nonexistent/vital], critical: true}
  minor: {command: [/nonexistent/minor]}
"""


def test_only_a_critical_service_failed_for_longer_than_the_grace_counts() -> None:
    def runner(name: str, critical: bool, state: State, since: float) -> ServiceRunner:
        spec = SimpleNamespace(critical=critical)
        fake = SimpleNamespace(spec=spec, name=name, state=state, since=since, reason="why")
        return cast(ServiceRunner, fake)

    runners = [
        runner("minor", False, State.FAILED, 0),
        runner("stopped", True, State.STOPPED, 0),  # an operator's stop is no failure
        runner("backoff", True, State.BACKOFF, 0),
        runner("vital", True, State.FAILED, 50),
    ]
    assert critical_failure(runners, 30, 80) is None
    assert critical_failure(runners, 30, 81) == (
        "critical service vital failed 31s ago (graceSeconds 30): why"
    )


async def test_a_daemon_stops_petting_once_a_critical_service_is_failed_past_the_grace(
    tmp_path: Path, device: tuple[Watchdog, int], autojump_clock: trio.abc.Clock
) -> None:
    watchdog, _ = device
    log = Recorder()
    config = load_config_text(CRITICAL, "t")
    daemon = Daemon(config, str(tmp_path / "sock"), log, watchdog=watchdog)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        vital = daemon.supervisor["vital"]
        assert vital.state is State.FAILED  # at once: its binary does not exist
        await trio.sleep_until(vital.since + 599)
        assert watchdog.pets > 0
        assert not [e for e in log.names() if e.startswith("watchdog")]
        await trio.sleep_until(vital.since + 600 + watchdog.interval + 1)
        pets = watchdog.pets
        await trio.sleep(60)
        assert watchdog.pets == pets
        daemon.request_shutdown("test")
    [(_, fields, _)] = [e for e in log.events if e[0].startswith("watchdog: no longer")]
    assert fields["reason"].startswith("critical service vital failed 60")
    assert "(graceSeconds 600): cannot start: " in fields["reason"]


async def test_debug_hang_is_refused_unless_the_kernel_allows_it(tmp_path: Path) -> None:
    daemon = Daemon(load_config_text("services: {}\n", "t"), str(tmp_path / "sock"), Recorder())

    async def send(reply: dict[str, Any]) -> None:
        raise AssertionError(f"answered {reply}")

    with pytest.raises(RequestError, match=r"only with k4sinit\.debug=hang"):
        await daemon.handle(Request(Op.DEBUG_HANG), send)


def test_a_nodes_role_is_made_critical_by_its_override() -> None:
    config = load_config_text(
        "node:\n  profile: worker\n  server: https://10.0.0.1:6443\n"
        "  token: abcdef.0123456789abcdef\n  roles: {kubelet: {critical: true}}\n",
        "t",
    )
    expanded = roles.expand(config)
    assert [name for name, spec in expanded.services.items() if spec.critical] == ["kubelet"]
    with pytest.raises(ConfigErrors, match=r"field node\.roles\.kubelet\.critical: expected a"):
        load_config_text("node: {profile: worker, roles: {kubelet: {critical: 1}}}\n", "t")
