"""Property-based fuzzing of the config loader (hypothesis).

Random YAML trees built from the config's own keys, and mutations of the
shipped configs (etc/k4sinit/*.yaml, the node configs among them), must each
give a :class:`~k4sinit.config.Config` or :class:`~k4sinit.config.ConfigErrors`
whose every error names the file and a place in it (a line or a field):
never another exception. What loads is expanded as ``k4sinit run`` does
(k4sinit.node.roles), under the same rule. ``k4sinit check`` is run
in-process on every mutated file for its documented exit codes (0 valid,
1 invalid), and a few hostile configs go through the real command line.

Each property runs a bounded number of examples (no deadline: the machine may
be busy) so the module takes a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k4sinit import cli
from k4sinit.config import ConfigErrors, load_config, load_config_text
from k4sinit.node import roles

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "etc" / "k4sinit").glob("*.yaml"))
SOURCE = "fuzz.yaml"

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Keys the loader knows, so random trees reach deep into validation.
KEYS = sorted(
    {
        *("services", "node", "network", "hostname", "modules", "sysctls", "boot"),
        *("command", "args", "env", "workingDir", "dependsOn", "restartPolicy", "stopSignal"),
        *("readinessProbe", "livenessProbe", "startupProbe", "restartBackoff", "resources"),
        *("terminationGracePeriodSeconds", "limits", "requests", "memory", "cpu", "pids"),
        *("exec", "httpGet", "tcpSocket", "unixSocket", "file", "port", "host", "path"),
        *("scheme", "httpHeaders", "name", "value", "tls", "periodSeconds", "timeoutSeconds"),
        *("initialSeconds", "maxSeconds", "multiplier", "jitter", "crashLoopLimit"),
        *("profile", "datastore", "roles", "extraArgs", "disabled", "binPath", "server"),
        *("token", "serviceCIDR", "podCIDR", "clusterDNS", "interfaces", "addresses"),
        *("routes", "to", "via", "metric", "dns", "nameservers", "search", "kind", "mac"),
        *("fallback", "switchRoot", "shell", "preflight", "coldplug", "<<", "a", "s", "web"),
    }
)

# Text that is hostile somewhere in a config: YAML features, extreme numbers,
# characters no program or protocol takes.
NASTY = [
    "!!int abc",
    "!!float x",
    "!!bool maybe",
    "!!timestamp 2001-13-45",
    "!!binary aGk=",
    "!!set {a}",
    "!thing x",
    "9" * 5000,
    "0x" + "f" * 300,
    "-" + "9" * 40,
    "1.0e+300",
    ".nan",
    "-.inf",
    "'" + "9" * 400 + "Gi'",
    '"a\\0b"',
    '"a\\r\\nb"',
    "*undefined",
    "&a [*a]",
    "&b {<<: *b}",
    "{<<: [1, 2]}",
    "[",
    "{",
    "}",
    ": :",
    "- - -",
    "? [a]\n: b",
    "~",
    "''",
    "52:54:00:12:34:56",
    "10.0.0.0/8",
    "/a b",
    "Ready",
    "Completed",
    "SIGKILL",
    "1e300",
    "-1",
    "0",
    "65536",
    "4194305",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["Ready", "Started", "Completed", "x", "/bin/sh", "10.0.0.1", "500m", "1Gi"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=40,
)


def check_loads(text: str) -> None:
    """The invariant: a Config, or ConfigErrors each naming the file and a place in it."""
    try:
        config = load_config_text(text, SOURCE)
        roles.expand(config)  # what `k4sinit run` does next
    except ConfigErrors as exc:
        assert exc.errors
        lines = text.count("\n") + 1
        for error in exc.errors:
            assert error.file == SOURCE
            whole_file = error.message.startswith("the config is empty")
            assert error.line is not None or error.field is not None or whole_file, error
            assert error.line is None or 1 <= error.line <= lines + 1, error
            assert str(error).startswith(SOURCE), error
        assert str(exc).startswith(f"{len(exc.errors)} error")


def check_exit_code(text: str) -> None:
    """``k4sinit check`` in-process: 0 and one line when valid, 1 and every error otherwise."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        Path(path).write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check", "--config", path])
    if code == 0:
        assert out.getvalue().startswith(f"{path}: valid, ")
    else:
        assert code == 1
        assert err.getvalue().split("\n")[1].startswith(path), err.getvalue()


@FUZZ
@given(trees)
def test_random_yaml_trees(tree: Any) -> None:
    check_loads(yaml.safe_dump(tree, allow_unicode=True))
    check_loads(yaml.safe_dump({"services": tree}, allow_unicode=True))
    check_loads(yaml.safe_dump({"services": {"s": tree}}, allow_unicode=True))


