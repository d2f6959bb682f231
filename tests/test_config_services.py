"""Tests for k4sinit.config.services: service names, commands, env, dependencies,
restarts and stop signals."""

from __future__ import annotations

import signal

import pytest

from k4sinit.core.config import Config
from k4sinit.core.spec import (
    Backoff,
    Condition,
    RestartPolicy,
    ServiceSpec,
)
from tests.config_helpers import errors_of, load, one_service, only_error, where


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


def test_depends_on_list_means_ready() -> None:
    config = load("""
        services:
          a: {command: [a]}
          b: {command: [b]}
          c: {command: [c], dependsOn: [b, a]}
    """)
    assert config.services["c"].depends_on == (("b", Condition.READY), ("a", Condition.READY))


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
