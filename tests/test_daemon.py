"""The composition root (k4sinit/daemon/root.py): what run, init and dev each get.

Each entry point's Options, the plan (the node's roles expanded), the order in
which prepare() readies the machine (cgroups, preflight, node files, image
info), and a daemon composed and served for real in trio, asked over its
control handler. The cgroup2 hierarchy is a directory tree standing in for
cgroupfs (this host binds its controllers to cgroup v1); nothing is spawned
with it. PID 1's own life (init_main) is tests/test_boot.py's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from k4sinit.config import load_config_text
from k4sinit.control.port import PORT_NAME
from k4sinit.control.wire import DEFAULT_SOCKET, Op, Request, StatusReply
from k4sinit.core import cmdline
from k4sinit.core.netspec import NetworkSpec
from k4sinit.daemon import INIT_SIGNALS, RUN_SIGNALS, Daemon, root
from k4sinit.daemon.root import EtcFiles, Options
from k4sinit.node import roles
from k4sinit.pid1.boot import BootError
from k4sinit.pid1.power import Action
from k4sinit.supervision import escapees
from k4sinit.supervision.cgroups import own_cgroup

from .conftest import pid_alive, wait_until


class Recorder:
    """A stand-in for the structlog logger: records each event in order, and whether
    the node's first file existed at that moment."""

    def __init__(self, watched: Path | None = None) -> None:
        self.watched = watched
        self.events: list[tuple[str, dict[str, Any], bool]] = []

    def _record(self, event: str, **fields: Any) -> None:
        seen = self.watched is not None and self.watched.exists()
        self.events.append((event, fields, seen))

    debug = info = warning = error = exception = _record

    def bind(self, **_: Any) -> Recorder:
        return self

    def names(self) -> list[str]:
        return [event for event, _, _ in self.events]

    def index(self, prefix: str) -> int:
        return next(i for i, name in enumerate(self.names()) if name.startswith(prefix))


def controller(tmp_path: Path) -> str:
    """A controller profile whose data lives under ``tmp_path`` and whose binaries are
    nowhere (preflight fails fatally: the role binaries are not found)."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    return (
        f"node: {{profile: controller, name: n1, dataDir: {tmp_path}/data, "
        f"binPath: [{tmp_path}/bin]}}\n"
    )


def cgroup_tree(tmp_path: Path) -> Path:
    """A directory tree shaped like a cgroup2 mount, this process's cgroup in it."""
    mount = tmp_path / "cgroup"
    base = mount / own_cgroup().lstrip("/")
    base.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("")
    return mount


def image_json(tmp_path: Path) -> str:
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"versions": {"kubernetes": "v1.37.2"}}))
    return str(path)


# --- what each entry point asks for ----------------------------------------------------


def test_run_asks_for_a_subreaper_on_this_machine(tmp_path: Path) -> None:
    options = Options.run(str(tmp_path / "sock"))
    assert options.socket == str(tmp_path / "sock")
    assert options.signals == RUN_SIGNALS and not options.power
    assert options.reload_signals == (signal.SIGHUP,) and signal.SIGHUP not in RUN_SIGNALS
    assert options.cgroups and options.control_port is None
    assert options.etc_files is EtcFiles.IF_CONFIGURED
    assert not options.dhcp_hostname and not options.preflight_stops_boot
    assert (options.role, options.hostname) == (None, None)
    assert not Options.run(None, cgroups=False).cgroups


def test_init_asks_for_power_the_control_port_and_the_kernels_choices() -> None:
    kernel = cmdline.parse("k4sinit.role=worker k4sinit.hostname=node-7")
    options = Options.init(None, kernel, container=False, named=False)
    assert options.signals == INIT_SIGNALS and options.power
    assert options.reload_signals == ()  # SIGHUP keeps its meaning: reload by request only
    assert options.cgroups and options.control_port == PORT_NAME
    assert options.etc_files is EtcFiles.ALWAYS
    assert options.dhcp_hostname and options.preflight_stops_boot
    assert (options.role, options.hostname) == ("worker", "node-7")


def test_dev_is_init_in_a_container_without_the_port_or_the_hosts_etc() -> None:
    options = Options.init("/run/x.sock", cmdline.parse(""), container=True, named=True)
    assert options.socket == "/run/x.sock"
    assert options.power and options.signals == INIT_SIGNALS and options.cgroups
    assert options.control_port is None
    assert options.etc_files is EtcFiles.NEVER
    assert not options.dhcp_hostname


