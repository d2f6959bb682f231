"""The ``k4sinit`` command line against a real daemon (``k4sinit run`` in a subprocess)."""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k4sinit import __version__
from k4sinit.cli.format import format_tokens
from k4sinit.cli.parser import build_parser, duration
from k4sinit.node.tokens import TokenJSON
from tests.conftest import (
    DaemonProcess,
    child_cmd,
    pid_alive,
    services_config,
    state_events,
    wait_until,
)

STATES = {"waiting", "starting", "running", "stopping", "stopped", "backoff", "failed", "completed"}
SLEEPER = {"command": child_cmd()}  # runs until stopped
ONESHOT = {"command": ["true"], "restartPolicy": "Never"}  # completes at once


def k4sinit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m k4sinit ARGS`` with no implicit socket."""
    return subprocess.run(
        [sys.executable, "-m", "k4sinit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def up(service: dict[str, Any]) -> bool:
    return service["state"] == "running" and service["ready"] is True


def all_up(*names: str) -> Any:
    return lambda s: all(up(s[name]) for name in names)


def log_lines(daemon: DaemonProcess, name: str, lines: int = 200) -> list[str]:
    """``logs NAME -n LINES``, each line without its ``stream[pid]: `` prefix."""
    out = daemon.cli("logs", name, "-n", str(lines))
    assert out.returncode == 0, out.stderr
    return [line.split(": ", 1)[1] for line in out.stdout.splitlines()]


# --- check and run with a config ------------------------------------------------

BROKEN = """\
services:
  containerd:
    command: [sleep, "100"]
  kubelet:
    command: [sh, -c, 'touch {marker}']
    dependsOn: [containrd]
  a:
    command: [sleep, "1"]
    dependsOn: [b]
  b:
    command: [sleep, "1"]
    dependsOn: [a]
  c:
    comand: [sleep, "1"]
