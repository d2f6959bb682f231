"""Readiness the service says itself: sd_notify over NOTIFY_SOCKET, s6's notification-fd.

Real processes under :class:`~k4sinit.supervision.supervisor.Supervisor` with a
real :class:`~k4sinit.supervision.notify.NotifyListener`, on trio's virtual
clock where a time is asserted (see tests/test_runner.py for how that clock
behaves with real children).
"""

from __future__ import annotations

import array
import os
import random
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from k4sinit.config import load_config_text
from k4sinit.core.state import State
from k4sinit.daemon import default_env
from k4sinit.supervision import notify
from k4sinit.supervision.notify import Notifications, NotifyListener, parse
from k4sinit.supervision.reaper import Reaper
from k4sinit.supervision.runner import RunnerContext, ServiceRunner
from k4sinit.supervision.supervisor import Supervisor

from .conftest import child_cmd
from .test_runner import cmd, eventually, times
from .test_runner import until as until_changed


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


@pytest.fixture
async def listener(nursery: trio.Nursery) -> NotifyListener:
    listening = NotifyListener(structlog.get_logger())
    await nursery.start(listening.run)
    return listening


@pytest.fixture
async def supervise(
    nursery: trio.Nursery, listener: NotifyListener
) -> AsyncIterator[Callable[[str], Any]]:
    """``await supervise(yaml) -> Supervisor`` with ``listener`` as its NOTIFY_SOCKET."""
    reaper = Reaper()
    await nursery.start(reaper.run)
    started: list[Supervisor] = []

    async def start(text: str) -> Supervisor:
        config = load_config_text(textwrap.dedent(text), "test.yaml")
        ctx = RunnerContext(
            reaper, default_env(), None, structlog.get_logger(), random.Random(0), listener
        )
        sup = Supervisor(config, ctx)
        await nursery.start(sup.run)
        started.append(sup)
        return sup

    yield start
    with trio.CancelScope(shield=True), trio.move_on_after(60):
        for sup in started:
            await sup.stop_all()


async def until(runner: ServiceRunner, predicate: Callable[[ServiceRunner], bool]) -> None:
    """Wait for ``predicate``, waking every 0.05 s too: what a real child is about
    to send announces itself to no deadline, and an idle virtual clock would
    otherwise jump straight to this wait's own (test_runner's ``until`` has none
    of these waits)."""
    with trio.fail_after(300):
        while not predicate(runner):
            with trio.move_on_after(0.05):
                await runner.changed()


def send(listener: NotifyListener, data: bytes) -> None:
    """A datagram to the listener from this (the test's) process: no service's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, "\0" + listener.address[1:])


# --- sd_notify ------------------------------------------------------------------


async def test_ready_on_ready_1_and_not_before(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    argv = child_cmd(
        "--notify-early", "STATUS=loading", "--notify-when", str(go), "--notify", "READY=1"
    )  # fmt: skip
    sup = await supervise(
        f"""
        services:
          svc:
            command: {cmd(argv)}
            readinessProbe: {{notify: {{}}}}
          dependent:
            command: ["sleep", "1000"]
            dependsOn: [svc]
        """
    )
    svc, dependent = sup["svc"], sup["dependent"]
    await until(svc, lambda r: r.state is State.RUNNING)
    await trio.sleep(100)  # a notify service is never polled into readiness
    assert not svc.ready
    assert svc.reason.startswith("waiting for READY=1 on NOTIFY_SOCKET")
    assert dependent.state is State.WAITING
    assert dependent.reason == "waiting for svc: not ready"
    go.touch()
    await until(svc, lambda r: r.ready)
    assert svc.reason == "ready (READY=1)"
    await until(dependent, lambda r: r.state is State.RUNNING)
    assert svc.snapshot()["notify_status"] == "loading"
    detail = svc.detail()["notify"]
    assert detail is not None and detail["ready"] and detail["messages"] == 2


async def test_status_shows_while_waiting_and_after(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    argv = child_cmd(
        "--notify-early", "STATUS=replaying the log", "--notify-when", str(go),
        "--notify", "READY=1", "--notify", "STATUS=serving",
    )  # fmt: skip
    sup = await supervise(
        f"""
        services:
          svc:
            command: {cmd(argv)}
            readinessProbe: {{notify: {{}}}}
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: "STATUS=" in r.reason)
    assert svc.reason == "waiting for READY=1 on NOTIFY_SOCKET (STATUS=replaying the log)"
    go.touch()
    await until(svc, lambda r: r.ready)
    await eventually(lambda: svc.snapshot()["notify_status"] == "serving")
    assert svc.reason == "ready (READY=1)"  # a later STATUS= is no new state


