"""Tests for k4sinit.config as a whole: the entry points, how errors render and are
ordered, the top level, and what every section's reader shares (types, NUL bytes, repeats)."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4sinit.config import ConfigError, ConfigErrors, load_config
from k4sinit.core.config import Config
from k4sinit.core.spec import (
    Condition,
    HTTPGetAction,
    ServiceSpec,
)
from tests.config_helpers import errors_of, load, only_error, where

EXAMPLE = Path(__file__).parent.parent / "etc" / "k4sinit" / "example.yaml"


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert list(config.services) == ["prepare", "web", "worker", "ticker"]
    assert config.services["worker"].depends_on == (("web", Condition.READY),)
    web = config.services["web"]
    assert web.readiness_probe is not None
    assert web.readiness_probe.action == HTTPGetAction(port=18080, path="/index.html")


def test_error_rendering() -> None:
    error = ConfigError(
        "example.yaml",
        12,
        "kubelet",
        "dependsOn.containrd",
        "unknown service 'containrd' in dependsOn",
        "did you mean 'containerd'?",
    )
    assert str(error) == (
        "example.yaml:12: service 'kubelet', field dependsOn.containrd:"
        " unknown service 'containrd' in dependsOn, did you mean 'containerd'?"
    )
    assert str(ConfigError("x.yaml", None, None, None, "the config is empty")) == (
        "x.yaml: the config is empty"
    )
    assert str(ConfigErrors("x.yaml", [error])).splitlines()[0] == "1 error in x.yaml"


def test_many_errors_are_all_reported_in_line_order() -> None:
    with pytest.raises(ConfigErrors) as caught:
        load("""
            services:
              kubelet:
                command: [kubelet]
                dependsOn: {containrd: Ready}
                restartPolicy: always
              containerd:
                comand: [containerd]
        """)
    errors = caught.value.errors
    assert where(errors) == [
        (4, "kubelet", "dependsOn.containrd"),
        (5, "kubelet", "restartPolicy"),
        (6, "containerd", None),
        (7, "containerd", "comand"),
    ]
    assert [e.message for e in errors] == [
        "unknown service 'containrd' in dependsOn",
        "expected one of Always, OnFailure, Never, got 'always'",
        "missing required key 'command'",
        "unknown key 'comand'",
    ]
    assert [e.hint for e in errors] == [
        "did you mean 'containerd'?",
        "did you mean 'Always'?",
        None,
        "did you mean 'command'?",
    ]
    assert str(caught.value).splitlines() == [
        "4 errors in test.yaml",
        "test.yaml:4: service 'kubelet', field dependsOn.containrd:"
        " unknown service 'containrd' in dependsOn, did you mean 'containerd'?",
        "test.yaml:5: service 'kubelet', field restartPolicy:"
        " expected one of Always, OnFailure, Never, got 'always', did you mean 'Always'?",
        "test.yaml:6: service 'containerd': missing required key 'command'",
        "test.yaml:7: service 'containerd', field comand: unknown key 'comand',"
        " did you mean 'command'?",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the config is empty"),
        ("# nothing\n", "the config is empty"),
        ("[1, 2]", "expected a mapping at the top level, got a list"),
        ("hostname: x\n", "missing required key 'services'"),
        ("services:\n", "expected a mapping, got null"),
    ],
)
def test_empty_or_wrong_top_level(text: str, message: str) -> None:
    assert message in [e.message for e in errors_of(text)]


def test_unknown_top_level_key_suggests() -> None:
    errors = errors_of("services: {}\nservces: {}\nzzz: 1\n")
    assert where(errors) == [(2, None, "servces"), (3, None, "zzz")]
    assert errors[0].hint == "did you mean 'services'?"
    assert errors[1].hint == (
        "known keys: node, services, hostname, modules, sysctls, boot, network, storage, "
        "metrics, watchdog"
    )


def test_wrong_types_name_what_was_expected_and_given() -> None:
    errors = errors_of("""
        services:
          s:
            command: /bin/sleep 10
            args: [--port, 8080, true]
            env: [{name: A, value: b}]
            workingDir: relative/dir
            terminationGracePeriodSeconds: soon
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (3, "command", "expected a list of strings, got a string ('/bin/sleep 10')"),
        (4, "args[1]", "expected a string, got an integer (8080)"),
        (4, "args[2]", "expected a string, got a boolean (true)"),
        (5, "env", "expected a mapping, got a list"),
        (6, "workingDir", "must be an absolute path, got 'relative/dir'"),
        (7, "terminationGracePeriodSeconds", "expected a number, got a string ('soon')"),
    ]
    assert errors[1].hint == "quote it to make it a string"
    assert errors[3].hint == "write it as NAME: value pairs"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "k4sinit.yaml"
    path.write_text("services:\n  s: {command: [x]}\n")
    assert load_config(path) == Config(str(path), {"s": ServiceSpec("s", ("x",))})