"""


def test_check_valid_config_exits_0_and_says_valid(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(services_config({"a": SLEEPER, "b": ONESHOT}))
    out = k4sinit("check", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout


def test_check_expands_the_node_profile_as_run_does(tmp_path: Path) -> None:
    """A config whose own service breaks a role's dependency passed ``check`` and
    failed at ``run``: check now expands the roles too."""
    config = tmp_path / "node.yaml"
    config.write_text(
        "node:\n"
        "  profile: single\n"
        "  roles:\n"
        "    images: {disabled: true}\n"
        "services:\n"
        "  images:\n"
        '    command: ["sleep", "1000"]\n'
    )
    out = k4sinit("check", "--config", str(config))
    assert out.returncode == 1, out.stdout
    assert (
        f"{config}:1: service 'kubelet', field dependsOn.images: condition Completed" in out.stderr
    )


def test_check_broken_config_lists_every_error_with_line_and_hint(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(BROKEN.format(marker=tmp_path / "marker"))
    out = k4sinit("check", "--config", str(config))
    assert out.returncode == 1
    assert "valid" not in out.stdout
    expected = [
        f"{config}:6: service 'kubelet', field dependsOn[0]: unknown service 'containrd'"
        " in dependsOn, did you mean 'containerd'?",
        f"{config}:7: service 'a': dependency cycle: a -> b -> a",
        f"{config}:14: service 'c', field comand: unknown key 'comand', did you mean 'command'?",
    ]
    for error in expected:
        assert error in out.stderr.splitlines()


def test_run_with_broken_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    marker = tmp_path / "marker"
    config.write_text(BROKEN.format(marker=marker))
    sock = tmp_path / "k.sock"
    out = k4sinit("run", "--config", str(config), "--socket", str(sock))
    assert out.returncode == 2
    assert "did you mean 'containerd'?" in out.stderr
    assert not marker.exists()
    assert not sock.exists()


# --- status -------------------------------------------------------------------------


def test_status_table_has_header_and_rows_in_dependency_order(start_daemon: Any) -> None:
    # web is listed before the db it depends on
    d = start_daemon(
        services_config({"web": {**SLEEPER, "dependsOn": ["db"]}, "db": SLEEPER, "tool": ONESHOT})
    )
    d.wait_for(lambda s: up(s["web"]) and s["tool"]["state"] == "completed")
    out = d.cli("status")
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "SERVICE",
        "STATE",
        "READY",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST",
        "EXIT",
        "REASON",
    ]
    assert "LAST EXIT" in lines[0]
    names = [line.split()[0] for line in lines[1:-3]]
    assert names.index("db") < names.index("web")
    assert sorted(names) == ["db", "tool", "web"]
    assert lines[-3] == "network: ready"  # no network configured: loopback only
    assert re.fullmatch(
        rf"k4sinit {re.escape(__version__)}: pid {d.proc.pid}, up \d+s, \d+\.\d MiB resident",
        lines[-2],
    ), lines[-2]
    assert re.fullmatch(
        r"memory: \d+\.\d\d GiB in use of \d+\.\d\d GiB \(MemTotal - MemAvailable\)", lines[-1]
    ), lines[-1]


def test_status_exits_0_when_everything_is_up_or_completed(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": SLEEPER, "once": ONESHOT}))
    d.wait_for(lambda s: up(s["a"]) and s["once"]["state"] == "completed")
    assert d.cli("status").returncode == 0
    assert d.cli("status", "--json").returncode == 0


def test_status_exits_1_when_a_service_failed(start_daemon: Any) -> None:
    d = start_daemon(
        services_config(
            {"a": SLEEPER, "bad": {"command": ["sh", "-c", "exit 1"], "restartPolicy": "Never"}}
        )
    )
    d.wait_for(lambda s: up(s["a"]) and s["bad"]["state"] == "failed")
    assert d.cli("status").returncode == 1


def test_status_exits_1_when_a_service_is_waiting(start_daemon: Any, tmp_path: Path) -> None:
    never_ready = {**SLEEPER, "readinessProbe": {"file": {"path": str(tmp_path / "nope")}}}
    d = start_daemon(
        services_config({"db": never_ready, "web": {**SLEEPER, "dependsOn": {"db": "Ready"}}})
    )
    d.wait_for(lambda s: s["web"]["state"] == "waiting" and s["db"]["state"] == "running")
    assert d.cli("status").returncode == 1


def test_status_json_fields_and_types(start_daemon: Any) -> None:
    d = start_daemon(
        services_config(
            {
                "a": SLEEPER,
                "bad": {"command": ["sh", "-c", "exit 3"], "restartPolicy": "Never"},
                "blocked": {**SLEEPER, "dependsOn": {"bad": "Completed"}},
            }
        )
    )
    d.wait_for(lambda s: up(s["a"]) and s["bad"]["state"] == "failed")
    out = d.cli("status", "--json")
    data = json.loads(out.stdout)
    assert {"daemon", "services", "network", "pki", "preflight"} <= set(data)
    daemon = data["daemon"]
    assert daemon["pid"] == d.proc.pid and daemon["version"] == __version__
    # Its own resident memory, as the kernel counts it (within what can change meanwhile).
    rss_kib = int(Path(f"/proc/{d.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
    assert abs(daemon["rss_bytes"] - rss_kib * 1024) < 16 << 20
    assert daemon["uptime"] > 0
    assert data["pki"] == {"ready": True, "reason": "no node profile: no PKI to make"}
    assert data["preflight"] is None
    assert data["network"]["ready"] is True and data["network"]["source"] == "none"
    services = {s["name"]: s for s in data["services"]}
    assert list(services) == ["a", "bad", "blocked"]
    for s in services.values():
        assert s["state"] in STATES
        assert type(s["ready"]) is bool
        assert s["pid"] is None or type(s["pid"]) is int
        assert type(s["restarts"]) is int
        assert type(s["since"]) in (int, float)
        assert s["last_exit"] is None or isinstance(s["last_exit"], dict)
    a, bad, blocked = services["a"], services["bad"], services["blocked"]
    assert (a["state"], a["ready"], a["last_exit"], a["restarts"]) == ("running", True, None, 0)
    assert pid_alive(a["pid"])
    assert (bad["state"], bad["pid"], bad["last_exit"]) == ("failed", None, {"code": 3})
    assert (blocked["state"], blocked["pid"]) == ("waiting", None)


def test_status_name_shows_command_events_and_output(start_daemon: Any, tmp_path: Path) -> None:
    never_ready = {
        "command": child_cmd("--print", "10"),
        "readinessProbe": {"file": {"path": str(tmp_path / "nope")}, "periodSeconds": 0.2},
    }
    d = start_daemon(
        services_config({"db": never_ready, "web": {**SLEEPER, "dependsOn": {"db": "Ready"}}})
    )
    d.wait_for(lambda s: s["web"]["state"] == "waiting")
    wait_until(lambda: "line 9" in log_lines(d, "db"), what="db's output")

    web = d.cli("status", "web")
    assert web.returncode == 1  # waiting is not healthy
    assert "web: waiting" in web.stdout
    assert re.search(rf"command: +{re.escape(' '.join(child_cmd()))}", web.stdout)
    assert "waiting for db: not ready" in web.stdout
    assert re.search(r"depends on: +db \(Ready\)", web.stdout)

    db = d.cli("status", "db")
    assert "readiness probe:" in db.stdout
    output = db.stdout.split("last output:")[1]
    assert re.search(r"stdout\[\d+\]: line 9$", output, re.MULTILINE)


def test_status_of_unknown_service_exits_1(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": SLEEPER}))
    out = d.cli("status", "nope")
    assert out.returncode == 1
    assert "unknown service 'nope'" in out.stderr
    assert out.stdout == ""


def test_status_pki_shows_the_built_in_condition(start_daemon: Any) -> None:
    """Issue 12: it answered "unknown service 'pki'"; `status network` always worked."""
    d = start_daemon(services_config({"a": SLEEPER}))
    out = d.cli("status", "pki")
    assert (out.returncode, out.stdout) == (0, "pki: ready (no node profile: no PKI to make)\n")
    assert json.loads(d.cli("status", "pki", "--json").stdout) == {
        "pki": {"ready": True, "reason": "no node profile: no PKI to make"}
    }


# --- logs -----------------------------------------------------------------------------


def test_logs_n_prints_exactly_the_last_lines(start_daemon: Any) -> None:
    d = start_daemon(services_config({"talker": {"command": child_cmd("--print", "10")}}))
    wait_until(lambda: "line 9" in log_lines(d, "talker"), what="10 lines")
    out = d.cli("logs", "talker", "-n", "3")
    pid = d.status()["talker"]["pid"]
    assert out.stdout.splitlines() == [f"stdout[{pid}]: line {i}" for i in (7, 8, 9)]


def test_logs_escape_terminal_control_characters(start_daemon: Any) -> None:
    """A service cannot steer the operator's terminal (colours, title, cursor, bell)."""
    script = (
        r"printf 'red \033[31mX\033[0m title \033]0;pwned\007 c1 \302\233 end\n'; exec sleep 1000"
    )
    d = start_daemon(services_config({"esc": {"command": ["sh", "-c", script]}}))
    wait_until(lambda: d.cli("logs", "esc").stdout, what="the line")
    out = d.cli("logs", "esc")
    pid = d.status()["esc"]["pid"]
    assert out.stdout == (
        f"stdout[{pid}]: red \\x1b[31mX\\x1b[0m title \\x1b]0;pwned\\x07 c1 \\x9b end\n"
    )
    detail = d.cli("status", "esc").stdout
    assert "\x1b" not in detail and "red \\x1b[31mX" in detail


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from ``proc``'s stdout within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line within {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"logs -f ended early (got {data!r})")
        data += chunk
    return data.decode()


