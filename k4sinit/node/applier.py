"""``k4sinit apply-manifests``: apply a directory of manifests, again whenever it changes.

The program of the ``manifests`` role (:mod:`k4sinit.services.manifests`), a
process of its own under k4sinit. Every ``period`` seconds it looks at the
manifest files under ``--dir`` (``*.yaml``, ``*.yml``, ``*.json``, recursively,
hidden ones skipped) by path, size, mtime and inode; when that set differs from
what was last applied (or nothing was), it runs one::

    kubectl --kubeconfig=K apply --server-side --force-conflicts \\
        --field-manager=k4sinit -R -f DIR [-f -]

Server-side apply with k4sinit as field manager: re-applying is idempotent, and a
field someone else changed by hand is taken back, as k3s' deploy controller does.
Nothing is pruned: removing a file leaves its objects in the cluster.

``--dns-service NAMESPACE/NAME`` adds, on stdin, an EndpointSlice for that Service
(port 53 UDP and TCP) with this node's address: ``--node-address``, or else the
source address of the node's default route, looked up at every round (DHCP may
change it). That is how the selector-less ``kube-dns`` Service reaches the
coredns role, which serves on the node itself.

It runs as a process of its own, never inside the daemon: there is no reaper in this
process, so ``trio.run_process`` may wait for kubectl here (in the daemon only the
reaper waits; see README, "How it is built").

A failed apply is logged with kubectl's own words and tried again after a backoff
(2 s doubling to 60 s), or at once when the files change again. Once a round has
applied everything, ``--ready-file`` is written (removed at start): the role's
readiness probe. The program never exits by itself; SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import trio

from k4sinit.core.restart import backoff_delay
from k4sinit.core.spec import Backoff

SUFFIXES = (".yaml", ".yml", ".json")
FIELD_MANAGER = "k4sinit"
#: A documentation address (TEST-NET-1): connecting a UDP socket to it sends
#: nothing, and the kernel picks the source address of the default route.
ROUTE_PROBE = "192.0.2.1"
MANAGED_BY = "k4sinit"

Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one kubectl run did: its exit code and output."""

    code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0


#: Apply the manifests under a directory (None: none) and the JSON objects given
#: (None: none); at least one of the two is given.
Apply = Callable[[Path | None, str | None], Awaitable[ApplyResult]]


def fingerprint(directory: Path) -> Fingerprint:
    """Path, size, mtime and inode of every manifest file under ``directory``, sorted.

    A file replaced atomically (a new inode) counts as changed even with the same
    size and mtime. A missing directory has no files.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # removed while we looked
            out.append((os.path.relpath(path, directory), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def default_route_address() -> str | None:
    """The IPv4 source address of the default route, or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ROUTE_PROBE, 53))
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        address: str = probe.getsockname()[0]
    return None if address.startswith("0.") else address


def dns_endpoint_slice(service: str, address: str) -> dict[str, Any]:
    """The EndpointSlice that sends ``service`` (``namespace/name``) to ``address``:53."""
    namespace, _, name = service.partition("/")
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-{MANAGED_BY}",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
    }


