"""Tests for k4sinit.config.document: YAML syntax, duplicate keys, tags, merges,
and the limits that keep a hostile file from exhausting PID 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4sinit.config import ConfigErrors, load_config
from k4sinit.core.spec import (
    Probe,
    RestartPolicy,
    ServiceSpec,
    TCPSocketAction,
)
from tests.config_helpers import errors_of, load, only_error, where


def test_yaml_merge_keys_share_settings() -> None:
    config = load("""
        services:
          a: &base
            command: [x]
            restartPolicy: Never
          b:
            <<: *base
            command: [y]
    """)
    assert config.services["b"] == ServiceSpec("b", ("y",), restart_policy=RestartPolicy.NEVER)


def test_yaml_syntax_error_has_its_line() -> None:
    error = only_error("""
        services:
          a:
            command: [x
          b: {}
    """)
    assert error.line == 4
    assert error.message.startswith("YAML syntax error: ")


def test_duplicate_keys_are_errors() -> None:
    errors = errors_of("""
        services:
          a:
            command: [x]
            command: [y]
          a: {command: [z]}
    """)
    assert where(errors) == [(4, "a", "command"), (5, "a", None)]
    assert errors[0].message == "duplicate key 'command' (first at line 3)"
    assert errors[1].message == "duplicate key 'a' (first at line 2)"


def test_custom_yaml_tags_are_errors() -> None:
    errors = errors_of("services:\n  a: !thing {command: [x]}\n  b: {command: [!!binary aGk=]}\n")
    assert [(e.line, e.service, e.field, e.message) for e in errors] == [
        (2, "a", None, "unsupported YAML tag !thing"),
        (3, "b", "command[0]", "expected a string, got bytes"),
    ]


def test_pure_python_yaml_loader_gives_the_same_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setattr("k4sinit.config.document._Loader", yaml.SafeLoader)
    errors = errors_of("""
        services:
          a:
            command: [x]
            command: [y]
            dependsOn: [b]
    """)
    assert [(e.line, e.field) for e in errors] == [(4, "command"), (5, "dependsOn[0]")]
    assert only_error("services:\n  a: [\n").line == 3


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigErrors) as caught:
        load_config(missing)
    [error] = caught.value.errors
    assert (error.file, error.line) == (str(missing), None)
    assert error.message.startswith("cannot read the config: ")

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"services:\n  s: {command: [caf\xe9]}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(latin1)
    [error] = caught.value.errors
    assert (error.file, error.line) == (str(latin1), 2)
    assert error.message == "not valid UTF-8 (byte 0xe9 at offset 29)"


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a directory")):  # fmt: skip
        with pytest.raises(ConfigErrors) as caught:
            load_config(path)
        [error] = caught.value.errors
        assert (error.file, error.line) == (str(path), None)
        assert error.message == f"cannot read the config: it is {kind}, not a regular file"


def test_a_config_larger_than_1_mib_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # sparse: takes no disk
    with pytest.raises(ConfigErrors) as caught:
        load_config(big)
    [error] = caught.value.errors
    assert (error.file, error.line) == (str(big), None)
    assert error.message == "cannot read the config: it is larger than 1 MiB"
    fits = tmp_path / "fits.yaml"
    fits.write_text("services: {s: {command: [x]}}\n" + "#" * ((1 << 20) - 40) + "\n")
    assert load_config(fits).services["s"].command == ("x",)


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: each level lists the one before nine times (9**levels values)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    text = billion_laughs()
    assert len(text) < 600  # a few hundred bytes that would expand to 387 million values
    error = only_error(text)
    assert error.line is not None and error.line > 1
    assert error.message.startswith("excessive YAML aliasing: ")
    assert "10000" in error.message


def test_aliases_within_the_limit_are_expanded() -> None:
    # 60 services merging one anchored body and reusing one anchored probe.
    services = "".join(
        f"  s{i}:\n    <<: *base\n    readinessProbe: *probe\n" for i in range(1, 61)
    )
    config = load(
        "services:\n"
        "  s0: &base\n    command: [x]\n    restartPolicy: OnFailure\n"
        "    readinessProbe: &probe {tcpSocket: {port: 80}, periodSeconds: 2}\n" + services
    )
    assert len(config.services) == 61
    assert {s.readiness_probe for s in config.services.values()} == {
        Probe(TCPSocketAction(80), period=2.0)
    }


def test_a_recursive_merge_key_is_an_error() -> None:
    errors = errors_of("services: &a {<<: *a, s: {command: [x]}}\n")
    assert [(e.line, e.field, e.message) for e in errors] == [
        (1, "services", "recursive YAML alias")
    ]


def test_nesting_too_deep_is_an_error_not_a_recursion_error() -> None:
    text = "services:\n  s:\n    command: [x]\n    env:\n"
    text += "".join(" " * (i + 6) + "a:\n" for i in range(500))
    errors = errors_of(text)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "env.a", "expected a string, got a mapping"),
        (66, "env" + ".a" * 61, "nested too deeply: more than 64 levels"),
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("!!int abc", "cannot read 'abc' as a YAML int"),
        ("!!float abc", "cannot read 'abc' as a YAML float"),
        ("!!bool abc", "cannot read 'abc' as a YAML bool"),
        ("!!timestamp abc", "cannot read 'abc' as a YAML timestamp"),
        ("!!timestamp 2001-13-45", "cannot read '2001-13-45' as a YAML timestamp"),
        ("9" * 5000, "an integer of 5000 digits is too long for k4sinit, which takes 64 bits"),
        ("0x" + "f" * 300, "an integer of 1200 bits is too large for k4sinit, which takes 64 bits"),
        ("-" + "9" * 30, "an integer of 100 bits is too large for k4sinit, which takes 64 bits"),
    ],
)
def test_values_yaml_cannot_make_are_errors_on_their_line(written: str, message: str) -> None:
    error = only_error(
        f"services:\n  s:\n    command: [x]\n    terminationGracePeriodSeconds: {written}\n"
    )
    assert (error.line, error.service, error.field) == (4, "s", "terminationGracePeriodSeconds")
    assert error.message == message
