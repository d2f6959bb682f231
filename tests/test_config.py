"""Tests for k4sinit.config: parsing, defaults, and every error reported at once."""

from __future__ import annotations

import signal
import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path

import pytest

from k4sinit.config import ConfigError, ConfigErrors, load_config, load_config_text
from k4sinit.core.config import Config, Fallback, SwitchRoot
from k4sinit.core.netspec import (
    DEFAULT_V4,
    DEFAULT_V6,
    DNS,
    Interface,
    InterfaceKind,
    NetworkSource,
    NetworkSpec,
    Route,
)
from k4sinit.core.spec import (
    Backoff,
    Condition,
    ExecAction,
    FileAction,
    HTTPGetAction,
    Probe,
    Resources,
    RestartPolicy,
    ServiceSpec,
    TCPSocketAction,
    TLSConfig,
    UnixSocketAction,
)

EXAMPLE = Path(__file__).parent.parent / "etc" / "k4sinit" / "example.yaml"


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text).lstrip("\n"), "test.yaml")


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as caught:
        load(text)
    return caught.value.errors


def where(errors: list[ConfigError]) -> list[tuple[int | None, str | None, str | None]]:
    return [(e.line, e.service, e.field) for e in errors]


def only_error(text: str) -> ConfigError:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def one_service(body: str) -> ServiceSpec:
    """The spec of service ``s`` whose body is ``body`` (indented by the caller's 4 spaces)."""
    config = load("services:\n  s:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return config.services["s"]


def probe(body: str, kind: str = "readinessProbe") -> Probe | None:
    spec = one_service(f"command: [x]\n{kind}:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return {
        "readinessProbe": spec.readiness_probe,
        "livenessProbe": spec.liveness_probe,
        "startupProbe": spec.startup_probe,
    }[kind]


# --- valid configs -------------------------------------------------------------


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert list(config.services) == ["prepare", "web", "worker", "ticker"]
    assert config.services["worker"].depends_on == (("web", Condition.READY),)
    web = config.services["web"]
    assert web.readiness_probe is not None
    assert web.readiness_probe.action == HTTPGetAction(port=18080, path="/index.html")


def test_minimal_service_gets_spec_defaults() -> None:
    config = load("""
        services:
          s:
            command: [sleep, "10"]
    """)
    assert config == Config(source="test.yaml", services={"s": ServiceSpec("s", ("sleep", "10"))})
    spec = config.services["s"]
    assert spec.restart_policy is RestartPolicy.ALWAYS
    assert spec.backoff == Backoff()
    assert spec.stop_signal is signal.SIGTERM
    assert spec.termination_grace_period == 10.0


def test_full_service_in_file_order() -> None:
    config = load("""
        services:
          zeta:
            command: [/bin/true]
            restartPolicy: Never
          alpha:
            command: [/bin/sh, -c]
            args: ["echo $B $A"]
            env:
              B: two
              A: "1"
            workingDir: /tmp
            dependsOn:
              zeta: Completed
              beta: Started
            restartPolicy: OnFailure
            restartBackoff:
              initialSeconds: 0.25
              maxSeconds: 5
              multiplier: 1.5
              jitter: 0
              resetAfterSeconds: 10
              crashLoopLimit: 4
            stopSignal: SIGINT
            terminationGracePeriodSeconds: 0.5
          beta:
            command: [b]
    """)
    assert list(config.services) == ["zeta", "alpha", "beta"]
    assert config.services["alpha"] == ServiceSpec(
        name="alpha",
        command=("/bin/sh", "-c"),
        args=("echo $B $A",),
        env=(("B", "two"), ("A", "1")),
        working_dir="/tmp",
        depends_on=(("zeta", Condition.COMPLETED), ("beta", Condition.STARTED)),
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff=Backoff(0.25, 5.0, 1.5, 0.0, 10.0, 4),
        stop_signal=signal.SIGINT,
        termination_grace_period=0.5,
    )


def test_depends_on_list_means_ready() -> None:
    config = load("""
        services:
          a: {command: [a]}
          b: {command: [b]}
          c: {command: [c], dependsOn: [b, a]}
    """)
    assert config.services["c"].depends_on == (("b", Condition.READY), ("a", Condition.READY))


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("KILL", signal.SIGKILL),
        (1, signal.SIGHUP),
        ("SIGUSR2", signal.SIGUSR2),
    ],
)
def test_stop_signal_forms(written: object, expected: signal.Signals) -> None:
    assert one_service(f"command: [x]\nstopSignal: {written}").stop_signal is expected


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


# --- probes --------------------------------------------------------------------


def test_probe_defaults_and_fractional_seconds() -> None:
    assert probe("tcpSocket: {port: 80}") == Probe(TCPSocketAction(port=80))
    assert probe("""
        exec: {command: [check]}
        initialDelaySeconds: 0.5
        periodSeconds: 0.25
        timeoutSeconds: 2
        successThreshold: 2
        failureThreshold: 5
    """) == Probe(ExecAction(("check",)), 0.5, 0.25, 2.0, 2, 5)