def kubectl_apply(kubectl: str, kubeconfig: str) -> Apply:
    """The real apply: ``kubectl apply --server-side`` of a directory (and stdin)."""

    async def apply(directory: Path | None, stdin: str | None) -> ApplyResult:
        argv = [
            kubectl,
            f"--kubeconfig={kubeconfig}",
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
        ]
        if directory is not None:
            argv += ["-R", "-f", str(directory)]
        if stdin is not None:
            argv += ["-f", "-"]
        try:
            proc = await trio.run_process(
                argv,
                stdin=(stdin or "").encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        except OSError as exc:
            return ApplyResult(127, f"cannot run {kubectl}: {exc.strerror or exc}")
        output = proc.stdout + proc.stderr
        return ApplyResult(proc.returncode, output.decode(errors="replace"))

    return apply


@dataclass
class Applier:
    """The loop (see the module docstring); ``apply`` runs kubectl (tests give a fake)."""

    directory: Path
    apply: Apply
    ready_file: Path | None = None
    dns_service: str | None = None
    node_address: str | None = None
    period: float = 2.0
    backoff_initial: float = 2.0
    backoff_max: float = 60.0
    say: Callable[[str], None] = print
    address_of_node: Callable[[], str | None] = default_route_address
    rounds: int = field(default=0, init=False)  # kubectl runs so far

    async def run(self) -> NoReturn:
        """Apply now and on every change, forever."""
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        applied: tuple[Fingerprint, str | None] | None = None  # the last success
        failed: tuple[Fingerprint, str | None] | None = None  # the last failure
        retry_at = 0.0
        failures = 0
        told = False
        while True:
            extra = self._generated()
            if self.dns_service is not None and extra is None and not told:
                self.say(f"{self.dns_service}: no address for this node yet (no default route)")
            told = self.dns_service is not None and extra is None
            wanted = (fingerprint(self.directory), extra)
            if wanted != applied and (wanted != failed or trio.current_time() >= retry_at):
                if await self._round(*wanted):
                    applied, failed, failures = wanted, None, 0
                else:
                    failures += 1
                    delay = self._retry_delay(failures)
                    failed, retry_at = wanted, trio.current_time() + delay
                    self.say(f"trying again in {delay:g}s, or as soon as a file changes")
            await trio.sleep(self.period)

    def _retry_delay(self, failures: int) -> float:
        """``backoff_initial`` doubled per failure in a row, at most ``backoff_max``:
        the restarts' own schedule (the first failure waits ``backoff_initial``)."""
        backoff = Backoff(initial=self.backoff_initial, max=self.backoff_max, jitter=0.0)
        return backoff_delay(backoff, failures + 1, rand=0.5)

    def _generated(self) -> str | None:
        """The generated objects (JSON) for stdin, or None when there are none yet."""
        if self.dns_service is None:
            return None
        address = self.node_address or self.address_of_node()
        if address is None:
            return None
        return json.dumps(dns_endpoint_slice(self.dns_service, address))

    async def _round(self, files: Fingerprint, extra: str | None) -> bool:
        """One kubectl run over everything; True when it applied it all."""
        what = f"{len(files)} file(s) under {self.directory}"
        if extra is not None:
            what += f" and the EndpointSlice of {self.dns_service}"
        if not files and extra is None:
            self.say(f"nothing to apply under {self.directory}")
            self._ready()
            return True
        self.rounds += 1
        started = trio.current_time()
        result = await self.apply(self.directory if files else None, extra)
        took = trio.current_time() - started
        for line in result.output.strip().splitlines():
            self.say(f"kubectl: {line}")
        if not result.ok:
            self.say(f"applying {what} failed (kubectl exit {result.code}) after {took:.1f}s")
            return False
        self.say(f"applied {what} in {took:.1f}s")
        self._ready()
        return True

    def _ready(self) -> None:
        if self.ready_file is not None and not self.ready_file.exists():
            self.ready_file.parent.mkdir(parents=True, exist_ok=True)
            self.ready_file.write_text("applied\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``k4sinit apply-manifests ...``: runs until SIGTERM; 2 on bad arguments."""
    parser = argparse.ArgumentParser(
        prog="k4sinit apply-manifests",
        description="apply a directory of manifests with kubectl, again whenever it changes",
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="the manifests directory")
    parser.add_argument("--ready-file", type=Path, help="written once everything is applied")
    parser.add_argument("--dns-service", metavar="NAMESPACE/NAME")
    parser.add_argument("--node-address", help="default: the default route's source address")
    parser.add_argument("--period", type=float, default=2.0, help="seconds (default: %(default)s)")
    parser.add_argument("--kubectl", default="kubectl", help="default: %(default)s on PATH")
    args = parser.parse_args(argv)
    if args.dns_service is not None and "/" not in args.dns_service:
        parser.error(f"--dns-service {args.dns_service!r}: expected NAMESPACE/NAME")

    def say(line: str) -> None:
        print(line, flush=True)

    applier = Applier(
        directory=args.dir,
        apply=kubectl_apply(args.kubectl, args.kubeconfig),
        ready_file=args.ready_file,
        dns_service=args.dns_service,
        node_address=args.node_address,
        period=args.period,
        say=say,
    )
    try:
        trio.run(applier.run)
    except KeyboardInterrupt:
        return 130
    return 0  # not reached: run() never returns


if __name__ == "__main__":
    sys.exit(main())
