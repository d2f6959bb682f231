"""The node's network: apply a :class:`~k4sinit.core.netspec.NetworkSpec`, keep it, say when it is ready.

One :class:`Network` per daemon, made by PID 1 (``pid1/boot.py``) or ``k4sinit
run`` and run by the daemon::

    network = Network(spec, log, resolv_conf=..., hosts=..., on_dhcp_hostname=...)
    await nursery.start(network.run)  # started() once the config was applied once
        # run() is: await nursery.start(network.watch)  (first dump done: state known)
        #           await network.apply()   (loopback, interfaces, routes, /etc files)
        #           one DHCP client per DHCP interface, once its link exists
        ... netlink events keep the state; a late NIC, a carrier that returns or a
            new lease gets its interface's config applied again, without a restart ...
    network.satisfies(Condition.READY), unmet_reason(...), await changed()  # supervisor
    network.snapshot()                                  # k4sinit status network
    network.ready, network.node_addresses()             # the node's PKI
    # cancelling run() stops watching and releases the DHCP leases

The parts, each a module of this package: :mod:`~k4sinit.network.netlink`
(pyroute2, in worker threads: configure, dump, events), :mod:`~k4sinit.network.mirror`
(the kernel's state, kept from events), :mod:`~k4sinit.network.reapply` (when an
interface is applied again), :mod:`~k4sinit.network.leases` (what a DHCP lease
adds to its interface), :mod:`~k4sinit.network.etcfiles` (resolv.conf and hosts),
:mod:`~k4sinit.network.readiness` (ready or why not) and
:mod:`~k4sinit.network.snapshot` (the status' wire form).

Every netlink call runs in a worker thread, one batch at a time (a
``CapacityLimiter(1)``). Events come from an ``IPRSocket``, read without blocking
after ``trio.lowlevel.wait_readable``; when the kernel drops events (ENOBUFS) the
socket is reopened and the state dumped afresh.

Nothing here raises for a bad interface: each problem is a line naming the
interface and the reason (``"eth1: no such interface (by name)"``), returned by
:meth:`Network.apply`, logged, shown in :meth:`Network.snapshot` and retried
when a link appears.

DHCP: a lease becomes part of its interface's effective config (see
:mod:`~k4sinit.network.leases`), applied like the rest; a DHCP interface is
ready only with a lease. A lost lease removes its address; the client keeps asking.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

# By its full name: "from k4sinit.network import" would lean on the facade, which imports us.
import k4sinit.network.netlink as netlink
from k4sinit.core.netspec import Interface, IPAddress, NetworkSpec
from k4sinit.core.spec import NETWORK, Condition
from k4sinit.network.dhcp import DEFAULT_LEASE_DIR, DHCPClient, Lease
from k4sinit.network.etcfiles import EtcFiles, merged_dns, node_address
from k4sinit.network.leases import Leases
from k4sinit.network.mirror import Mirror
from k4sinit.network.readiness import EVENT_HISTORY, NOT_KNOWN, NetworkEvent, evaluate
from k4sinit.network.reapply import ReapplyQueue, to_reapply, view
from k4sinit.network.snapshot import NetworkSnapshot


class Network:
    """The node's network; see the module docstring.

    ``hostname`` is the node's name for /etc/hosts (default: the spec's ``ip=``
    hostname, else the kernel's). ``resolv_conf`` / ``hosts``: where those files
    go; None writes none. ``lease_dir``: where the DHCP clients keep their leases.
    ``on_dhcp_hostname`` is called with a lease's host name (PID 1 passes it
    when neither the config nor the kernel names the node).
    """

    name = NETWORK

    def __init__(
        self,
        spec: NetworkSpec,
        log: Any,
        *,
        hostname: str | None = None,
        resolv_conf: Path | None = Path("/etc/resolv.conf"),
        hosts: Path | None = Path("/etc/hosts"),
        lease_dir: Path = DEFAULT_LEASE_DIR,
        on_dhcp_hostname: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self._log = log.bind(service=NETWORK)
        self._files = EtcFiles(resolv_conf, hosts, hostname or spec.hostname or os.uname().nodename)
        self._lease_dir = lease_dir
        self._on_dhcp_hostname = on_dhcp_hostname
        self._netlink = trio.CapacityLimiter(1)
        self._mirror = Mirror(self._log)  # what the kernel has, kept by watch()
        self._leases = Leases()
        self._queue = ReapplyQueue()  # interfaces the watcher applies again
        # Problems from the last application, per interface (spec position) or "lo"/"files".
        self._problems: dict[int | str, list[str]] = {}
        # The one record of readiness, changed only through _publish.
        self.ready = False
        self.reason = NOT_KNOWN
        self.events: deque[NetworkEvent] = deque(maxlen=EVENT_HISTORY)
        self._shown: tuple[object, ...] | None = None  # what changed() waiters last saw
        self._changed = trio.Event()

    # --- the daemon's entry: watch, apply, DHCP ---------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch, apply, then keep a DHCP client per DHCP interface. ``started()``
        once the configuration has been applied (not once it is ready: services
        that need it say so with ``dependsOn: {network: Ready}``). Until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.watch)
            await self.apply()
            for key, iface in enumerate(self.spec.interfaces):
                if iface.dhcp:
                    nursery.start_soon(self._run_dhcp, key, name=f"dhcp {iface.label}")
            task_status.started()

    async def apply(self) -> list[str]:
        """Loopback up, then every configured interface, routes, /etc/resolv.conf and
        /etc/hosts. Returns the problems (also logged); raises nothing for a bad
        interface. Interfaces that could not be found are applied again by
        :meth:`watch` when they appear. Cancellation waits for the running
        netlink batch to end (a batch is short)."""
        jobs = [self._job(key) for key in range(len(self.spec.interfaces))]
        problems = await self._apply(jobs, loopback=True)
        problems += await self._write_files()
        return problems

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the kernel's state from netlink events; apply an interface's config
        again when it appears or its carrier returns. ``started()`` after the
        first dump. Runs until cancelled; on ENOBUFS it reopens and dumps again."""
        async with trio.open_nursery() as nursery:
            first = True
            while True:
                sock = await trio.to_thread.run_sync(netlink.open_events)
                try:
                    await self._load_dump()
                    # Interfaces whose last application failed may have appeared
                    # before this dump, unseen by any event; after lost events,
                    # anything may have changed.
                    self._queue.request(
                        self._failed() if first else set(range(len(self.spec.interfaces)))
                    )
                    if first:
                        nursery.start_soon(self._reapply_loop)
                        task_status.started()
                        first = False
                    await self._read_events(sock)
                finally:
                    sock.close()

    def node_addresses(self) -> tuple[IPAddress, ...]:
        """The node's addresses now: on its configured interfaces, IPv4 first, no link-local.

        What the apiserver certificate names and advertises (empty: loopback only).
        """
        found: list[IPAddress] = []
        for iface in self.spec.interfaces:
            link = self._mirror.find(iface)
            if link is None:
                continue
            found += [
                a.ip for a in link.addresses if not a.ip.is_link_local and not a.ip.is_loopback
            ]
        return tuple(sorted(dict.fromkeys(found), key=lambda a: a.version))

    # --- the supervisor's Dependency ----------------------------------------------------

    def satisfies(self, condition: Condition) -> bool:
        """``Ready`` and ``Started`` both mean :attr:`ready`; ``Completed`` never holds."""
        return condition is not Condition.COMPLETED and self.ready

    def unmet_reason(self, condition: Condition) -> str:
        if condition is Condition.COMPLETED:
            return "the network is a condition that never completes (use Ready)"
        return self.reason

    async def changed(self) -> None:
        """Return at the next change of readiness or of what :meth:`snapshot` shows."""
        await self._changed.wait()

    # --- status -------------------------------------------------------------------------

    def snapshot(self) -> NetworkSnapshot:
        """For ``k4sinit status network``: readiness, problems, and each link the
        kernel has (state, carrier, MTU, MAC, addresses, main-table routes). Built
        on each call, a fresh copy: changing it changes nothing here."""
        configured: dict[int, str] = {}
        for iface in self.spec.interfaces:
            link = self._mirror.find(iface)
            if link is not None:
                configured[link.index] = iface.label
        return {
            "ready": self.ready,
            "reason": self.reason,
            "source": self.spec.source.value,
            "problems": list(self._problem_texts()),
            "applying": [self.spec.interfaces[k].label for k in sorted(self._queue.waiting)],
            "interfaces": self._mirror.interfaces(configured),
        }

    # --- applying -----------------------------------------------------------------------

    def _job(self, key: int) -> netlink.Job:
        return netlink.Job(key, self._effective(key), self._mirror.any_index)

    def _effective(self, key: int) -> Interface:
        """Interface ``key`` as configured, plus what its DHCP lease gives."""
        return self._leases.effective(key, self.spec.interfaces[key])

    async def _apply(self, jobs: Sequence[netlink.Job], *, loopback: bool) -> list[str]:
        result = await trio.to_thread.run_sync(
            netlink.apply_batch, jobs, loopback, limiter=self._netlink
        )
        if result.any_index is not None and self._mirror.choose_any(result.any_index):
            self._log.info(
                "interface chosen", interface="*", link=self._mirror.link_name(result.any_index)
            )
        keys: list[int | str] = [job.key for job in jobs] + (["lo"] if loopback else [])
        problems = [text for key in keys for text in self._record(key, result.problems.get(key))]
        self._publish()
        return problems

    async def _write_files(self) -> list[str]:
        dns = merged_dns(self.spec.dns, self._leases.dns())
        address = node_address(self._effective(k) for k in range(len(self.spec.interfaces)))
        problems = self._record("files", await self._files.write(dns, address, self._log))
        self._publish()
        return problems

    def _record(self, key: int | str, problems: list[str] | None) -> list[str]:
        """Keep (and log) the problems of ``key``'s latest application; returns them."""
        if problems:
            self._problems[key] = problems
            for text in problems:
                self._log.warning("network problem", problem=text)
            return problems
        self._problems.pop(key, None)
        return []

    def _failed(self) -> set[int]:
        """The interfaces whose latest application had problems."""
        return {key for key in self._problems if isinstance(key, int)}

    def _problem_texts(self) -> tuple[str, ...]:
        return tuple(text for texts in self._problems.values() for text in texts)

    async def _reapply_loop(self) -> None:
        while True:
            keys = await self._queue.take()
            labels = [self.spec.interfaces[k].label for k in sorted(keys)]
            self._log.info("applying again", interfaces=labels)
            try:
                removals = self._leases.take_removals()
                if removals:
                    await trio.to_thread.run_sync(
                        netlink.remove_addresses, removals, limiter=self._netlink
                    )
                await self._apply([self._job(k) for k in sorted(keys)], loopback=False)
                if any(self.spec.interfaces[k].dhcp for k in keys):
                    await self._write_files()
            finally:
                self._queue.done()
            self._publish()

    # --- watching -----------------------------------------------------------------------

    async def _read_events(self, sock: Any) -> None:
        """Keep the state from events until the kernel drops some (ENOBUFS): then return."""
        while True:
            await trio.lowlevel.wait_readable(sock.fileno())
            before = view(self._mirror, self.spec.interfaces)
            changes = netlink.drain(sock)
            if changes is None:
                self._log.warning("netlink events lost (ENOBUFS): reopening and dumping")
                return
            resync = False
            for change in changes:
                resync |= self._mirror.apply(change)
            if resync:
                # The kernel flushes IPv4 routes without telling (a link set down,
                # an address removed): ask it what is left.
                await self._load_dump()
            after = view(self._mirror, self.spec.interfaces)
            self._queue.request(to_reapply(before, after, self.spec.interfaces, self._failed()))
            self._publish()

    async def _load_dump(self) -> None:
        links, addresses, routes = await trio.to_thread.run_sync(
            netlink.dump, limiter=self._netlink
        )
        self._mirror.load(links, addresses, routes)
        self._publish()

    # --- DHCP ---------------------------------------------------------------------------

    async def _run_dhcp(self, key: int) -> None:
        iface = self.spec.interfaces[key]
        self._leases.waiting(key, "waiting for the link")
        while (link := self._mirror.find(iface)) is None:
            await self.changed()
        client = DHCPClient(
            link.name,
            on_lease=lambda lease: self._lease_granted(key, lease),
            on_lost=lambda reason: self._lease_lost(key, reason),
            on_error=lambda reason: self._dhcp_problem(key, reason),
            lease_dir=self._lease_dir,
        )
        self._leases.waiting(key, "asking")
        self._publish()
        await client.run()

    def _lease_granted(self, key: int, lease: Lease) -> None:
        self._leases.granted(key, lease)
        self._log.info(
            "lease",
            interface=lease.interface,
            address=str(lease.address),
            router=str(lease.router),
            seconds=lease.lease_seconds,
        )
        if lease.hostname and self._on_dhcp_hostname is not None:
            self._on_dhcp_hostname(lease.hostname)
        self._queue.request({key})

    def _lease_lost(self, key: int, reason: str) -> None:
        lost = self._leases.lost(key, reason)
        self._log.warning("lease lost", reason=reason)
        if lost is not None:
            self._queue.request({key})

    def _dhcp_problem(self, key: int, reason: str) -> None:
        self._leases.waiting(key, reason)
        self._log.warning("dhcp", reason=reason)
        self._publish()

    # --- readiness ----------------------------------------------------------------------

    def _publish(self) -> None:
        """The one path for changes: recompute readiness, record and log it, and wake
        :meth:`changed` waiters if readiness or anything :meth:`snapshot` shows
        changed (compared by the mirror's version, not by building a snapshot)."""
        ready, reason = evaluate(self.spec, self._mirror, self._leases)
        if (ready, reason) != (self.ready, self.reason):
            self.ready, self.reason = ready, reason
            self.events.append(NetworkEvent(time.time(), ready, reason))
            self._log.info("network readiness", ready=ready, reason=reason)
        shown = (
            ready,
            reason,
            self._mirror.version,
            self._problem_texts(),
            tuple(sorted(self._queue.waiting)),
        )
        if shown != self._shown:
            self._shown = shown
            self._changed.set()
            self._changed = trio.Event()