def test_logs_follow_prints_new_lines_and_daemon_survives_client_kill(
    start_daemon: Any,
) -> None:
    ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    d = start_daemon(services_config({"ticker": {"command": ["sh", "-c", ticker]}}))
    d.wait_for(all_up("ticker"))
    # -n 0: no backlog, so every line printed was produced after the subscription
    cmd = [sys.executable, "-m", "k4sinit", "logs", "--socket", str(d.socket)]
    follower = subprocess.Popen([*cmd, "ticker", "-n", "0", "-f"], stdout=subprocess.PIPE)
    assert follower.stdout is not None
    try:
        first = read_line(follower, 15)
        second = read_line(follower, 15)
    finally:
        os.kill(follower.pid, signal.SIGKILL)
        follower.wait()
        follower.stdout.close()
    assert re.fullmatch(r"stdout\[\d+\]: tick \d+\n", first)
    n1, n2 = (int(line.split()[-1]) for line in (first, second))
    assert n2 == n1 + 1
    # the daemon notices the dead follower and keeps serving
    assert up(d.status()["ticker"])
    wait_until(lambda: int(log_lines(d, "ticker", 1)[0].split()[-1]) > n2 + 2, what="more ticks")
    assert d.cli("status").returncode == 0


# --- operator commands ------------------------------------------------------------


