"""Service specifications: the validated, immutable description of what to run.

Field names follow the Kubernetes container spec where one exists (``command``,
``args``, ``env``, ``workingDir``, probes, ``restartPolicy``,
``terminationGracePeriodSeconds``) so operators can copy what they know. The
config loader (:mod:`k4sinit.config`) builds these from YAML; nothing here does
I/O or imports trio.

Defaults that differ from Kubernetes, and why:

* ``periodSeconds`` defaults to 1 s (Kubernetes: 10 s). An init gates start
  order on readiness, so the probe period adds straight to boot time.
* ``terminationGracePeriodSeconds`` defaults to 10 s (Kubernetes: 30 s). The
  node's roles exit on SIGTERM in well under a second; stop runs along the
  dependency chain, so a long default would multiply into a slow shutdown.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field
from typing import Protocol

# Names a service can depend on that are not services (network, pki), and the
# names ``k4sinit status NAME`` answers for itself: core/reserved.py, re-exported.
from k4sinit.core.reserved import BUILTIN_DEPENDENCIES as BUILTIN_DEPENDENCIES
from k4sinit.core.reserved import NETWORK as NETWORK
from k4sinit.core.reserved import PKI as PKI
from k4sinit.core.reserved import PREFLIGHT as PREFLIGHT
from k4sinit.core.reserved import STATUS_NAMES as STATUS_NAMES


class RestartPolicy(enum.Enum):
    """When a service that exited is started again."""

    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class Condition(enum.Enum):
    """What a dependent waits for in ``dependsOn``."""

    STARTED = "Started"  # process running (startup probe passed, if any)
    READY = "Ready"  # readiness probe passing (or running, without one)
    COMPLETED = "Completed"  # a oneshot that exited 0


class Dependency(Protocol):
    """Something a service can wait for in ``dependsOn`` (a service, or a built-in)."""

    name: str

    def satisfies(self, condition: Condition) -> bool: ...

    def unmet_reason(self, condition: Condition) -> str:
        """Why ``condition`` does not hold, e.g. ``"not ready"``."""
        ...

    async def changed(self) -> None:
        """Return at the next change of state or readiness."""
        ...


# --- probe actions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecAction:
    """Run ``command``; success is exit code 0."""

    command: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS material for an HTTPS probe (a k4sinit extension of ``httpGet``).

    Without ``ca_file`` the server certificate is not verified, as kubelet does
    for HTTPS probes. ``cert_file``/``key_file`` are a client certificate.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPGetAction:
    """GET ``scheme://host:port/path``; success is a status in 200..399."""

    port: int
    host: str = "127.0.0.1"
    path: str = "/"
    scheme: str = "HTTP"  # or "HTTPS"
    headers: tuple[tuple[str, str], ...] = ()
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class TCPSocketAction:
    """Success is an accepted TCP connection."""

    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class UnixSocketAction:
    """Success is an accepted connection on a unix stream socket."""

    path: str


@dataclass(frozen=True, slots=True)
class FileAction:
    """Success is ``path`` existing."""

    path: str


@dataclass(frozen=True, slots=True)
class NotifyAction:
    """The service says it itself, over systemd's ``NOTIFY_SOCKET`` (sd_notify).

    As a readiness probe: ready on ``READY=1``, at once, no polling (not
    ready again after ``STOPPING=1``). As a liveness probe: ``WATCHDOG=1``
    within every ``periodSeconds`` (the service gets it as ``WATCHDOG_USEC``);
    ``failureThreshold`` periods without one fail it. Not a startup probe.
    """


ProbeAction = (
    ExecAction | HTTPGetAction | TCPSocketAction | UnixSocketAction | FileAction | NotifyAction
)


@dataclass(frozen=True, slots=True)
class Probe:
    """A Kubernetes probe: one action and its timing. Seconds may be fractional."""

    action: ProbeAction
    initial_delay: float = 0.0
    period: float = 1.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays for a service that keeps dying quickly.

    The first restart after a death is immediate; each further death that
    follows without a stable run waits ``initial * multiplier**(n-1)`` seconds
    (capped at ``max``, spread by +/- ``jitter`` as a fraction). A run counts as
    stable once the service has been ready (or running, without a readiness
    probe) for ``reset_after`` seconds: the count starts over. After
    ``crash_loop_limit`` quick deaths in a row the service is ``failed``.
    """

    initial: float = 1.0
    max: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 30.0
    crash_loop_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Resources:
    """``resources``, as cgroup2 enforces them (None: no limit, the default weight).

    Limits: ``memory`` in bytes (memory.max), ``cpu_millis`` in millicores
    (cpu.max), ``pids`` a count (pids.max). ``cpu_weight`` (cpu.weight, 1-10000)
    is the share of CPU under contention, from ``requests.cpu`` at 100 per CPU:
    a service without a request weighs as the kernel's default, 100, one CPU's
    worth. Names and units mirror Kubernetes.
    """

    memory: int | None = None
    cpu_millis: int | None = None
    pids: int | None = None
    cpu_weight: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Everything k4sinit needs to run, probe, restart and stop one service."""

    name: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    depends_on: tuple[tuple[str, Condition], ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    backoff: Backoff = field(default_factory=Backoff)
    stop_signal: signal.Signals = signal.SIGTERM
    termination_grace_period: float = 10.0
    resources: Resources = field(default_factory=Resources)
    # The file to execute when it is not argv[0] on PATH: a multicall binary
    # that dispatches on argv[0] (busybox style); see k4sinit.node.roles.
    executable: str | None = None
    # A node that has this service failed for longer than the watchdog's grace is
    # reset by its hardware watchdog (k4sinit.pid1.watchdog); without one, no effect.
    critical: bool = False
    # s6's notification-fd: the service gets a pipe on this fd; a newline
    # written to it makes the service ready (instead of a readiness probe).
    notification_fd: int | None = None

    @property
    def uses_notify_socket(self) -> bool:
        """A probe of the service is ``notify``: it gets ``NOTIFY_SOCKET``."""
        return any(
            isinstance(p.action, NotifyAction)
            for p in (self.readiness_probe, self.liveness_probe, self.startup_probe)
            if p is not None
        )

    @property
    def argv(self) -> tuple[str, ...]:
        """The full command line: ``command`` followed by ``args``."""
        return self.command + self.args
