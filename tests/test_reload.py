"""``k4sinit reload`` against a real daemon (``k4sinit run`` in a subprocess).

Each test starts a daemon, rewrites its config file and reloads; the pids
before and after say what was restarted and what was not. The plan itself
(which field does what) is tests/test_reload_plan.py's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from k4sinit.control.wire import Op, Request, RequestError
from tests.conftest import DaemonProcess, child_cmd, pid_alive, services_config, wait_until

SLEEPER = {"command": child_cmd()}


def base() -> dict[str, dict[str, Any]]:
    """db <- api <- web, all running until stopped; db ready by its probe."""
    return {
        "db": {**SLEEPER, "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0.2}},
        "api": {**SLEEPER, "dependsOn": {"db": "Ready"}},
        "web": {**SLEEPER, "dependsOn": {"api": "Started"}},
    }


def up(services: dict[str, dict[str, Any]], *names: str) -> bool:
    return all(
        services.get(n, {}).get("state") == "running" and services[n]["ready"] for n in names
    )


def started(
    start_daemon: Any, services: dict[str, dict[str, Any]]
) -> tuple[DaemonProcess, dict[str, int]]:
    """A daemon running ``services``, once all are up; and their pids."""
    daemon = start_daemon(services_config(services))
    status = daemon.wait_for(lambda s: up(s, *services), what="every service up")
    return daemon, {name: status[name]["pid"] for name in services}


def pids(daemon: DaemonProcess) -> dict[str, int | None]:
    return {name: s["pid"] for name, s in daemon.status().items()}


def rewrite(daemon: DaemonProcess, services: dict[str, dict[str, Any]], top: str = "") -> None:
    daemon.config.write_text(top + services_config(services) if not top else top + _yaml(services))


def _yaml(services: dict[str, dict[str, Any]]) -> str:
    """``services:`` as a YAML block after top-level keys (JSON is YAML, per value)."""
    lines = ["services:"]
    lines += [f"  {name}: {json.dumps(spec)}" for name, spec in services.items()]
    return "\n".join(lines) + "\n"


def reload(daemon: DaemonProcess, *args: str) -> Any:
    return daemon.cli("reload", *args)


def reload_events(daemon: DaemonProcess, name: str) -> list[str]:
    detail = json.loads(daemon.cli("status", name, "--json").stdout)
    return [e["reason"] for e in detail["events"] if e["reason"].startswith("reloaded:")]


def test_an_added_service_starts_and_the_others_keep_their_pids(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    rewrite(daemon, {**base(), "extra": {**SLEEPER, "dependsOn": {"web": "Started"}}})
    out = reload(daemon)
    assert out.returncode == 0, out.stderr
    assert "start:     extra" in out.stdout
    status = daemon.wait_for(lambda s: up(s, "extra"), what="extra up")
    assert {n: status[n]["pid"] for n in before} == before
    assert reload_events(daemon, "extra") == ["reloaded: added; starting"]


def test_a_removed_service_stops_and_the_others_keep_their_pids(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    del services["web"]
    rewrite(daemon, services)
    out = reload(daemon)
    assert out.returncode == 0, out.stderr
    assert "stop:      web" in out.stdout
    assert not pid_alive(before["web"])
    assert pids(daemon) == {"db": before["db"], "api": before["api"]}
    assert "unknown service" in daemon.cli("status", "web").stderr


def test_a_changed_command_restarts_only_that_service(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    services["api"]["command"] = child_cmd("--print", "1")
    rewrite(daemon, services)
    out = reload(daemon)
    assert out.returncode == 0, out.stderr
    assert "restart:   api (command changed)" in out.stdout
    status = daemon.wait_for(lambda s: up(s, "api"), what="api up again")
    assert not pid_alive(before["api"])
    assert status["api"]["pid"] != before["api"]
    # Its dependency and its dependent are left alone, as `k4sinit restart` leaves them.
    assert (status["db"]["pid"], status["web"]["pid"]) == (before["db"], before["web"])
    assert reload_events(daemon, "api") == ["reloaded: command changed; restarting"]
    assert reload_events(daemon, "web") == [] and reload_events(daemon, "db") == []


def test_a_changed_probe_applies_live_and_keeps_the_pid(start_daemon: Any, tmp_path: Path) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    never = tmp_path / "never-there"
    services["db"]["readinessProbe"] = {"file": {"path": str(never)}, "periodSeconds": 0.2}
    rewrite(daemon, services)
    out = reload(daemon)
    assert out.returncode == 0, out.stderr
    assert "update:    db (readinessProbe changed)" in out.stdout
    # The new probe runs on the same process: it fails, so db is no longer ready.
    status = daemon.wait_for(lambda s: not s["db"]["ready"], what="db not ready by the new probe")
    assert pids(daemon) == before
    assert status["db"]["state"] == "running"
    never.touch()
    daemon.wait_for(lambda s: up(s, "db"), what="db ready again")
    assert pids(daemon) == before
    assert reload_events(daemon, "db") == ["reloaded: readinessProbe changed, applied live"]


def test_an_invalid_file_changes_nothing_and_says_what_check_says(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    services["api"]["comand"] = services["api"].pop("command")
    services["new"] = SLEEPER
    rewrite(daemon, services)
    out = reload(daemon)
    check = subprocess.run(
        [sys.executable, "-m", "k4sinit", "check", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and check.returncode == 1
    assert out.stderr == check.stderr
    assert (
        "service 'api', field comand: unknown key 'comand', did you mean 'command'?" in out.stderr
    )
    assert pids(daemon) == before
    # Once the file is fixed, the reload goes through.
    rewrite(daemon, base())
    assert reload(daemon).returncode == 0
    assert pids(daemon) == before


def test_a_dependency_cycle_in_the_new_file_is_invalid(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    services["db"]["dependsOn"] = {"web": "Started"}
    services["db"]["command"] = child_cmd("--print", "1")
    rewrite(daemon, services)
    out = reload(daemon)
    assert out.returncode == 1
    assert "dependency cycle: db -> web -> api -> db" in out.stderr
    assert pids(daemon) == before
    assert reload_events(daemon, "db") == []


def test_dry_run_prints_the_plan_and_changes_nothing(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    services["api"]["command"] = child_cmd("--print", "1")
    services["web"]["terminationGracePeriodSeconds"] = 3
    services["extra"] = SLEEPER
    del services["db"]["readinessProbe"]
    rewrite(daemon, services)
    out = reload(daemon, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"reload of {daemon.config}: dry run, nothing changed",
        "  start:     extra",
        "  restart:   api (command changed)",
        "  update:    db (readinessProbe changed), web (terminationGracePeriodSeconds changed)",
    ]
    assert pids(daemon) == before
    assert reload_events(daemon, "api") == []
    as_json = json.loads(reload(daemon, "--dry-run", "--json").stdout)
    assert as_json["plan"]["restart"] == [{"name": "api", "fields": ["command"]}]
    assert (as_json["dry_run"], as_json["applied"], as_json["errors"]) == (True, False, [])


def test_a_change_that_needs_a_reboot_is_refused_whole(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    services = base()
    services["extra"] = SLEEPER
    rewrite(daemon, services, top="modules: [overlay]\n")
    out = reload(daemon)
    assert out.returncode == 1
    assert "refused, nothing changed" in out.stdout
    assert "refused:   modules: loaded at boot" in out.stdout
    assert pids(daemon) == before


def test_sighup_reloads_run(start_daemon: Any) -> None:
    daemon, before = started(start_daemon, base())
    rewrite(daemon, {**base(), "extra": SLEEPER})
    daemon.proc.send_signal(signal.SIGHUP)
    status = daemon.wait_for(lambda s: up(s, "extra"), what="extra started by SIGHUP")
    assert {n: status[n]["pid"] for n in before} == before
    assert daemon.proc.poll() is None
    wait_until(
        lambda: any(e.get("event") == "reloaded" for e in daemon.log_events()),
        what="the reload logged",
    )
    assert any(
        e.get("event") == "reloading" and e.get("why") == "SIGHUP" for e in daemon.log_events()
    )


def test_a_service_waiting_for_a_dropped_dependency_starts_at_once(
    start_daemon: Any, tmp_path: Path
) -> None:
    never = {"file": {"path": str(tmp_path / "never-there")}, "periodSeconds": 0.2}
    services = {
        "gate": {**SLEEPER, "readinessProbe": never},
        "waiter": {**SLEEPER, "dependsOn": {"gate": "Ready"}},
    }
    daemon = start_daemon(services_config(services))
    daemon.wait_for(lambda s: s["waiter"]["state"] == "waiting", what="waiter waiting")
    del services["waiter"]["dependsOn"]
    rewrite(daemon, services)
    out = reload(daemon)
    assert "update:    waiter (dependsOn changed)" in out.stdout, out.stderr
    daemon.wait_for(lambda s: up(s, "waiter"), what="waiter up without its gate")


def test_the_reload_request_carries_dry_run_and_refuses_a_non_boolean() -> None:
    request = Request(Op.RELOAD, dry_run=True)
    assert request.to_json() == {"op": "reload", "dry_run": True}
    assert Request.from_json(request.to_json()) == request
    with pytest.raises(RequestError, match="'dry_run' must be true or false"):
        Request.from_json({"op": "reload", "dry_run": "yes"})