def test_http_get_probe_with_everything() -> None:
    got = probe("""
        httpGet:
          scheme: HTTPS
          host: 10.0.0.1
          port: 6443
          path: /readyz
          httpHeaders:
            - {name: Authorization, value: Bearer x}
            - {name: X-Probe, value: ""}
          tls:
            caFile: /etc/k/ca.crt
            certFile: /etc/k/probe.crt
            keyFile: /etc/k/probe.key
            serverName: kubernetes
    """)
    assert got == Probe(
        HTTPGetAction(
            port=6443,
            host="10.0.0.1",
            path="/readyz",
            scheme="HTTPS",
            headers=(("Authorization", "Bearer x"), ("X-Probe", "")),
            tls=TLSConfig("/etc/k/ca.crt", "/etc/k/probe.crt", "/etc/k/probe.key", "kubernetes"),
        )
    )


def test_http_get_defaults() -> None:
    assert probe("httpGet: {port: 8080}") == Probe(HTTPGetAction(port=8080))


def test_tcp_unix_and_file_probes() -> None:
    assert probe("tcpSocket: {host: '::1', port: 2379}", "livenessProbe") == Probe(
        TCPSocketAction(port=2379, host="::1")
    )
    assert probe("unixSocket: {path: /run/containerd.sock}", "startupProbe") == Probe(
        UnixSocketAction("/run/containerd.sock")
    )
    assert probe("file: {path: /run/ready}") == Probe(FileAction("/run/ready"))


# --- errors ----------------------------------------------------------------------


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
    assert errors[1].hint == "known keys: node, services, hostname, modules, sysctls, boot, network"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Web", "invalid service name"),
        ("-web", "invalid service name"),
        ("web_1", "invalid service name"),
        ("a" * 64, "invalid service name"),
        ("network", "the name 'network' is reserved"),
        ("pki", "the name 'pki' is reserved"),
        ("preflight", "the name 'preflight' is reserved"),
    ],
)
def test_bad_service_names(name: str, message: str) -> None:
    error = only_error(f"services:\n  {name}: {{command: [x]}}\n")
    assert (error.line, error.service, error.field, error.message) == (2, name, None, message)


def test_a_service_cannot_take_the_name_of_a_status_view() -> None:
    """Issue 12: a service 'preflight' was accepted, but `status preflight` shows the checks."""
    error = only_error("services:\n  preflight: {command: [x]}\n")
    assert error.hint == (
        "choose another name, it is kept for the boot's checks (k4sinit status preflight)"
    )


def test_good_service_names() -> None:
    names = ["a", "0", "kube-apiserver", "a" * 63]
    text = "services:\n" + "".join(f"  {n}: {{command: [x]}}\n" for n in names)
    assert list(load(text).services) == names


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


def test_env_values_must_be_quoted_strings() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            env:
              PORT: 8080
              DEBUG: true
              EMPTY:
              OK: "yes"
              "A=B": x
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "env.PORT", "expected a string, got an integer (8080)"),
        (6, "env.DEBUG", "expected a string, got a boolean (true)"),
        (7, "env.EMPTY", "expected a string, got null"),
        (9, "env.A=B", "invalid environment variable name"),
    ]
    assert {e.hint for e in errors[:3]} == {"quote it to make it a string"}


def test_empty_command_is_an_error() -> None:
    error = only_error("services:\n  s:\n    command: []\n")
    assert (error.line, error.field, error.message) == (3, "command", "must not be empty")


def test_dependency_cycles_are_named_in_full() -> None:
    errors = errors_of("""
        services:
          ok: {command: [x]}
          a: {command: [x], dependsOn: [b]}
          b: {command: [x], dependsOn: {c: Started}}
          c: {command: [x], dependsOn: [ok, a]}
          self:
            command: [x]
            dependsOn: [self]
          p: {command: [x], dependsOn: [q]}
          q: {command: [x], dependsOn: [p]}
    """)
    assert [(e.line, e.service, e.field, e.message) for e in errors] == [
        (3, "a", None, "dependency cycle: a -> b -> c -> a"),
        (6, "self", None, "dependency cycle: self -> self"),
        (9, "p", None, "dependency cycle: p -> q -> p"),
    ]


def test_completed_on_an_always_service_can_never_happen() -> None:
    errors = errors_of("""
        services:
          daemon: {command: [x]}
          setup: {command: [x], restartPolicy: OnFailure}
          app:
            command: [x]
            dependsOn:
              setup: Completed
              daemon: Completed
    """)
    assert where(errors) == [(8, "app", "dependsOn.daemon")]
    assert errors[0].message == (
        "condition Completed on 'daemon', which has restartPolicy Always and so never completes"
    )
    assert errors[0].hint == "use Ready, or set its restartPolicy to OnFailure or Never"


def test_completed_on_a_built_in_can_never_happen() -> None:
    error = only_error("""
        services:
          app:
            command: [x]
            dependsOn: {pki: Ready, network: Completed}
    """)
    assert where([error]) == [(4, "app", "dependsOn.network")]
    assert error.message == "condition Completed on the built-in 'network', which never completes"
    assert error.hint == "use Ready"


def test_a_dependency_on_an_invalid_entry_is_not_unknown() -> None:
    # The entry itself is the error; its name exists, and a bad condition or
    # restartPolicy already reported raises no second error.
    errors = errors_of("""
        services:
          broken: 3
          odd: {command: [x], restartPolicy: Sometimes}
          app:
            command: [x]
            dependsOn: {broken: Ready, odd: Completed, app2: Readyy}
    """)
    assert [(e.line, e.field) for e in errors] == [
        (2, None),
        (3, "restartPolicy"),
        (6, "dependsOn.app2"),
        (6, "dependsOn.app2"),
    ]
    assert errors[2].message.startswith("expected one of Started, Ready, Completed")
    assert errors[3].message == "unknown service 'app2' in dependsOn"


