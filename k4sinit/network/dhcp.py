"""DHCPv4 for one interface: pyroute2's client in its own thread, leases reported to trio.

pyroute2 0.9.7 ships an asyncio DHCP client (``pyroute2.dhcp.client.AsyncDHCPClient``)
that does discovery, renewal at T1, rebinding at T2, expiry and DHCPRELEASE on exit.
It needs an asyncio loop, so each attempt runs ``asyncio.run`` in a dedicated thread
and hands its events to the trio side with ``trio.from_thread.run_sync``; nothing it
does can block the trio loop. The client configures nothing: it runs no pyroute2
hooks that touch the interface, so whoever receives ``on_lease`` (the network
module) applies the address, route and DNS. pyroute2 sends and receives through a
raw packet socket, so renewal and release work before the address is applied.

Life of ``DHCPClient.run``::

    start attempt (thread: asyncio.run(AsyncDHCPClient))
        |            BOUND / RENEWED / REBOUND  -> on_lease(Lease)
        |            EXPIRED / NAK              -> on_lost(reason); pyroute2 looks again
        |-- no lease within offer_timeout -> attempt ends: on_error("eth0: no DHCP offer
        |   after 10s; retrying in 2s"), backoff sleep, next attempt
        '-- cancelled -> stop the thread's loop; pyroute2 sends DHCPRELEASE; wait at most
            stop_timeout (shielded); the lease file is removed; Cancelled propagates

The lease is kept by pyroute2 as ``<lease_dir>/<ifname>.lease.json`` (never the cwd);
a new attempt after a lost link asks for that lease again (INIT-REBOOT) before
discovering. What pyroute2 0.9.7 does not do: the classless static routes option
(121) is not decoded, and it retransmits more often than RFC 2131 asks in
RENEWING/REBINDING (harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import structlog
import trio

from k4sinit.core.restart import backoff_delay
from k4sinit.core.spec import Backoff

DEFAULT_LEASE_DIR = Path("/run/k4sinit/dhcp")


@dataclass(frozen=True, slots=True)
class Lease:
    """What a DHCP server granted; immutable.

    ``lease_seconds`` is None for an infinite lease; ``renew_at`` and
    ``expires_at`` are ``trio.current_time()`` values (None when infinite).
    ``domain`` is option 15; ``search`` is option 119 (RFC 3397), empty if not sent.
    """

    interface: str
    address: IPv4Interface
    router: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    domain: str | None
    search: tuple[str, ...]
    hostname: str | None
    mtu: int | None
    server: IPv4Address | None
    lease_seconds: int | None
    renew_at: float | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class _Bound:
    """A lease as read in the DHCP thread; times are relative to when it was read."""

    fields: dict[str, Any]
    renewal_in: float | None
    expiration_in: float | None


@dataclass(frozen=True, slots=True)
class _Lost:
    reason: str


@dataclass(frozen=True, slots=True)
class _Ended:
    """The attempt's thread is done; ``reason`` says why (empty when asked to stop)."""

    reason: str


_Event = _Bound | _Lost | _Ended