def test_stop_then_start_a_service_leaves_its_dependent_alone(start_daemon: Any) -> None:
    d = start_daemon(services_config({"db": SLEEPER, "web": {**SLEEPER, "dependsOn": ["db"]}}))
    before = d.wait_for(all_up("db", "web"))
    out = d.cli("stop", "db")
    assert out.returncode == 0, out.stderr
    after = d.status()
    assert (after["db"]["state"], after["db"]["pid"]) == ("stopped", None)
    assert not pid_alive(before["db"]["pid"])
    assert after["web"]["pid"] == before["web"]["pid"] and up(after["web"])

    assert d.cli("start", "db").returncode == 0
    again = d.wait_for(all_up("db"))
    assert again["db"]["pid"] not in (None, before["db"]["pid"])
    assert again["db"]["restarts"] == 0
    assert again["web"]["pid"] == before["web"]["pid"]


def test_restart_gives_a_new_pid_and_leaves_dependents_alone(start_daemon: Any) -> None:
    d = start_daemon(services_config({"db": SLEEPER, "web": {**SLEEPER, "dependsOn": ["db"]}}))
    before = d.wait_for(all_up("db", "web"))
    out = d.cli("restart", "db")
    assert out.returncode == 0, out.stderr
    after = d.wait_for(lambda s: up(s["db"]) and s["db"]["pid"] != before["db"]["pid"])
    assert not pid_alive(before["db"]["pid"])
    # restarts counts restarts by policy, not an operator's
    assert after["db"]["restarts"] == 0
    assert after["web"]["pid"] == before["web"]["pid"]
    assert (after["web"]["restarts"], up(after["web"])) == (0, True)


def test_kill_signals_the_main_process_and_the_policy_restarts_it(start_daemon: Any) -> None:
    d = start_daemon(services_config({"db": SLEEPER, "web": {**SLEEPER, "dependsOn": ["db"]}}))
    before = d.wait_for(all_up("db", "web"))
    out = d.cli("kill", "db", "-s", "KILL")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"db: sent SIGKILL to pid {before['db']['pid']}"
    after = d.wait_for(lambda s: up(s["db"]) and s["db"]["pid"] != before["db"]["pid"])
    assert after["db"]["restarts"] == 1  # a death by signal is the policy's business
    assert after["db"]["last_exit"]["signal"] == "SIGKILL"
    assert after["web"]["pid"] == before["web"]["pid"]


def test_kill_refuses_an_unknown_signal_and_a_service_without_a_process(
    start_daemon: Any,
) -> None:
    d = start_daemon(
        services_config({"db": SLEEPER, "once": {"command": ["true"], "restartPolicy": "Never"}})
    )
    before = d.wait_for(lambda s: up(s["db"]) and s["once"]["state"] == "completed")
    out = d.cli("kill", "db", "-s", "NOSUCH")
    assert (out.returncode, out.stderr.strip()) == (
        1,
        "k4sinit: unknown signal 'NOSUCH'; e.g. TERM, KILL, HUP",
    )
    out = d.cli("kill", "once")
    assert out.returncode == 1 and "once has no running process (completed)" in out.stderr
    assert d.status()["db"]["pid"] == before["db"]["pid"]


# --- supervision ------------------------------------------------------------------


def test_dependent_starts_only_after_its_dependency_is_ready(
    start_daemon: Any, tmp_path: Path
) -> None:
    ready_file = tmp_path / "db-ready"
    db = {
        **SLEEPER,
        "readinessProbe": {"file": {"path": str(ready_file)}, "periodSeconds": 0.1},
    }
    d = start_daemon(services_config({"db": db, "app": {**SLEEPER, "dependsOn": {"db": "Ready"}}}))
    waiting = d.wait_for(lambda s: s["db"]["state"] == "running")
    assert waiting["app"]["state"] == "waiting"
    assert waiting["app"]["reason"] == "waiting for db: not ready"
    ready_file.write_text("ready")
    d.wait_for(all_up("db", "app"))

    def logged() -> list[dict[str, Any]]:
        events = state_events(d)
        return (
            events if any(e["service"] == "app" and e["state"] == "running" for e in events) else []
        )

    events = wait_until(logged, what="app's running event in the log")
    db_ready = next(i for i, e in enumerate(events) if e["service"] == "db" and e["ready"])
    app_running = next(
        i for i, e in enumerate(events) if e["service"] == "app" and e["state"] == "running"
    )
    assert db_ready < app_running
    assert events[db_ready]["timestamp"] <= events[app_running]["timestamp"]