def test_the_config_keeps_where_each_dependency_is_written() -> None:
    config = load("""
        services:
          a: {command: [x]}
          b:
            command: [x]
            dependsOn: [a, network]
          c:
            command: [x]
            dependsOn:
              b: Ready
    """)
    assert dict(config.where) == {
        ("a", None): (2, None),
        ("b", None): (3, None),
        ("b", "a"): (5, "dependsOn[0]"),
        ("b", "network"): (5, "dependsOn[1]"),
        ("c", None): (6, None),
        ("c", "b"): (9, "dependsOn.b"),
    }


def test_dependency_errors() -> None:
    errors = errors_of("""
        services:
          containerd: {command: [x]}
          kubelet:
            command: [x]
            dependsOn: {containrd: Ready, containerd: Readdy}
          other:
            command: [x]
            dependsOn: [zzzz, 3, containerd, containerd]
    """)
    assert [(e.line, e.field, e.message, e.hint) for e in errors] == [
        (5, "dependsOn.containerd", "expected one of Started, Ready, Completed, got 'Readdy'",
         "did you mean 'Ready'?"),
        (5, "dependsOn.containrd", "unknown service 'containrd' in dependsOn",
         "did you mean 'containerd'?"),
        (8, "dependsOn[1]", "expected a service name, got an integer (3)", None),
        (8, "dependsOn[3]", "'containerd' is listed twice", None),
        (8, "dependsOn[0]", "unknown service 'zzzz' in dependsOn", None),
    ]  # fmt: skip


def test_probe_errors() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            readinessProbe:
              periodSeconds: 0
              timeoutSeconds: -1
              initialDelaySeconds: .inf
              failureThreshold: 0
            livenessProbe:
              exec: {command: [x]}
              tcpSocket: {port: 1}
              successThreshold: 2
            startupProbe:
              httpGet:
                port: http
                pth: /healthz
              sucessThreshold: 1
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (4, "readinessProbe", "a probe needs a handler"),
        (5, "readinessProbe.periodSeconds", "must be > 0, got 0"),
        (6, "readinessProbe.timeoutSeconds", "must be > 0, got -1"),
        (7, "readinessProbe.initialDelaySeconds", "must be >= 0, got inf"),
        (8, "readinessProbe.failureThreshold", "must be >= 1, got 0"),
        (9, "livenessProbe", "more than one handler (exec, tcpSocket), a probe takes exactly one"),
        (12, "livenessProbe.successThreshold", "must be 1 for livenessProbe"),
        (15, "startupProbe.httpGet.port", "expected an integer, got a string ('http')"),
        (16, "startupProbe.httpGet.pth", "unknown key 'pth'"),
        (17, "startupProbe.sucessThreshold", "unknown key 'sucessThreshold'"),
    ]
    assert errors[0].hint == "add one of exec, httpGet, tcpSocket, unixSocket, file"
    assert errors[7].hint == "named ports are not supported, give the number"
    assert errors[8].hint == "did you mean 'path'?"
    assert errors[9].hint == "did you mean 'successThreshold'?"


def test_startup_probe_success_threshold_must_be_one() -> None:
    error = only_error("""
        services:
          s:
            command: [x]
            startupProbe: {file: {path: /x}, successThreshold: 3}
    """)
    assert (error.line, error.field, error.message) == (
        4,
        "startupProbe.successThreshold",
        "must be 1 for startupProbe",
    )


def test_http_get_errors() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            readinessProbe:
              httpGet:
                port: 70000
                path: healthz
                scheme: http
                httpHeaders:
                  - {name: "Bad Name", value: x}
                  - {name: X}
                  - oops
                tls: {certFile: /c.crt}
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (6, "readinessProbe.httpGet.port", "must be between 1 and 65535, got 70000"),
        (7, "readinessProbe.httpGet.path", "must start with '/', got 'healthz'"),
        (8, "readinessProbe.httpGet.scheme", "expected one of HTTP, HTTPS, got 'http'"),
        (10, "readinessProbe.httpGet.httpHeaders[0].name", "invalid HTTP header name 'Bad Name'"),
        (11, "readinessProbe.httpGet.httpHeaders[1]", "missing required key 'value'"),
        (12, "readinessProbe.httpGet.httpHeaders[2]",
         "expected a mapping with name and value, got a string ('oops')"),
        (13, "readinessProbe.httpGet.tls", "certFile and keyFile must be given together"),
        (13, "readinessProbe.httpGet.tls", "tls needs scheme HTTPS"),
    ]  # fmt: skip
    assert errors[2].hint == "did you mean 'HTTP'?"


def test_socket_and_file_probe_errors() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            readinessProbe: {unixSocket: {path: run/x.sock}}
            livenessProbe: {file: {}}
            startupProbe: {tcpSocket: {host: 1}}
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (4, "readinessProbe.unixSocket.path", "must be an absolute path, got 'run/x.sock'"),
        (5, "livenessProbe.file", "missing required key 'path'"),
        (6, "startupProbe.tcpSocket.host", "expected a string, got an integer (1)"),
        (6, "startupProbe.tcpSocket", "missing required key 'port'"),
    ]


