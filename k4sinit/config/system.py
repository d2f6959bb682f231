"""The top-level keys PID 1 sets up before any service: ``hostname``,
``modules``, ``sysctls`` and ``boot`` (:class:`~k4sinit.core.config.SystemSpec`)."""

from __future__ import annotations

import re
from typing import Any

from k4sinit.config.document import UNREADABLE
from k4sinit.config.reader import NUL, Reader, given, is_bool, kind_of
from k4sinit.core.config import Fallback, SwitchRoot, SystemSpec
from k4sinit.core.names import HOST_NAME_MAX, is_dns_subdomain

__all__ = ["read_system"]

_MODULE = re.compile(r"[A-Za-z0-9_-]+")
_SYSCTL = re.compile(r"[a-z0-9_*-]+([./][a-z0-9_*-]+)+", re.IGNORECASE)


def read_system(top: Reader) -> SystemSpec:
    """``hostname``, ``modules``, ``sysctls`` and ``boot``: what PID 1 sets up."""
    hostname = top.string("hostname")
    if hostname is not None and not is_dns_subdomain(hostname, HOST_NAME_MAX):
        top.error(
            f"invalid hostname {hostname!r}",
            "lowercase letters, digits, '-' and '.'",
            key="hostname",
        )
        hostname = None
    modules = top.strings("modules")
    for i, module in enumerate(modules or ()):
        if not _MODULE.fullmatch(module):
            top.doc.error(
                ("modules", i),
                f"invalid module name {module!r}",
                "a name like br_netfilter, without .ko",
            )
    sysctls = _read_sysctls(top)
    return SystemSpec(
        **given(hostname=hostname, modules=modules, sysctls=sysctls or None),
        **_read_boot(top),
    )


def _read_sysctls(top: Reader) -> tuple[tuple[str, str], ...]:
    """``sysctls``: name -> value (a string or a number), the valid ones in file order."""
    sysctls: list[tuple[str, str]] = []
    section = top.mapping(
        "sysctls", hint="write it as key: value pairs, e.g. net.ipv4.ip_forward: 1"
    )
    for key in section.data if section else ():
        assert section is not None
        section.known.append(key)
        value = section.data[key]
        if not _SYSCTL.fullmatch(key):
            section.error(f"invalid sysctl name {key!r}", "like net.ipv4.ip_forward", key=key)
        elif value is UNREADABLE:
            continue  # reported where it was read
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            section.error(f"expected a string or number, got {kind_of(value)}", key=key)
        elif isinstance(value, str) and "\0" in value:
            section.error(NUL, key=key)
        else:
            sysctls.append((key, str(value)))
    return tuple(sysctls)


def _read_boot(top: Reader) -> dict[str, Any]:
    """``boot``: what PID 1 does when booting fails, and how it boots; the
    :class:`SystemSpec` fields given."""
    boot = top.mapping("boot")
    if boot is None:
        return {}
    fallback = boot.choice("fallback", [f.value for f in Fallback])
    delay = boot.number("fallbackDelaySeconds")
    switch = boot.choice("switchRoot", [s.value for s in SwitchRoot])
    shell = boot.strings("shell", non_empty=True)
    preflight = boot.choice("preflight", ["enforce", "warn"])
    coldplug = boot.take("coldplug", "a boolean", is_bool, hint="true or false")
    boot.finish()
    return given(
        fallback=None if fallback is None else Fallback(fallback),
        fallback_delay=delay,
        switch_root=None if switch is None else SwitchRoot(switch),
        shell=shell,
        preflight=preflight,
        coldplug=coldplug,
    )