def _replace_at(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node reached by ``path`` (each step an index among children) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    step, rest = path[0], path[1:]
    if isinstance(doc, dict):
        key = list(doc)[step % len(doc)]
        return {**doc, key: _replace_at(doc[key], rest, value)}
    i = step % len(doc)
    return [*doc[:i], _replace_at(doc[i], rest, value), *doc[i + 1 :]]


@FUZZ
@given(
    st.sampled_from(EXAMPLES),
    st.lists(st.integers(0, 50), min_size=1, max_size=6),
    trees,
)
def test_example_configs_with_a_value_replaced(example: Path, path: list[int], value: Any) -> None:
    doc = yaml.safe_load(example.read_text())
    check_loads(yaml.safe_dump(_replace_at(doc, path, value), allow_unicode=True))


@FUZZ
@given(
    st.sampled_from(EXAMPLES),
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "nasty", "indent", "chars", "swap"]),
            st.integers(0, 10_000),
            st.sampled_from(NASTY),
            st.text(max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_example_configs_with_lines_mutated(
    example: Path, mutations: list[tuple[str, int, str, str]]
) -> None:
    lines = example.read_text().split("\n")
    for op, where, nasty, chars in mutations:
        i = where % len(lines)
        line = lines[i]
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "nasty" and ":" in line:  # the value after a key, or a list item
            lines[i] = line.split(":", 1)[0] + ": " + nasty
        elif op == "nasty":
            lines[i] = line[: len(line) - len(line.lstrip())] + "- " + nasty
        elif op == "indent":
            lines[i] = (" " * (where % 5)) + line
        elif op == "chars":
            cut = where % (len(line) + 1)
            lines[i] = line[:cut] + chars + line[cut:]
        else:
            j = (where // 7) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            lines = [""]
    text = "\n".join(lines)
    check_loads(text)
    check_exit_code(text)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_shipped_configs_load_and_pass_check(example: Path) -> None:
    check_loads(example.read_text())
    check_exit_code(example.read_text())


# The hostile configs of issue 11: each ended in a traceback, `run` exiting 1.
HOSTILE = {
    "recursive-merge": "a: &a {<<: *a}\n",
    "int-abc": "services: {s: {command: [x], terminationGracePeriodSeconds: !!int abc}}\n",
    "5000-digits": f"services: {{s: {{command: [x], terminationGracePeriodSeconds: {'9' * 5000}}}}}\n",
    "300-hex-digits": f"services: {{s: {{command: [x], terminationGracePeriodSeconds: 0x{'f' * 300}}}}}\n",
    "400-digit-memory": f"services: {{s: {{command: [x], resources: {{limits: {{memory: '{'9' * 400}'}}}}}}}}\n",
    "alias-bomb": "".join(
        f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9) if i else ','.join(['lol'] * 9)}]\n"
        for i in range(10)
    ),
    "nul-in-env": 'services: {s: {command: [x], env: {A: "a\\0b"}}}\n',
    "huge-multiplier": "services: {s: {command: [x], restartBackoff: {multiplier: 1.0e+300}}}\n",
    "crlf-in-path": 'services: {s: {command: [x], readinessProbe: {httpGet: {port: 80, path: "/\\r\\n"}}}}\n',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_configs_exit_as_documented(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HOSTILE[name])
    with pytest.raises(ConfigErrors):  # so that `run` below cannot start a daemon
        load_config(path)
    for command, expected in (("check", 1), ("run", 2)):
        assert cli.main([command, "--config", str(path)]) == expected
        assert_reported(capsys.readouterr().err, path)


@pytest.mark.parametrize("name", ["recursive-merge", "5000-digits", "alias-bomb"])
def test_hostile_configs_through_the_real_command_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HOSTILE[name])
    env = {**os.environ, "K4SINIT_SOCKET": str(tmp_path / "no.sock")}
    for command, expected in (("check", 1), ("run", 2)):
        result = subprocess.run(
            [sys.executable, "-m", "k4sinit", command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == expected, (command, result.stderr)
        assert_reported(result.stderr, path)


def assert_reported(stderr: str, path: Path) -> None:
    """No traceback: the count of errors, then one line per error, each naming the file."""
    head, *errors = stderr.splitlines()
    assert head == f"{len(errors)} error{'' if len(errors) == 1 else 's'} in {path}", stderr
    assert all(line.startswith(f"{path}:") for line in errors), stderr


def test_a_fifo_as_the_config_through_the_real_command_line(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "k4sinit", "check", "--config", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"1 error in {fifo}\n{fifo}: cannot read the config: it is a FIFO, not a regular file\n"
    )
