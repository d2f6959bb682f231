"""``resources``: a service's (or a role's) limits and CPU request, in
Kubernetes quantities, as cgroup2 takes them (:class:`~k4sinit.core.spec.Resources`)."""

from __future__ import annotations

import re
import reprlib
from decimal import Decimal

from k4sinit.config.document import UNREADABLE
from k4sinit.config.reader import Reader
from k4sinit.core.spec import Resources

__all__ = ["read_resources"]

_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?")
_MEMORY_UNITS = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_CPU_UNITS: dict[str | None, int] = {None: 1000, "m": 1}
_CPU_HINT = "cores (0.5, 2) or millicores (500m)"
# What the kernel takes: memory.max in bytes as a signed 64-bit page count's worth
# (Kubernetes' int64 quantities end there too); cpu.max's quota (100 per millicore,
# in microseconds) well below its 2^44 limit; pids.max up to PID_MAX_LIMIT.
_MAX_MEMORY = (2**63 - 1, "9223372036854775807 bytes")
_MAX_CPU = (10**9, "1000000 cores")
_MAX_PIDS = 4 * 1024 * 1024


def read_resources(r: Reader) -> Resources | None:
    """``resources: {limits: {memory, cpu, pids}, requests: {cpu}}``, Kubernetes quantities.

    ``requests.cpu`` becomes cgroup2's cpu.weight at 100 per CPU (1000m: 100, the
    kernel's default), within cpu.weight's 1-10000.
    """
    resources = r.mapping("resources")
    if resources is None:
        return None
    limits = resources.mapping("limits", hint="write it as limits: {memory: 256Mi, cpu: 500m}")
    requests = resources.mapping("requests", hint="write it as requests: {cpu: 2}")
    resources.finish()
    memory = cpu = pids = weight = None
    if limits is not None:
        memory = _quantity(
            limits, "memory", _MEMORY_UNITS, "bytes, or 256Mi / 1Gi / 500M", _MAX_MEMORY
        )
        cpu = _quantity(limits, "cpu", _CPU_UNITS, _CPU_HINT, _MAX_CPU)
        pids = limits.integer("pids", 1, maximum=_MAX_PIDS)
        limits.finish()
    if requests is not None:
        request = _quantity(requests, "cpu", _CPU_UNITS, _CPU_HINT, _MAX_CPU)
        requests.finish()
        if request is not None:
            weight = min(max(round(request / 10), 1), 10000)
    if limits is None and requests is None:
        return None
    return Resources(memory=memory, cpu_millis=cpu, pids=pids, cpu_weight=weight)


def _quantity(
    r: Reader, key: str, units: dict[str | None, int], hint: str, maximum: tuple[int, str]
) -> int | None:
    """A Kubernetes quantity as an integer in the smallest unit of ``units``, at most
    ``maximum`` (the number, and how an error says it)."""
    r.known.append(key)
    value = r.data.get(key)
    if value is None or value is UNREADABLE:
        return None
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None or match.group(2) not in units:
        r.error(f"invalid quantity {reprlib.repr(value)}", hint, key=key)
        return None
    exact = Decimal(match.group(1)) * units[match.group(2)]  # exact, however many digits
    if exact > maximum[0]:
        r.error(f"too large, at most {maximum[1]}", key=key)
        return None
    amount = round(exact)
    if amount < 1:
        r.error(f"must be positive, got {value!r}", hint, key=key)
        return None
    return amount