def test_a_nul_byte_in_an_argument_is_an_error() -> None:
    error = only_error('services:\n  a:\n    command: ["sleep", "1\\0"]\n')
    assert (error.line, error.field) == (3, "command[1]")
    assert "NUL byte" in error.message


def test_a_nul_byte_in_any_string_is_an_error() -> None:
    errors = errors_of(r"""
        hostname: "a\0b"
        sysctls: {net.ipv4.ip_forward: "1\0"}
        services:
          s:
            command: [x]
            env: {A: "a\0b"}
            workingDir: "/srv\0"
            readinessProbe: {file: {path: "/ready\0"}}
    """)
    nul = "a NUL byte cannot be passed to a program or the kernel"
    assert [(e.line, e.field, e.message) for e in errors] == [
        (1, "hostname", nul),
        (2, "sysctls.net.ipv4.ip_forward", nul),
        (6, "env.A", nul),
        (7, "workingDir", nul),
        (8, "readinessProbe.file.path", nul),
    ]


def test_long_lists_report_each_repeat() -> None:
    # 5,000 items per list: repeats are found by set, not by rescanning the list.
    count = 5_000
    ips = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(count)]
    text = "services:\n  s:\n    command: [x]\n    dependsOn: [" + ", ".join(
        ["s1", *(f"t{i}" for i in range(count)), "s1"]
    )
    text += "]\n  s1: {command: [x]}\n" + "".join(
        f"  t{i}: {{command: [x]}}\n" for i in range(count)
    )
    text += "node:\n  roles:\n    kubelet:\n      extraArgs: {"
    text += ", ".join([*(f"f{i}: x" for i in range(count)), "--f7: y"]) + "}\n"
    text += "network:\n  interfaces:\n  - name: br0\n    kind: bridge\n"
    text += f"    ports: [{', '.join([*(f'e{i}' for i in range(count)), 'e9'])}]\n"
    text += f"    addresses: [{', '.join([*(f'{ip}/8' for ip in ips), '10.0.0.3/8'])}]\n"
    text += f"  dns:\n    nameservers: [{', '.join([*ips[:3], ips[1]])}]\n"
    text += f"    search: [{', '.join([*(f'd{i}.example' for i in range(count)), 'd5.example'])}]\n"
    errors = errors_of(text)
    assert [(e.field, e.message) for e in errors] == [
        (f"dependsOn[{count + 1}]", "'s1' is listed twice"),
        ("node.roles.kubelet.extraArgs.--f7", "the flag 'f7' is given twice"),
        (f"network.interfaces[0].ports[{count}]", "'e9' is listed twice"),
        (f"network.interfaces[0].addresses[{count}]", "10.0.0.3/8 is listed twice"),
        ("network.dns.nameservers[3]", "10.0.0.1 is listed twice"),
        ("network.dns.nameservers", "at most 3 nameservers, got 4"),
        (f"network.dns.search[{count}]", "'d5.example' is listed twice"),
    ]