def test_backoff_errors() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            restartBackoff:
              initialSeconds: 100
              multiplier: 0.5
              jitter: 1.5
              crashLoopLimit: 0
              resetAfterSecond: 3
    """)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (4, "restartBackoff", "initialSeconds (100) is more than maxSeconds (60)"),
        (6, "restartBackoff.multiplier", "must be between 1 and 10, got 0.5"),
        (7, "restartBackoff.jitter", "must be between 0 and 1, got 1.5"),
        (8, "restartBackoff.crashLoopLimit", "must be >= 1, got 0"),
        (9, "restartBackoff.resetAfterSecond", "unknown key 'resetAfterSecond'"),
    ]
    assert errors[-1].hint == "did you mean 'resetAfterSeconds'?"


@pytest.mark.parametrize(
    ("written", "message", "hint"),
    [
        ("SIGTERN", "unknown signal 'SIGTERN'", "did you mean 'SIGTERM'?"),
        ("sigterm", "unknown signal 'sigterm'", "did you mean 'SIGTERM'?"),
        ("0", "no signal has number 0", None),
        ("true", "expected a signal name or number, got a boolean (true)", None),
    ],
)
def test_bad_stop_signal(written: str, message: str, hint: str | None) -> None:
    error = only_error(f"services:\n  s:\n    command: [x]\n    stopSignal: {written}\n")
    assert (error.line, error.field, error.message, error.hint) == (4, "stopSignal", message, hint)


def test_negative_grace_period() -> None:
    error = only_error("services: {s: {command: [x], terminationGracePeriodSeconds: -1}}")
    assert (error.field, error.message) == ("terminationGracePeriodSeconds", "must be >= 0, got -1")


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


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "k4sinit.yaml"
    path.write_text("services:\n  s: {command: [x]}\n")
    assert load_config(path) == Config(str(path), {"s": ServiceSpec("s", ("x",))})


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


def test_custom_yaml_tags_are_errors() -> None:
    errors = errors_of("services:\n  a: !thing {command: [x]}\n  b: {command: [!!binary aGk=]}\n")
    assert [(e.line, e.service, e.field, e.message) for e in errors] == [
        (2, "a", None, "unsupported YAML tag !thing"),
        (3, "b", "command[0]", "expected a string, got bytes"),
    ]


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


def test_a_cpu_request_is_a_cgroup_weight_at_100_per_cpu() -> None:
    def weight(request: str) -> int | None:
        text = f"services: {{a: {{command: [x], resources: {{requests: {{cpu: {request}}}}}}}}}"
        return load(text).services["a"].resources.cpu_weight

    assert weight("1") == 100  # a CPU's worth: the kernel's default weight
    assert weight("250m") == 25
    assert weight("10") == 1000
    assert weight("1m") == 1  # cpu.weight's floor
    assert weight("500") == 10000  # and its ceiling
    both = load(
        "services: {a: {command: [x], resources: {limits: {memory: 1Gi}, requests: {cpu: 2}}}}"
    )
    assert both.services["a"].resources == Resources(memory=1 << 30, cpu_weight=200)
    errors = errors_of(
        "services: {a: {command: [x], resources: {requests: {cpu: lots, memory: 1Gi}}}}"
    )
    assert [e.field for e in errors] == ["resources.requests.cpu", "resources.requests.memory"]


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


def test_a_nul_byte_in_an_argument_is_an_error() -> None:
    error = only_error('services:\n  a:\n    command: ["sleep", "1\\0"]\n')
    assert (error.line, error.field) == (3, "command[1]")
    assert "NUL byte" in error.message


# --- network -------------------------------------------------------------------------


def network(body: str) -> NetworkSpec:
    """The network of a config whose ``network`` section is ``body``."""
    return load("services: {a: {command: [x]}}\nnetwork:\n" + textwrap.indent(body, "  ")).network


def network_errors(body: str) -> list[ConfigError]:
    return errors_of("services: {a: {command: [x]}}\nnetwork:\n" + textwrap.indent(body, "  "))


def test_no_network_section_means_not_configured() -> None:
    assert load("services: {a: {command: [x]}}").network == NetworkSpec()


def test_an_empty_network_section_is_configured_with_only_loopback() -> None:
    spec = load("services: {a: {command: [x]}}\nnetwork: {}").network
    assert spec == NetworkSpec(source=NetworkSource.CONFIG)
    assert spec.configured


def test_the_documented_network_example() -> None:
    spec = network(
        """\
interfaces:
  - mac: 52:54:00:12:34:56   # unquoted: YAML 1.1 reads it as a base-60 number
    dhcp: true
  - name: eth1
    mtu: 9000
    addresses: [10.0.0.5/24, "fd00::5/64"]
    routes:
      - {to: default, via: 10.0.0.1, metric: 100}
      - {to: 192.168.50.0/24, via: 10.0.0.254}
      - {to: default, via: "fd00::1"}
  - name: br0
    kind: bridge
    ports: [eth2]
    addresses: [10.1.0.1/24]
  - name: eth0.100
    kind: vlan
    link: eth0
    id: 100
dns:
  nameservers: [10.0.0.1, "2001:4860:4860::8888"]
  search: [cluster.local, example.com]