def test_the_socket_comes_from_the_environment_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("K4SINIT_SOCKET", raising=False)
    assert Options.run(None).socket == DEFAULT_SOCKET
    monkeypatch.setenv("K4SINIT_SOCKET", "/run/elsewhere.sock")
    assert Options.run(None).socket == "/run/elsewhere.sock"
    assert Options.run("/run/given.sock").socket == "/run/given.sock"


@pytest.mark.parametrize(
    ("etc", "configured", "written"),
    [
        (EtcFiles.ALWAYS, False, True),
        (EtcFiles.IF_CONFIGURED, False, False),
        (EtcFiles.IF_CONFIGURED, True, True),
        (EtcFiles.NEVER, True, False),
    ],
)
def test_etc_files_are_written_as_the_entry_point_asks(
    etc: EtcFiles, configured: bool, written: bool
) -> None:
    text = "services: {}\n"
    if configured:
        text += "network: {interfaces: [{name: eth0, dhcp: true}]}\n"
    network = load_config_text(text, "t.yaml").network
    assert network.configured is configured
    assert root.writes_etc_files(etc, network) is written


# --- plan: the node's roles, expanded once ----------------------------------------------


def test_plan_expands_the_roles_and_keeps_their_settings(tmp_path: Path) -> None:
    config = load_config_text(controller(tmp_path), "t.yaml")
    plan = root.plan(config, Options.run(None))
    assert plan.node is not None and plan.node.name == "n1"
    assert set(plan.node.roles) <= set(plan.config.services)
    assert "kube-apiserver" in plan.config.services
    assert plan.network is plan.config.network


def test_plan_takes_the_kernels_role_and_the_network_it_is_given() -> None:
    config = load_config_text("hostname: n2\nservices: {}\n", "t.yaml")
    assert root.plan(config, Options.run(None)).node is None
    kernel = cmdline.parse("k4sinit.role=controller")
    options = Options.init(None, kernel, container=True, named=True)
    network = NetworkSpec()
    plan = root.plan(config, options, network)
    assert plan.node is not None and plan.node.profile.value == "controller"
    assert plan.network is network


def test_plan_gives_a_worker_the_kernels_join_token() -> None:
    token = f"K4S1::https://10.0.0.1:6443::sha256:{'ab' * 32}::abcdef.0123456789abcdef"
    kernel = cmdline.parse(f"k4sinit.role=worker k4sinit.token={token}")
    options = Options.init(None, kernel, container=True, named=True)
    assert options.token is not None and str(options.token) == token
    config = load_config_text("hostname: w1\nservices: {}\n", "t.yaml")
    plan = root.plan(config, options)
    assert plan.node is not None and str(plan.node.join_token) == token


# --- prepare: cgroups, then preflight, then the node's files ------------------------------


def test_prepare_writes_the_node_files_after_the_cgroups_and_preflight(tmp_path: Path) -> None:
    config = load_config_text(controller(tmp_path), "t.yaml")
    mount = cgroup_tree(tmp_path)
    options = Options(
        socket=str(tmp_path / "sock"), cgroup_mount=mount, image_path=image_json(tmp_path)
    )
    plan = root.plan(config, options)
    assert plan.node is not None
    first_file = Path(sorted(roles.files(plan.node))[0])
    log = Recorder(watched=first_file)
    prepared = root.prepare(plan, options, log)
    assert prepared.cgroups is not None and prepared.cgroups.services.path.is_dir()
    cgroups, table, written = (
        log.index("cgroups ready"),
        log.index("preflight: "),
        log.index("written"),
    )
    assert cgroups < table < written
    assert not any(seen for _, _, seen in log.events[:written])  # no file before them
    assert first_file.exists()
    # Preflight ran (its fatal failures only logged: run does not enforce it) ...
    assert any(c.fatal for c in prepared.checks)
    # ... and the image's description is read for status.
    assert prepared.image is not None and prepared.image.versions == {"kubernetes": "v1.37.2"}


def test_a_fatal_preflight_stops_pid_1_before_any_node_file(tmp_path: Path) -> None:
    config = load_config_text(controller(tmp_path), "t.yaml")
    options = Options(socket=str(tmp_path / "sock"), cgroups=False, preflight_stops_boot=True)
    plan = root.plan(config, options)
    assert plan.node is not None
    with pytest.raises(
        BootError, match=r"^preflight failed: .*binary kube-apiserver: kube-apiserver: not found"
    ):
        root.prepare(plan, options, Recorder())
    assert not any(Path(p).exists() for p in roles.files(plan.node))