async def test_stopping_1_takes_readiness_back(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    argv = child_cmd(
        "--notify-early", "READY=1", "--notify-when", str(go), "--notify", "STOPPING=1"
    )
    sup = await supervise(
        f"""
        services:
          svc:
            command: {cmd(argv)}
            readinessProbe: {{notify: {{}}}}
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.ready)
    go.touch()
    await until(svc, lambda r: not r.ready)
    assert svc.reason == "stopping (STOPPING=1)"
    assert svc.state is State.RUNNING  # what the process does is its own business


async def test_a_service_that_never_notifies_stays_not_ready_and_says_why(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          silent:
            command: ["sleep", "1000"]
            readinessProbe: {notify: {}}
        """
    )
    silent = sup["silent"]
    await until(silent, lambda r: r.state is State.RUNNING)
    await trio.sleep(3600)
    assert not silent.ready and silent.state is State.RUNNING
    assert silent.reason == "waiting for READY=1 on NOTIFY_SOCKET"


async def test_foreign_datagrams_are_dropped_counted_and_logged(
    supervise: Any, listener: NotifyListener
) -> None:
    # "other" is no notify service, but finds the socket and says READY=1; so does
    # this test's own process. Neither message is any notify service's. (Real
    # time: both drops come within LOG_EVERY seconds, so one log line.)
    other = child_cmd("--notify", "READY=1")
    text = f"""
        services:
          svc:
            command: ["sleep", "1000"]
            readinessProbe: {{notify: {{}}}}
          other:
            command: {cmd(other)}
            env: {{NOTIFY_SOCKET: "{listener.address}"}}
        """
    with structlog.testing.capture_logs() as logs:
        sup = await supervise(text)
        svc = sup["svc"]
        await until(svc, lambda r: r.state is State.RUNNING)
        send(listener, b"READY=1")
        await eventually(lambda: listener.dropped["unknown-sender"] == 2)
    assert not svc.ready
    assert svc.reason == "waiting for READY=1 on NOTIFY_SOCKET"
    notes = svc.detail()["notify"]
    assert notes is not None
    assert (notes["ready"], notes["messages"], notes["status"]) == (False, 0, None)
    dropped = [e for e in logs if e["event"] == "notify message dropped"]
    assert [(e["reason"], e["count"]) for e in dropped] == [("unknown-sender", 1)]


async def test_a_child_of_the_main_process_may_notify(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    # Without cgroups: the sender is in the service's process group (sh is the main pid).
    notifier = " ".join(child_cmd("--notify", "READY=1"))
    sup = await supervise(
        f"""
        services:
          svc:
            command: ["sh", "-c", "{notifier}; sleep 1000"]
            readinessProbe: {{notify: {{}}}}
        """
    )
    await until(sup["svc"], lambda r: r.ready)


async def test_floods_and_oversized_datagrams_change_nothing_else(
    clock: trio.testing.MockClock, supervise: Any, listener: NotifyListener, tmp_path: Path
) -> None:
    flood_done = tmp_path / "flood-done"
    flooder = child_cmd("--flood", "2000", "--oversized", "30", "--done-file", str(flood_done))
    sup = await supervise(
        f"""
        services:
          flooder:
            command: {cmd(flooder)}
            readinessProbe: {{notify: {{}}}}
          good:
            command: {cmd(child_cmd("--notify-when", str(flood_done), "--notify", "READY=1"))}
            readinessProbe: {{notify: {{}}}}
        """
    )
    flooder_runner, good = sup["flooder"], sup["good"]
    await until(good, lambda r: r.ready)
    assert good.reason == "ready (READY=1)"
    assert not flooder_runner.ready
    assert flooder_runner.reason == "waiting for READY=1 on NOTIFY_SOCKET"
    assert listener.dropped["oversized"] == 30
    assert listener.dropped["malformed"] >= 1 and listener.dropped["flood"] >= 1
    assert listener.dropped["malformed"] + listener.dropped["flood"] == 2000
    notes = flooder_runner.notifications
    assert notes is not None and notes.dropped == listener.dropped["flood"]
    assert notes.messages == 0


async def test_watchdog_liveness_fails_after_failure_threshold_periods(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    usec = tmp_path / "usec"
    sup = await supervise(
        f"""
        services:
          svc:
            command: ["sh", "-c", "echo $WATCHDOG_USEC > {usec}; exec sleep 1000"]
            livenessProbe: {{notify: {{}}, periodSeconds: 2, failureThreshold: 3}}
        """
    )
    svc = sup["svc"]
    await until_changed(svc, lambda r: r.state is State.STOPPING)  # the probe's clock only
    # No WATCHDOG=1: checks at 0 (within the first period), 2, 4 and 6 fail.
    assert times(svc, State.STOPPING)[0] - times(svc, State.RUNNING)[0] == 6
    assert svc.reason == "liveness probe failed: no WATCHDOG=1 for 6.0s (every 2s due)"
    assert usec.read_text() == "2000000\n"


async def test_watchdog_messages_keep_a_service_alive(supervise: Any, tmp_path: Path) -> None:
    # Real time: 30 WATCHDOG=1 0.1 s apart keep a 2 s period alive ~3 s; then silence kills.
    done = tmp_path / "done"
    argv = child_cmd("--watchdog", "30", "--done-file", str(done))
    sup = await supervise(
        f"""
        services:
          svc:
            command: {cmd(argv)}
            livenessProbe: {{notify: {{}}, periodSeconds: 2, failureThreshold: 3}}
            restartPolicy: Never
        """
    )
    svc = sup["svc"]
    with trio.fail_after(120):
        await until(svc, lambda r: r.state is State.STOPPING)
    assert done.exists()  # every WATCHDOG=1 was sent before the kill
    assert svc.reason.startswith("liveness probe failed: no WATCHDOG=1 for ")


# --- s6's notification-fd ---------------------------------------------------------


async def test_notification_fd_newline_means_ready(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.01; done; printf 'up\\n' >&4; exec sleep 1000"
    sup = await supervise(
        f"""
        services:
          svc:
            command: ["sh", "-c", "{script}"]
            notificationFd: 4
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.state is State.RUNNING)
    await trio.sleep(100)
    assert not svc.ready
    assert svc.reason == "waiting for a newline on notification fd 4"
    go.touch()
    await until(svc, lambda r: r.ready)
    assert svc.reason == "ready (newline on notification fd 4)"


async def test_notification_fd_closed_without_a_newline(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          svc:
            command: ["sh", "-c", "printf partial >&3; exec 3>&-; exec sleep 1000"]
            notificationFd: 3
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.reason.startswith("closed"))
    assert not svc.ready
    assert svc.reason == "closed notification fd 3 without a newline"


async def test_the_notification_fd_is_where_asked_and_stdin_stays_dev_null(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    out = tmp_path / "fds"
    sup = await supervise(
        f"""
        services:
          svc:
            command: ["sh", "-c", "ls /proc/self/fd > {out}; readlink /proc/self/fd/0 >> {out}; exec sleep 1000"]
            notificationFd: 5
        """
    )
    await eventually(lambda: out.exists() and out.read_text().endswith("\n"))
    fds = out.read_text().split()
    assert "5" in fds and "/dev/null" in fds
    assert not sup["svc"].ready


# --- the listener alone -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (b"READY=1", {"READY": "1"}),
        (b"READY=1\nSTATUS=a=b\n", {"READY": "1", "STATUS": "a=b"}),
        (b"STATUS=one\nSTATUS=two", {"STATUS": "two"}),
        (b"MAINPID=42\nX_UNKNOWN=1", {"MAINPID": "42", "X_UNKNOWN": "1"}),
        (b"", None),
        (b"\n\n", None),
        (b"READY", None),
        (b"READY=1\ngarbage", None),
        (b"=1", None),
        (b"READY=1\0", None),
        (b"STATUS=\xff\xfe", None),
    ],
)
def test_parse(data: bytes, fields: dict[str, str] | None) -> None:
    assert parse(data) == fields


async def test_a_flood_budget_refills_at_the_rate(autojump_clock: trio.abc.Clock) -> None:
    notes = Notifications("svc")
    assert all(notes.admit() for _ in range(notify.BURST))
    assert not notes.admit() and notes.dropped == 1
    await trio.sleep(1.0)
    assert sum(notes.admit() for _ in range(100)) == notify.RATE
    assert notes.dropped == 1 + 100 - notify.RATE


async def test_passed_descriptors_are_closed(listener: NotifyListener) -> None:
    r, w = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]).tobytes())]
        sock.sendmsg([b"FDSTORE=1"], rights, 0, "\0" + listener.address[1:])
    os.close(w)
    await eventually(lambda: listener.dropped["unknown-sender"] == 1)
    with trio.fail_after(10):
        # The listener closed its copy of the write end: the pipe reads EOF.
        assert await trio.to_thread.run_sync(os.read, r, 1) == b""
    os.close(r)


async def test_a_process_in_the_services_cgroup_or_below_is_the_services(tmp_path: Path) -> None:
    # A stand-in procfs says where "pid" 4242 is; its process group is not the service's.
    mount, proc = tmp_path / "cgroup", tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    listener = NotifyListener(structlog.get_logger(), cgroup_mount=mount, proc=proc)
    notes = Notifications("svc")
    service = mount / "k4sinit" / "services" / "svc"
    with listener.attach(notes, 1 << 22, service):  # a main pid that is not 4242
        for where, owner in (
            ("/k4sinit/services/svc", notes),
            ("/k4sinit/services/svc/worker", notes),
            ("/k4sinit/services/other", None),
            ("/", None),
        ):
            (proc / "4242" / "cgroup").write_text(f"1:cpu:/\n0::{where}\n")
            assert listener.owner(4242) is owner, where
    (proc / "4242" / "cgroup").write_text("0::/k4sinit/services/svc\n")
    assert listener.owner(4242) is None  # detached