"""
    )
    assert spec == NetworkSpec(
        interfaces=(
            Interface(mac="52:54:00:12:34:56", dhcp=True),
            Interface(
                name="eth1",
                mtu=9000,
                addresses=(IPv4Interface("10.0.0.5/24"), IPv6Interface("fd00::5/64")),
                routes=(
                    Route(to=DEFAULT_V4, via=IPv4Address("10.0.0.1"), metric=100),
                    Route(to=IPv4Network("192.168.50.0/24"), via=IPv4Address("10.0.0.254")),
                    Route(to=DEFAULT_V6, via=IPv6Address("fd00::1")),
                ),
            ),
            Interface(
                name="br0",
                kind=InterfaceKind.BRIDGE,
                bridge_ports=("eth2",),
                addresses=(IPv4Interface("10.1.0.1/24"),),
            ),
            Interface(name="eth0.100", kind=InterfaceKind.VLAN, vlan_link="eth0", vlan_id=100),
        ),
        dns=DNS(
            nameservers=(IPv4Address("10.0.0.1"), IPv6Address("2001:4860:4860::8888")),
            search=("cluster.local", "example.com"),
        ),
        source=NetworkSource.CONFIG,
    )


def test_interface_fields_and_network_options() -> None:
    spec = network(
        """\
waitForCarrier: false
interfaces:
  - {mac: "52-54-00-AB-CD-EF", up: false, addresses: [192.168.1.2/24], dhcp: true}
  - name: eth3
    addresses: [10.9.0.2/255.255.255.0]
    routes:
      - {to: 10.9.8.0/24}
      - {via: 10.9.8.1, metric: 0}
"""
    )
    assert spec.wait_for_carrier is False
    first, second = spec.interfaces
    assert (first.mac, first.up, first.dhcp) == ("52:54:00:ab:cd:ef", False, True)
    assert second.addresses == (IPv4Interface("10.9.0.2/24"),)
    assert second.routes == (
        Route(to=IPv4Network("10.9.8.0/24")),  # on-link: the gateway below is reached by it
        Route(to=DEFAULT_V4, via=IPv4Address("10.9.8.1"), metric=0),
    )
    assert spec.dns == DNS()


def test_network_errors_name_the_line_and_field() -> None:
    errors = network_errors(
        """\
interfaces:
  - name: eth0
    addresses: [10.0.0.300/24, 10.0.0.5, "fd00::1/64"]
    mtu: 1000
  - {name: eth1, mac: "52:54:00:00:00:01"}
  - {dhcp: true}
  - {name: eth2, adresses: [10.0.0.7/24]}
  - {name: eth3, kind: brigde}
dns: {nameservers: [10.0.0.1/24, 1.1.1.1, 8.8.8.8, 9.9.9.9], search: [-bad-.com]}
"""
    )
    assert [(e.line, e.field, e.message, e.hint) for e in errors] == [
        (
            5,
            "network.interfaces[0].addresses[0]",
            "invalid address '10.0.0.300/24'",
            "write it as address/prefix, like 10.0.0.5/24 or fd00::5/64",
        ),
        (
            5,
            "network.interfaces[0].addresses[1]",
            "'10.0.0.5' has no prefix length",
            "like 10.0.0.5/24",
        ),
        (
            6,
            "network.interfaces[0].mtu",
            "IPv6 needs an MTU of at least 1280, got 1000",
            None,
        ),
        (
            7,
            "network.interfaces[1]",
            "give name or mac, not both",
            "mac selects a physical interface whose name is not stable",
        ),
        (
            8,
            "network.interfaces[2]",
            "an interface needs a name or a mac",
            "add name: eth0, or mac: 52:54:00:12:34:56",
        ),
        (
            9,
            "network.interfaces[3].adresses",
            "unknown key 'adresses'",
            "did you mean 'addresses'?",
        ),
        (
            10,
            "network.interfaces[4].kind",
            "expected one of physical, bridge, vlan, got 'brigde'",
            "did you mean 'bridge'?",
        ),
        (
            11,
            "network.dns.nameservers[0]",
            "invalid nameserver address '10.0.0.1/24'",
            "a nameserver is one address, without /prefix",
        ),
        (
            11,
            "network.dns.nameservers",
            "at most 3 nameservers, got 4",
            "the resolver asks only the first 3",
        ),
        (11, "network.dns.search[0]", "invalid search domain '-bad-.com'", "like cluster.local"),
    ]
    assert all(e.service is None for e in errors)


def test_duplicate_interfaces_point_at_the_first() -> None:
    errors = network_errors(
        """\
interfaces:
  - name: eth0
  - mac: 52:54:00:12:34:56
  - name: eth0
  - mac: "52:54:00:12:34:56"
  - {name: eth0.7, kind: vlan, link: eth0, id: 7}
  - {name: vl7, kind: vlan, link: eth0, id: 7}
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (6, "network.interfaces[2].name", "'eth0' is configured twice (first at line 4)"),
        (
            7,
            "network.interfaces[3].mac",
            "'52:54:00:12:34:56' is configured twice (first at line 5)",
        ),
        (9, "network.interfaces[5].id", "vlan 7 on 'eth0' is configured twice (first at line 8)"),
    ]