def test_boot_preflight_warn_lets_pid_1_start(tmp_path: Path) -> None:
    config = load_config_text(controller(tmp_path) + "boot: {preflight: warn}\n", "t.yaml")
    options = Options(socket=str(tmp_path / "sock"), cgroups=False, preflight_stops_boot=True)
    prepared = root.prepare(root.plan(config, options), options, Recorder())
    assert any(c.fatal for c in prepared.checks)


def test_without_a_node_prepare_checks_and_writes_nothing(tmp_path: Path) -> None:
    config = load_config_text("services: {a: {command: [sleep, '1000']}}\n", "t.yaml")
    options = Options(socket=str(tmp_path / "sock"), cgroups=False, image_path=str(tmp_path / "no"))
    log = Recorder()
    prepared = root.prepare(root.plan(config, options), options, log)
    assert (prepared.cgroups, prepared.checks, prepared.image) == (None, [], None)
    assert log.names() == []


# --- serve: the daemon composed and running -----------------------------------------------


async def status_of(daemon: Daemon) -> StatusReply:
    replies: list[dict[str, Any]] = []

    async def send(reply: dict[str, Any]) -> None:
        replies.append(reply)

    await daemon.handle(Request(Op.STATUS), send)
    result: StatusReply = replies[-1]["result"]
    return result


async def test_run_serves_preflight_and_the_image_in_status(tmp_path: Path) -> None:
    config = load_config_text(controller(tmp_path), "t.yaml")
    options = Options(socket=str(tmp_path / "sock"), cgroups=False, image_path=image_json(tmp_path))
    plan = root.plan(config, options)
    prepared = root.prepare(plan, options, Recorder())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(root.serve, prepared, options, Recorder())
            assert daemon.port_bridge is None and daemon.node == plan.node
            status = await status_of(daemon)
            assert status["image"] is not None
            assert status["image"]["versions"] == {"kubernetes": "v1.37.2"}
            assert status["preflight"] is not None and status["preflight"]["failed"] > 0
            daemon.request_shutdown("test")
    assert daemon.action is None
    assert not await trio.Path(options.socket).exists()


async def test_pid_1_ends_with_the_power_action_asked_for(tmp_path: Path) -> None:
    config = load_config_text("services: {}\n", "t.yaml")
    options = Options.init(str(tmp_path / "sock"), cmdline.parse(""), container=True, named=True)
    options = dataclasses.replace(options, cgroups=False)
    prepared = root.prepare(root.plan(config, options), options, Recorder())
    replies: list[dict[str, Any]] = []

    async def send(reply: dict[str, Any]) -> None:
        replies.append(reply)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(root.serve, prepared, options, Recorder())
            await daemon.handle(Request(Op.POWEROFF), send)
    assert replies == [{"ok": True, "result": {"services": []}}]
    assert daemon.action is Action.POWEROFF


def test_compose_gives_pid_1_of_a_node_its_control_port(tmp_path: Path) -> None:
    async def composed() -> Daemon:
        config = load_config_text("services: {}\n", "t.yaml")
        options = Options.init(
            str(tmp_path / "sock"), cmdline.parse(""), container=False, named=True
        )
        options = dataclasses.replace(options, cgroups=False)
        prepared = root.prepare(root.plan(config, options), options, Recorder())
        return root.compose(prepared, options, Recorder())  # built, not run

    daemon = trio.run(composed)
    assert daemon.port_bridge is not None


# --- run: never twice --------------------------------------------------------------------


def test_run_refuses_before_preparing_anything_while_an_earlier_runs_services_live(
    tmp_path: Path,
) -> None:
    socket = str(tmp_path / "sock")
    env = {**os.environ, escapees.DAEMON_ENV: socket, escapees.SERVICE_ENV: "web"}
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], env=env)
    try:
        wait_until(lambda: escapees.tagged(socket) != {}, what="the survivor's environment to show")
        config = load_config_text(controller(tmp_path), "t.yaml")
        options = Options(socket=socket, cgroups=False)
        plan = root.plan(config, options)
        assert plan.node is not None
        with pytest.raises(root.SurvivorsRunning) as caught:
            root.run(plan, options, Recorder())
        assert caught.value.found == {"web": [survivor.pid]}
        assert f"web (pid {survivor.pid})" in str(caught.value)
        assert not any(Path(p).exists() for p in roles.files(plan.node))
        assert pid_alive(survivor.pid)
    finally:
        survivor.send_signal(signal.SIGKILL)
        survivor.wait()