@dataclass
class _Control:
    """Shared between one attempt's thread and the trio task that started it."""

    token: trio.lowlevel.TrioToken
    send: trio.MemorySendChannel[_Event]
    finished: trio.Event = field(default_factory=trio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    loop: asyncio.AbstractEventLoop | None = None
    stop_event: asyncio.Event | None = None
    stopping: bool = False

    def request_stop(self) -> None:
        """Ask the thread's loop to stop (from any thread); works before it started."""
        with self.lock:
            self.stopping = True
            if self.loop is not None and self.stop_event is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self.loop.call_soon_threadsafe(self.stop_event.set)

    def deliver(self, event: _Event) -> None:
        """Hand ``event`` to the trio side (from the DHCP thread); never raises."""
        with contextlib.suppress(
            trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            trio.from_thread.run_sync(self.send.send_nowait, event, trio_token=self.token)


class DHCPClient:
    """Keeps a DHCPv4 lease on one interface and reports it; see the module docstring.

    ``on_lease(lease)`` is called on every grant (bound, renewed, rebound),
    ``on_lost(reason)`` when a lease expires or the server refuses it (NAK), and
    ``on_error(reason)`` when an attempt fails (no server answering, no such
    interface). All three run in the trio task of ``run``; an exception in one of
    them propagates out of ``run`` (it is the caller's bug). ``reason`` holds the
    latest of these as text for status displays.
    """

    def __init__(
        self,
        interface: str,
        *,
        on_lease: Callable[[Lease], object],
        on_lost: Callable[[str], object] = lambda reason: None,
        on_error: Callable[[str], object] = lambda reason: None,
        lease_dir: Path = DEFAULT_LEASE_DIR,
        hostname: str | None = None,
        offer_timeout: float = 10.0,
        stop_timeout: float = 3.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self.interface = interface
        self.lease_dir = lease_dir
        self.hostname = hostname
        self.offer_timeout = offer_timeout
        self.stop_timeout = stop_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease: Lease | None = None
        self.reason = "not started"
        self._on_lease = on_lease
        self._on_lost = on_lost
        self._on_error = on_error
        self._rng = rng or random.Random()
        self._log = (log or structlog.get_logger("k4sinit")).bind(interface=interface)

    @property
    def lease_file(self) -> Path:
        """Where pyroute2 keeps the current lease of this interface."""
        return self.lease_dir / f"{self.interface}.lease.json"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Get and keep a lease until cancelled; never returns.

        Started at once (the lease arrives later through ``on_lease``). Failed
        attempts are reported through ``on_error`` and retried with backoff
        (``backoff_initial`` doubling up to ``backoff_max``, +/-20 % jitter).
        On cancellation the lease is released (DHCPRELEASE), waiting at most
        ``stop_timeout`` seconds for the thread; then ``Cancelled`` propagates.
        Raises nothing else, except what the callbacks raise.
        """
        task_status.started()
        failures = 0
        while True:
            reason, got_lease = await self._attempt()
            failures = 1 if got_lease else failures + 1
            delay = self.retry_delay(failures)
            self._report_error(f"{self.interface}: {reason}; retrying in {round(delay, 1):g}s")
            await trio.sleep(delay)

    def retry_delay(self, failures: int, rand: float | None = None) -> float:
        """Seconds to wait after ``failures`` (>= 1) failed attempts in a row.

        ``backoff_initial * 2**(failures-1)``, at most ``backoff_max``, spread
        by +/-20 % (``rand`` uniform in [0, 1), by default from the client's
        random source). The services' restart backoff computes it
        (:func:`k4sinit.core.restart.backoff_delay`): the same doubling, bounded
        for any count, one step later because a service's first restart is
        immediate and a DHCP retry's is not.
        """
        backoff = Backoff(initial=self.backoff_initial, max=self.backoff_max)
        rand = self._rng.random() if rand is None else rand
        return backoff_delay(backoff, failures + 1, rand)

    def _report_error(self, reason: str) -> None:
        self.reason = reason
        self._log.warning("dhcp attempt failed", reason=reason)
        self._on_error(reason)

    async def _attempt(self) -> tuple[str, bool]:
        """Run pyroute2's client in a thread until it gives up; (why, got a lease)."""
        send, receive = trio.open_memory_channel[_Event](math.inf)
        ctl = _Control(trio.lowlevel.current_trio_token(), send)
        thread = threading.Thread(
            target=self._thread_main,
            args=(ctl,),
            name=f"k4sinit-dhcp-{self.interface}",
            daemon=True,  # abandoned (not joined) if it overruns stop_timeout
        )
        got_lease = False
        thread.start()
        try:
            async with receive:
                async for event in receive:
                    if isinstance(event, _Ended):
                        return event.reason, got_lease
                    if isinstance(event, _Bound):
                        got_lease = True
                        self._bound(event)
                    else:
                        self._lost(event.reason)
            return "DHCP thread ended without a reason", got_lease  # pragma: no cover
        finally:
            ctl.request_stop()
            with trio.CancelScope(shield=True), trio.move_on_after(self.stop_timeout):
                await ctl.finished.wait()
            if not ctl.finished.is_set():
                self._log.warning(
                    "dhcp thread did not stop in time; abandoned", timeout=self.stop_timeout
                )

    def _bound(self, event: _Bound) -> None:
        now = trio.current_time()
        lease = Lease(
            **event.fields,
            renew_at=None if event.renewal_in is None else now + event.renewal_in,
            expires_at=None if event.expiration_in is None else now + event.expiration_in,
        )
        if self.lease is None or self.lease.address != lease.address:
            self._log.info("dhcp lease", address=str(lease.address), router=str(lease.router))
        self.lease = lease
        self.reason = f"{self.interface}: bound to {lease.address} from {lease.server}"
        self._on_lease(lease)

    def _lost(self, reason: str) -> None:
        text = f"{self.interface}: {reason}"
        self._log.warning("dhcp lease lost", reason=text)
        self.lease = None
        self.reason = text
        self._on_lost(text)

    # --- the DHCP thread ---------------------------------------------------

    def _thread_main(self, ctl: _Control) -> None:
        reason = ""
        try:
            self.lease_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            reason = asyncio.run(self._async_main(ctl))
        except Exception as exc:  # any failure of pyroute2's client ends the attempt
            reason = _describe_error(exc)
        finally:
            ctl.deliver(_Ended(reason))
            with contextlib.suppress(trio.RunFinishedError):
                ctl.token.run_sync_soon(ctl.finished.set)

    async def _async_main(self, ctl: _Control) -> str:
        # Imported here: pyroute2's import costs ~100 ms, paid only when DHCP is used.
        from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
        from pyroute2.dhcp.enums.dhcp import Option
        from pyroute2.dhcp.hooks import Trigger, hook

        stop = asyncio.Event()
        with ctl.lock:
            ctl.loop, ctl.stop_event = asyncio.get_running_loop(), stop
            if ctl.stopping:
                return ""

        async def granted(lease: Any) -> None:
            ctl.deliver(_read_lease(lease, self.interface))

        async def expired(lease: Any) -> None:
            ctl.deliver(_Lost(f"lease of {lease.ip} expired; looking for a server again"))

        async def unbound(lease: Any) -> None:
            if not ctl.stopping:  # UNBOUND also runs for our own release on exit
                ctl.deliver(_Lost(f"server refused the lease of {lease.ip} (DHCPNAK)"))

        config = ClientConfig(
            interface=self.interface,
            lease_type=_lease_type(self.lease_dir),
            hooks=(
                hook(Trigger.BOUND, Trigger.RENEWED, Trigger.REBOUND)(granted),
                hook(Trigger.EXPIRED)(expired),
                hook(Trigger.UNBOUND)(unbound),
            ),
            requested_parameters=(
                Option.SUBNET_MASK,
                Option.ROUTER,
                Option.NAME_SERVER,
                Option.HOST_NAME,
                Option.DOMAIN_NAME,
                Option.INTERFACE_MTU,
                Option.BROADCAST_ADDRESS,
                Option.LEASE_TIME,
                Option.RENEWAL_TIME,
                Option.REBINDING_TIME,
                Option.DOMAIN_SEARCH,
            ),
            handle_signals=False,  # signals belong to PID 1's trio loop
            write_pidfile=False,
            release=True,
            vendor_id="k4sinit",
            host_name=self.hostname,
        )
        client = AsyncDHCPClient(config)
        async with client:
            await client.bootstrap()
            stopped = asyncio.ensure_future(stop.wait())
            watch = asyncio.ensure_future(self._watch(client))
            done, pending = await asyncio.wait(
                {stopped, watch}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            reason = "" if stopped in done else watch.result()
            ctl.stopping = True
            released = client.lease is not None and not client.lease.expired
        # Exiting the client sent DHCPRELEASE; a released lease must not be asked for again.
        if released:
            self.lease_file.unlink(missing_ok=True)
        return reason

    async def _watch(self, client: Any) -> str:
        """Return a reason once the client has spent ``offer_timeout`` without a lease."""
        from pyroute2.dhcp.fsm import State

        while True:
            try:
                await client.wait_for_state(State.BOUND, timeout=self.offer_timeout)
            except TimeoutError:
                return _waiting_reason(client.state.name, self.offer_timeout)
            # Bound: pyroute2 renews and rebinds by itself; after an expiry or a
            # NAK it starts over in SELECTING, and the offer timeout applies again.
            await client.wait_for_state(State.SELECTING)


def _waiting_reason(state: str, timeout: float) -> str:
    after = f"after {timeout:g}s"
    if state == "REQUESTING":
        return f"DHCP offer but no DHCPACK {after}"
    if state == "REBOOTING":
        return f"no answer to the request for the previous lease {after}"
    return f"no DHCP offer {after}"


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno in (2, 19):  # ENOENT (pyroute2), ENODEV
        return "no such interface"
    if isinstance(exc, OSError) and exc.errno == 100:  # ENETDOWN
        return "link is down"
    return f"DHCP client failed: {exc!r}"


def _lease_type(directory: Path) -> Any:
    """pyroute2's JSON lease, kept in ``directory`` rather than the cwd."""
    from pyroute2.dhcp.leases import JSONFileLease

    class _DirLease(JSONFileLease):  # type: ignore[misc]
        @classmethod
        def _get_lease_dir(cls) -> Path:
            return directory

    return _DirLease


def _read_lease(lease: Any, interface: str) -> _Bound:
    """Turn pyroute2's lease (its raw DHCPACK options) into plain fields."""
    options: dict[str, Any] = lease.ack["options"]
    mask = options.get("subnet_mask") or "255.255.255.255"
    lease_time: int | None = options.get("lease_time")
    routers = options.get("router") or []
    mtu = options.get("interface_mtu")
    server = options.get("server_id")
    hostname = options.get("host_name")
    domain = options.get("domain_name")
    infinite = lease_time in (None, -1)  # option 51 is signed here: -1 is 0xffffffff
    return _Bound(
        fields={
            "interface": interface,
            "address": IPv4Interface(f"{lease.ip}/{mask}"),
            "router": IPv4Address(routers[0]) if routers else None,
            "dns": tuple(IPv4Address(a) for a in options.get("name_server") or ()),
            "domain": domain or None,
            "search": decode_domain_search(options.get("domain_search") or ()),
            "hostname": hostname or None,
            "mtu": int(mtu) if mtu else None,
            "server": IPv4Address(server) if server else None,
            "lease_seconds": None if infinite or lease_time is None else int(lease_time),
        },
        renewal_in=None if infinite else lease.renewal_in,
        expiration_in=None if infinite else lease.expiration_in,
    )


def decode_domain_search(data: Sequence[int] | bytes) -> tuple[str, ...]:
    """Decode option 119 (RFC 3397: DNS names, with RFC 1035 compression pointers).

    A malformed option yields the names decoded before the fault.
    """
    raw = bytes(data)
    names: list[str] = []
    pos = 0
    while pos < len(raw):
        name, pos = _read_name(raw, pos)
        if name is None:
            break
        names.append(name)
    return tuple(names)


def _read_name(raw: bytes, pos: int) -> tuple[str | None, int]:
    """The name at ``pos`` and the offset after it; None if malformed."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if pos >= len(raw):
            return None, len(raw)
        length = raw[pos]
        if length == 0:
            return ".".join(labels), pos + 1 if end is None else end
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(raw) or jumps > len(raw):
                return None, len(raw)
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | raw[pos + 1]
            jumps += 1
            continue
        label = raw[pos + 1 : pos + 1 + length]
        if len(label) < length:
            return None, len(raw)
        labels.append(label.decode("ascii", "replace"))
        pos += 1 + length