@pytest.mark.parametrize(
    ("entry", "field", "message", "hint"),
    [
        (
            "{name: v, kind: vlan, link: eth0, id: 0}",
            "id",
            "must be between 1 and 4094, got 0",
            None,
        ),
        (
            "{name: v, kind: vlan, link: eth0, id: 4095}",
            "id",
            "must be between 1 and 4094, got 4095",
            None,
        ),
        (
            "{name: v, kind: vlan, id: 5}",
            None,
            "a vlan needs 'link'",
            "like link: eth0 and id: 100",
        ),
        (
            "{name: v, kind: vlan, link: eth0}",
            None,
            "a vlan needs 'id'",
            "like link: eth0 and id: 100",
        ),
        ("{name: v, kind: vlan, link: v, id: 5}", "link", "a vlan cannot be its own link", None),
        ("{name: eth0, id: 5}", "id", "'id' is for a vlan", "add kind: vlan"),
        ("{name: eth0, link: eth1}", "link", "'link' is for a vlan", "add kind: vlan"),
        (
            "{kind: bridge, ports: [eth0]}",
            None,
            "a bridge needs a name",
            "k4sinit creates the bridge by name",
        ),
        (
            "{mac: '52:54:00:00:00:01', kind: vlan, link: eth0, id: 3}",
            None,
            "a vlan needs a name",
            "k4sinit creates the vlan by name",
        ),
        ("{name: eth0, ports: [eth1]}", "ports", "ports are for a bridge", "add kind: bridge"),
        (
            "{name: br0, kind: bridge, ports: [br0]}",
            "ports",
            "the bridge 'br0' cannot be its own port",
            None,
        ),
        (
            "{name: br0, kind: bridge, ports: [eth1, eth1]}",
            "ports[1]",
            "'eth1' is listed twice",
            None,
        ),
        (
            "{name: br0, kind: bridge, ports: [eth1, 7]}",
            "ports[1]",
            "expected an interface name, got an integer (7)",
            None,
        ),
        ("{name: eth0, mtu: 67}", "mtu", "must be between 68 and 65535, got 67", None),
        ("{name: eth0, mtu: 65536}", "mtu", "must be between 68 and 65535, got 65536", None),
        (
            "{name: eth0, dhcp: yes please}",
            "dhcp",
            "expected a boolean, got a string ('yes please')",
            None,
        ),
        ("{name: eth0, up: 1}", "up", "expected a boolean, got an integer (1)", None),
        (
            "{name: eth0/1}",
            "name",
            "invalid interface name 'eth0/1': it cannot contain '/', ':' or white space",
            None,
        ),
        (
            "{name: averyveryverylongname}",
            "name",
            "invalid interface name 'averyveryverylongname': it is longer than 15 bytes",
            None,
        ),
        (
            "{mac: '52:54:00:12:34'}",
            "mac",
            "invalid MAC address '52:54:00:12:34'",
            "like 52:54:00:12:34:56",
        ),
        (
            "{mac: 12345}",
            "mac",
            "invalid MAC address (YAML read it as the number 12345)",
            'quote it, like mac: "52:54:00:12:34:56"',
        ),
        (
            "{mac: '52:54:00:12:34:5g'}",
            "mac",
            "invalid MAC address '52:54:00:12:34:5g'",
            "like 52:54:00:12:34:56",
        ),
        (
            "{name: eth0, addresses: 10.0.0.5/24}",
            "addresses",
            "expected a list of addresses like 10.0.0.5/24, got a string ('10.0.0.5/24')",
            None,
        ),
        (
            "{name: eth0, addresses: [10.0.0.5/24, 10.0.0.5/24]}",
            "addresses[1]",
            "10.0.0.5/24 is listed twice",
            None,
        ),
        (
            "{name: eth0, addresses: [224.0.0.1/4]}",
            "addresses[0]",
            "'224.0.0.1/4' is not a host address",
            None,
        ),
        (
            "{name: eth0, addresses: ['fd00::5']}",
            "addresses[0]",
            "'fd00::5' has no prefix length",
            "like fd00::5/64",
        ),
    ],
)
def test_interface_errors(entry: str, field: str | None, message: str, hint: str | None) -> None:
    error = only_error(
        f"services: {{a: {{command: [x]}}}}\nnetwork:\n  interfaces:\n    - {entry}\n"
    )
    expected_field = "network.interfaces[0]" + ("" if field is None else f".{field}")
    assert (error.line, error.field, error.message, error.hint) == (
        4,
        expected_field,
        message,
        hint,
    )


