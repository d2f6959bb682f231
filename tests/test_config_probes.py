"""Tests for k4sinit.config.probes: the probe handlers, their timing and their errors."""

from __future__ import annotations

import textwrap

from k4sinit.core.spec import (
    ExecAction,
    FileAction,
    HTTPGetAction,
    NotifyAction,
    Probe,
    TCPSocketAction,
    TLSConfig,
    UnixSocketAction,
)
from tests.config_helpers import errors_of, one_service, only_error


def probe(body: str, kind: str = "readinessProbe") -> Probe | None:
    spec = one_service(f"command: [x]\n{kind}:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return {
        "readinessProbe": spec.readiness_probe,
        "livenessProbe": spec.liveness_probe,
        "startupProbe": spec.startup_probe,
    }[kind]


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
    assert errors[0].hint == "add one of exec, httpGet, tcpSocket, unixSocket, file, notify"
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


def test_notify_probes() -> None:
    assert probe("notify: {}") == Probe(NotifyAction())
    liveness = probe("{notify: {}, periodSeconds: 5, failureThreshold: 2}", "livenessProbe")
    assert liveness == Probe(NotifyAction(), period=5.0, failure_threshold=2)
    spec = one_service("command: [x]\nlivenessProbe: {notify: {}}")
    assert spec.uses_notify_socket and spec.readiness_probe is None


def test_notify_probe_errors() -> None:
    errors = errors_of("""
        services:
          s:
            command: [x]
            readinessProbe: {notify: {}, periodSeconds: 2}
            livenessProbe: {notify: {}, timeoutSeconds: 2}
            startupProbe: {notify: {when: now}}
    """)
    assert [(e.line, e.field, e.message, e.hint) for e in errors] == [
        (
            4,
            "readinessProbe.periodSeconds",
            "has no meaning with notify: READY=1 makes the service ready, nothing is polled",
            "remove periodSeconds",
        ),
        (
            5,
            "livenessProbe.timeoutSeconds",
            "has no meaning with notify: WATCHDOG=1 must come every periodSeconds",
            "remove timeoutSeconds",
        ),
        (
            6,
            "startupProbe.notify.when",
            "unknown key 'when'",
            "notify takes no options: write notify: {}",
        ),
        (
            6,
            "startupProbe.notify",
            "notify is not a startupProbe handler",
            "use it as readinessProbe (READY=1) or livenessProbe (WATCHDOG=1)",
        ),
    ]


def test_notification_fd() -> None:
    assert one_service("command: [x]\nnotificationFd: 3").notification_fd == 3
    errors = errors_of("""
        services:
          s:
            command: [x]
            notificationFd: 12
          t:
            command: [x]
            notificationFd: 4
            readinessProbe: {file: {path: /x}}
    """)
    assert [(e.line, e.service, e.field, e.message) for e in errors] == [
        (4, "s", "notificationFd", "must be between 3 and 9, got 12"),
        (7, "t", "notificationFd", "notificationFd and readinessProbe both say when it is ready"),
    ]
