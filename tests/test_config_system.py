"""Tests for k4sinit.config.system: hostname, modules, sysctls and boot."""

from __future__ import annotations

from k4sinit.config import load_config_text
from k4sinit.core.config import Fallback, SwitchRoot
from k4sinit.core.spec import (
    Resources,
)
from tests.config_helpers import errors_of, load, only_error


def test_system_section_and_resources_are_read_with_kubernetes_units() -> None:
    config = load_config_text(
        """\
hostname: node-1.lab
modules: [overlay, br_netfilter]
sysctls: {net.ipv4.ip_forward: 1, kernel.panic: "10"}
boot: {fallback: reboot, fallbackDelaySeconds: 5, switchRoot: never, shell: [/bin/busybox, sh]}
services:
  a:
    command: [sleep, "1"]
    resources: {limits: {memory: 64Mi, cpu: 500m, pids: 20}}
  b:
    command: [sleep, "1"]
    resources: {limits: {memory: "1G", cpu: 2}}
""",
        "node.yaml",
    )
    system = config.system
    assert system.hostname == "node-1.lab"
    assert system.modules == ("overlay", "br_netfilter")
    assert system.sysctls == (("net.ipv4.ip_forward", "1"), ("kernel.panic", "10"))
    assert (system.fallback, system.fallback_delay, system.switch_root) == (
        Fallback.REBOOT,
        5.0,
        SwitchRoot.NEVER,
    )
    assert system.shell == ("/bin/busybox", "sh")
    assert config.services["a"].resources == Resources(memory=64 << 20, cpu_millis=500, pids=20)
    assert config.services["b"].resources == Resources(memory=10**9, cpu_millis=2000)


def test_system_section_errors_name_the_field() -> None:
    errors = errors_of(
        """\
hostname: Node_1
modules: [bad.ko]
sysctls: {nodots: 1}
boot: {fallback: shel}
services:
  a:
    command: [sleep, "1"]
    resources: {limits: {memory: lots, gpu: 1}}
"""
    )
    assert [(e.line, e.field) for e in errors] == [
        (1, "hostname"),
        (2, "modules[0]"),
        (3, "sysctls.nodots"),
        (4, "boot.fallback"),
        (8, "resources.limits.memory"),
        (8, "resources.limits.gpu"),
    ]
    assert errors[3].hint == "did you mean 'shell'?"


def test_boot_coldplug_is_on_unless_turned_off() -> None:
    assert load("services: {a: {command: [x]}}").system.coldplug is True
    assert load("boot: {fallback: retry}\nservices: {a: {command: [x]}}").system.coldplug is True
    assert load("boot: {coldplug: false}\nservices: {a: {command: [x]}}").system.coldplug is False
    error = only_error('services: {a: {command: [x]}}\nboot: {coldplug: "off"}\n')
    assert (error.line, error.service, error.field) == (2, None, "boot.coldplug")
    assert (error.message, error.hint) == (
        "expected a boolean, got a string ('off')",
        "true or false",
    )
    error = only_error("services: {a: {command: [x]}}\nboot: {coldplg: false}\n")
    assert (error.field, error.hint) == ("boot.coldplg", "did you mean 'coldplug'?")