@pytest.mark.parametrize(
    ("route", "field", "message", "hint"),
    [
        (
            "{to: 10.0.0.0/8, via: 'fd00::1'}",
            "via",
            "gateway fd00::1 is IPv6 but 10.0.0.0/8 is IPv4",
            "a route's to and via are of one family",
        ),
        (
            "{to: 'fd00::/8', via: 10.0.0.1}",
            "via",
            "gateway 10.0.0.1 is IPv4 but fd00::/8 is IPv6",
            "a route's to and via are of one family",
        ),
        (
            "{to: 192.168.50.1/24, via: 10.0.0.1}",
            "to",
            "invalid network '192.168.50.1/24'",
            "it has host bits set, did you mean '192.168.50.0/24'?",
        ),
        (
            "{to: everywhere, via: 10.0.0.1}",
            "to",
            "invalid network 'everywhere'",
            "write a network like 192.168.50.0/24, or default",
        ),
        (
            "{via: 10.0.0.1/24}",
            "via",
            "invalid gateway address '10.0.0.1/24'",
            "a gateway is one address, without /prefix",
        ),
        ("{via: 10.0.0.1, metric: -1}", "metric", "must be between 0 and 4294967295, got -1", None),
        (
            "{via: 10.0.0.1, gateway: 10.0.0.2}",
            "gateway",
            "unknown key 'gateway'",
            "known keys: to, via, metric",
        ),
        (
            "{via: 10.9.9.9}",
            "via",
            "gateway 10.9.9.9 is not in a network of this interface",
            "add an address in its network (like 10.0.0.5/24), an on-link route, or dhcp: true",
        ),
        (
            "{to: 10.0.0.0/8, via: 10.0.0.254, metric: 5}\n      - {to: 10.0.0.0/8, via: 10.0.0.253, metric: 5}",
            None,
            "the route to 10.0.0.0/8 with metric 5 is listed twice (first at line 7)",
            "give one of them another metric",
        ),
    ],
)
def test_route_errors(route: str, field: str | None, message: str, hint: str | None) -> None:
    errors = network_errors(
        f"interfaces:\n  - name: eth0\n    addresses: [10.0.0.5/24]\n    routes:\n      - {route}\n"
    )
    error = errors[-1]
    assert len(errors) == 1, errors
    line = 8 if "listed twice" in message else 7
    index = 1 if "listed twice" in message else 0
    expected = f"network.interfaces[0].routes[{index}]" + ("" if field is None else f".{field}")
    assert (error.line, error.field, error.message, error.hint) == (line, expected, message, hint)


def test_gateways_reachable_by_dhcp_or_ipv6_are_accepted() -> None:
    spec = network(
        """\
interfaces:
  - {name: eth0, dhcp: true, routes: [{to: 10.50.0.0/16, via: 10.9.9.9}]}
  - {name: eth1, routes: [{via: "fe80::1"}, {to: "2001:db8::/32", via: "2001:db8:ffff::1"}]}
"""
    )
    assert spec.interfaces[0].routes == (
        Route(to=IPv4Network("10.50.0.0/16"), via=IPv4Address("10.9.9.9")),
    )
    assert spec.interfaces[1].routes[0] == Route(to=DEFAULT_V6, via=IPv6Address("fe80::1"))


def test_bridge_ports_cross_checks() -> None:
    errors = network_errors(
        """\
interfaces:
  - {name: br0, kind: bridge, ports: [eth0, eth1]}
  - {name: br1, kind: bridge, ports: [eth1, br0, eth9]}
  - {name: eth0, dhcp: true}
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "network.interfaces[1].ports[0]", "'eth1' is already a port of 'br0'"),
        (
            5,
            "network.interfaces[1].ports[1]",
            "the bridge 'br0' cannot be a port of another bridge",
        ),
    ]


def test_dns_errors() -> None:
    errors = network_errors(
        """\
dns:
  nameservers: [8.8.8.8, 8.8.8.8, 7, nonsense]
  search: [example.com, example.com, 5]
  domain: x
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (4, "network.dns.nameservers[1]", "8.8.8.8 is listed twice"),
        (4, "network.dns.nameservers[2]", "expected an IP address, got an integer (7)"),
        (4, "network.dns.nameservers[3]", "invalid nameserver address 'nonsense'"),
        (4, "network.dns.nameservers", "at most 3 nameservers, got 4"),
        (5, "network.dns.search[1]", "'example.com' is listed twice"),
        (5, "network.dns.search[2]", "expected a domain, got an integer (5)"),
        (6, "network.dns.domain", "unknown key 'domain'"),
    ]


def test_network_section_type_errors() -> None:
    error = only_error("services: {a: {command: [x]}}\nnetwork: [eth0]\n")
    assert (error.line, error.field) == (2, "network")
    assert error.message == "expected a mapping, got a list"
    errors = network_errors("interfaces: [eth0]\nwaitForCarrier: maybe\n")
    assert [(e.line, e.field, e.message) for e in errors] == [
        (
            3,
            "network.interfaces[0]",
            "expected an interface (a mapping with name or mac), got a string ('eth0')",
        ),
        (4, "network.waitForCarrier", "expected a boolean, got a string ('maybe')"),
    ]


# --- hostile and extreme configs (issue 11) -------------------------------------------


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


@pytest.mark.parametrize(
    ("resources", "field", "message"),
    [
        ("limits: {memory: " + "9" * 400 + "}", "limits.memory",
         "an integer of 1329 bits is too large for k4sinit, which takes 64 bits"),
        ("limits: {memory: '" + "9" * 400 + "Gi'}", "limits.memory",
         "too large, at most 9223372036854775807 bytes"),
        ("limits: {memory: 8Ti, cpu: '" + "9" * 400 + "'}", "limits.cpu",
         "too large, at most 1000000 cores"),
        ("requests: {cpu: 2000000}", "requests.cpu", "too large, at most 1000000 cores"),
        ("limits: {pids: 4194305}", "limits.pids", "must be between 1 and 4194304, got 4194305"),
    ],
)  # fmt: skip
def test_quantities_too_large_for_the_kernel_are_errors(
    resources: str, field: str, message: str
) -> None:
    error = only_error(f"services:\n  s:\n    command: [x]\n    resources: {{{resources}}}\n")
    assert (error.line, error.field, error.message) == (4, f"resources.{field}", message)