def test_killed_service_is_restarted_and_others_keep_their_pids(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": SLEEPER, "b": SLEEPER}))
    before = d.wait_for(all_up("a", "b"))
    os.kill(before["a"]["pid"], signal.SIGKILL)
    after = d.wait_for(
        lambda s: up(s["a"]) and s["a"]["pid"] != before["a"]["pid"], what="a restarted"
    )
    assert after["a"]["restarts"] == 1
    assert after["a"]["last_exit"] == {"signal": "SIGKILL"}
    assert after["b"]["pid"] == before["b"]["pid"]
    assert (after["b"]["restarts"], after["b"]["last_exit"]) == (0, None)


def test_crash_loop_ends_failed_after_backoff_delays(start_daemon: Any) -> None:
    backoff = {"initialSeconds": 0.2, "multiplier": 2, "jitter": 0, "crashLoopLimit": 4}
    d = start_daemon(
        services_config(
            {"loop": {"command": ["sh", "-c", "exit 3"], "restartBackoff": backoff}, "a": SLEEPER}
        )
    )
    s = d.wait_for(lambda s: s["loop"]["state"] == "failed", what="loop failed")
    assert "crash loop" in s["loop"]["reason"]
    assert s["loop"]["restarts"] == 3
    assert s["loop"]["last_exit"] == {"code": 3}
    delays = [
        float(m.group(1))
        for e in state_events(d, "loop")
        if e["state"] == "backoff" and (m := re.search(r"restarting in ([\d.]+)s", e["reason"]))
    ]
    assert delays == [0.0, 0.2, 0.4]


def test_stop_escalates_to_sigkill_after_grace_period(start_daemon: Any, tmp_path: Path) -> None:
    ready = tmp_path / "stubborn-ready"  # written once SIGTERM is ignored
    stubborn = {
        "command": child_cmd("--ignore-term", "--ready-file", str(ready)),
        "readinessProbe": {"file": {"path": str(ready)}, "periodSeconds": 0.1},
        "terminationGracePeriodSeconds": 1,
    }
    d = start_daemon(services_config({"stubborn": stubborn}))
    pid = d.wait_for(all_up("stubborn"))["stubborn"]["pid"]
    out = d.cli("stop", "stubborn")
    assert out.returncode == 0, out.stderr
    s = d.status()["stubborn"]
    assert s["state"] == "stopped"
    assert s["last_exit"] == {"signal": "SIGKILL"}
    assert not pid_alive(pid)


def test_stop_kills_a_double_forked_grandchild(start_daemon: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    d = start_daemon(
        services_config({"forker": {"command": child_cmd("--grandchild", str(pid_file))}})
    )
    grandchild = int(
        wait_until(lambda: pid_file.read_text() if pid_file.exists() else None, what="pid")
    )
    assert pid_alive(grandchild)
    assert d.cli("stop", "forker").returncode == 0
    wait_until(lambda: not pid_alive(grandchild), timeout=5, what="grandchild gone")


def test_output_without_newlines_is_cut_and_does_not_stall_the_daemon(
    start_daemon: Any,
) -> None:
    other = {
        **SLEEPER,
        "readinessProbe": {
            "exec": {"command": ["true"]},
            "periodSeconds": 0.2,
            "timeoutSeconds": 2,
            "failureThreshold": 1,
        },
    }
    spew = {"command": child_cmd("--spew", "5000000", "--stderr", "spew done", "--sleep", "100")}
    d = start_daemon(services_config({"other": other, "spew": spew}))

    def spewed() -> bool:
        out = d.cli("status", "--json")  # must answer while the output pours in
        assert out.returncode == 0, out.stderr
        return "spew done" in log_lines(d, "spew")

    wait_until(spewed, what="the spewing service to finish writing")
    lines = [line for line in log_lines(d, "spew") if line != "spew done"]
    assert lines and all(len(line) <= 8192 for line in lines)
    assert "x" * 8192 in lines
    s = d.wait_for(lambda s: up(s["other"]))
    assert s["spew"]["state"] == "running"
    # other became ready once and never lost it
    readiness = [
        e["ready"] for e in json.loads(d.cli("status", "other", "--json").stdout)["events"]
    ]
    assert readiness[-1] is True
    assert False not in readiness[readiness.index(True) :]


# --- stopping the daemon -----------------------------------------------------------

CHAIN = {"a": SLEEPER, "b": {**SLEEPER, "dependsOn": ["a"]}, "c": {**SLEEPER, "dependsOn": ["b"]}}


def assert_stopped_in_reverse_order(d: DaemonProcess) -> None:
    order = [
        (e["service"], e["state"]) for e in state_events(d) if e["state"] in ("stopping", "stopped")
    ]
    index = {event: i for i, event in enumerate(order)}
    assert (
        index["c", "stopping"]
        < index["c", "stopped"]
        < index["b", "stopping"]
        < index["b", "stopped"]
        < index["a", "stopping"]
        < index["a", "stopped"]
    ), order


def test_stop_all_prints_the_table_and_ends_the_daemon(start_daemon: Any) -> None:
    d = start_daemon(services_config(CHAIN))
    before = d.wait_for(all_up("a", "b", "c"))
    out = d.cli("stop", "--all")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("SERVICE")
    assert [line.split()[:2] for line in lines[1:]] == [[n, "stopped"] for n in "abc"]
    assert d.proc.wait(timeout=30) == 0
    assert_stopped_in_reverse_order(d)
    assert not any(pid_alive(before[n]["pid"]) for n in "abc")
    assert not d.socket.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_everything_in_reverse_order(start_daemon: Any, signum: int) -> None:
    d = start_daemon(services_config(CHAIN))
    before = d.wait_for(all_up("a", "b", "c"))
    d.proc.send_signal(signum)
    assert d.proc.wait(timeout=30) == 0
    assert_stopped_in_reverse_order(d)
    assert not any(pid_alive(before[n]["pid"]) for n in "abc")


# --- finding the socket -------------------------------------------------------------


def test_client_uses_k4sinit_socket_env_without_socket_option(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": SLEEPER}))
    d.wait_for(all_up("a"))
    out = k4sinit("status", "--json", env={**os.environ, "K4SINIT_SOCKET": str(d.socket)})
    assert out.returncode == 0, out.stderr
    assert [s["name"] for s in json.loads(out.stdout)["services"]] == ["a"]


def test_missing_socket_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    out = k4sinit("status", env={**os.environ, "K4SINIT_SOCKET": str(missing)})
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert f"no k4sinit control socket at {missing}" in out.stderr


# --- token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("90", 90), ("0", 0)],
)
def test_token_ttls_are_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "h", "30m1h", "-1h"])
def test_a_ttl_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration like 30m"):
        duration(text)


