"""Tests for k4sinit.config.resources: Kubernetes quantities as cgroup2 takes them."""

from __future__ import annotations

import pytest

from k4sinit.core.spec import (
    Resources,
)
from tests.config_helpers import errors_of, load, one_service, only_error


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