def test_the_largest_quantities_are_accepted() -> None:
    spec = one_service(
        "command: [x]\n"
        "resources: {limits: {memory: 9223372036854775807, cpu: 1000000, pids: 4194304}}\n"
    )
    assert spec.resources == Resources(
        memory=2**63 - 1, cpu_millis=10**9, pids=4194304, cpu_weight=None
    )


def test_a_long_valid_dependency_chain_loads() -> None:
    # Each service depends on the next: a chain deeper than Python's recursion limit.
    count = 3000
    text = "services:\n" + "".join(
        f"  s{i}: {{command: [x], dependsOn: [s{i + 1}]}}\n" for i in range(count - 1)
    )
    config = load(text + f"  s{count - 1}: {{command: [x]}}\n")
    assert len(config.services) == count


def test_a_long_dependency_cycle_is_named() -> None:
    count = 3000
    text = "services:\n" + "".join(
        f"  s{i}: {{command: [x], dependsOn: [s{(i + 1) % count}]}}\n" for i in range(count)
    )
    error = only_error(text)
    assert (error.line, error.service) == (2, "s0")
    cycle = [f"s{i}" for i in range(count)] + ["s0"]
    assert error.message == "dependency cycle: " + " -> ".join(cycle)


def test_did_you_mean_among_thousands_compares_a_bounded_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import difflib

    compared: list[int] = []
    real = difflib.get_close_matches

    def counting(word: str, possibilities: list[str], n: int, cutoff: float) -> list[str]:
        compared.append(len(possibilities))
        return real(word, possibilities, n, cutoff)

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    count = 3000
    text = "services:\n" + "".join(
        f"  service-{i}: {{command: [x], dependsOn: [servise-{(i + 1) % count}]}}\n"
        for i in range(count)
    )
    errors = errors_of(text)
    assert len(errors) == count
    assert errors[0].message == "unknown service 'servise-1' in dependsOn"
    assert errors[0].hint == "did you mean 'service-1'?"
    assert all(e.hint == f"did you mean 'service-{i + 1}'?" for i, e in enumerate(errors[:-1]))
    assert len(compared) == count
    assert max(compared) <= 32


def test_did_you_mean_in_a_small_config_still_compares_every_name() -> None:
    errors = errors_of("""
        services:
          containerd: {command: [x]}
          kubelet: {command: [x], dependsOn: [contd, netwrk, kubelet-x]}
    """)
    assert [(e.message, e.hint) for e in errors] == [
        ("unknown service 'contd' in dependsOn", "did you mean 'containerd'?"),
        ("unknown service 'netwrk' in dependsOn", "did you mean 'network'?"),
        ("unknown service 'kubelet-x' in dependsOn", None),
    ]


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


def test_a_backoff_multiplier_is_at_most_10() -> None:
    error = only_error(
        "services: {s: {command: [x], restartBackoff: {multiplier: 1.0e+300, maxSeconds: 1.0e+300}}}"
    )
    assert (error.field, error.message) == (
        "restartBackoff.multiplier",
        "must be between 1 and 10, got 1e+300",
    )
    spec = one_service("command: [x]\nrestartBackoff: {multiplier: 10}\n")
    assert spec.backoff.multiplier == 10.0


def test_http_get_path_host_and_header_values_are_what_http_can_send() -> None:
    errors = errors_of(r"""
        services:
          s:
            command: [x]
            readinessProbe:
              httpGet:
                port: 80
                host: "example.com\r\nX-Evil: 1"
                path: "/a\r\nX-Evil: 1"
                httpHeaders: [{name: X-A, value: "café"}]
          t:
            command: [x]
            readinessProbe: {httpGet: {port: 80, path: /a b}}
          u:
            command: [x]
            readinessProbe: {tcpSocket: {port: 80, host: "a b"}}
    """)
    assert [(e.line, e.service, e.field, e.message) for e in errors] == [
        (7, "s", "readinessProbe.httpGet.host", "invalid host 'example.com\\r\\nX-Evil: 1'"),
        (8, "s", "readinessProbe.httpGet.path",
         "invalid path '/a\\r\\nX-Evil: 1': HTTP sends printable ASCII without spaces"),
        (9, "s", "readinessProbe.httpGet.httpHeaders[0].value",
         "an HTTP header value must be printable ASCII"),
        (12, "t", "readinessProbe.httpGet.path",
         "invalid path '/a b': HTTP sends printable ASCII without spaces"),
        (15, "u", "readinessProbe.tcpSocket.host", "invalid host 'a b'"),
    ]  # fmt: skip
    assert errors[0].hint == "a host name or an IP address"
    assert errors[1].hint == "percent-encode the rest, like %20 for a space"


def test_http_get_hosts_and_paths_that_are_fine() -> None:
    for host in ("localhost", "10.0.0.1", "::1", "fd00::1", "Node-1.example.COM"):
        action = probe(f"httpGet: {{port: 1, host: '{host}', path: '/a%20b?x=1&y=~'}}")
        assert action is not None and isinstance(action.action, HTTPGetAction)
        assert (action.action.host, action.action.path) == (host, "/a%20b?x=1&y=~")


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