def test_token_takes_its_socket_before_or_after_the_action() -> None:
    parser = build_parser()
    for argv in (
        ["token", "--socket", "/s", "create", "--ttl", "2h"],
        ["token", "create", "--ttl", "2h", "--socket", "/s"],
    ):
        args = parser.parse_args(argv)
        assert (args.socket, args.token_command, args.ttl, args.server) == (
            "/s",
            "create",
            7200,
            None,
        )
    args = parser.parse_args(["token", "revoke", "abcdef"])
    assert (args.socket, args.token_command, args.id) == (None, "revoke", "abcdef")


def test_token_list_shows_each_tokens_time_left() -> None:
    now = calendar.timegm((2026, 5, 1, 12, 0, 0))
    tokens: list[TokenJSON] = [
        {
            "id": "abcdef",
            "expires": "2026-05-02T12:00:00Z",
            "usages": ["authentication", "signing"],
            "groups": ["system:bootstrappers:k4sinit:default-node-token"],
            "description": "k4sinit: joins a worker node",
        },
        {"id": "zzzzzz", "expires": None, "usages": [], "groups": [], "description": ""},
        {
            "id": "old000",
            "expires": "2026-05-01T11:00:00Z",
            "usages": [],
            "groups": [],
            "description": "",
        },
    ]
    table = format_tokens(tokens, now).splitlines()
    assert table[0].split() == ["ID", "TTL", "EXPIRES", "USAGES", "GROUPS", "DESCRIPTION"]
    assert table[1].split()[:5] == [
        "abcdef",
        "1d00h",
        "2026-05-02T12:00:00Z",
        "authentication,signing",
        "system:bootstrappers:k4sinit:default-node-token",
    ]
    assert table[2].split() == ["zzzzzz", "forever", "never", "-", "-"]
    assert table[3].split()[:2] == ["old000", "expired"]


def test_token_on_a_node_without_roles_is_a_one_line_error(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": SLEEPER}))
    d.wait_for(all_up("a"))
    out = d.cli("token", "create")
    assert out.returncode == 1
    assert out.stderr == "k4sinit: token: this node runs no Kubernetes roles (no node: section)\n"


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    # ``k4sinit config ... | true``: the reader is gone before the first write.
    config = Path(__file__).resolve().parent.parent / "etc/k4sinit/single.yaml"
    proc = subprocess.run(
        f"{sys.executable} -m k4sinit config --config {config} | true",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
