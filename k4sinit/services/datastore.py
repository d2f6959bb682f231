"""The datastore role: kine (etcd's API over SQLite) or a one-member etcd.

Both listen on 127.0.0.1:2379 only, in plain HTTP: the apiserver on the same
node is their one client, and loopback needs no TLS (k3s does the same for
kine; k0s puts kine on a unix socket). The service is named after the
binary, ``kine`` or ``etcd``, by ``node.datastore``.

Flags (kine 0.17, etcd 3.7: both roles of the k4s binary), after k0s
``pkg/component/controller/kine.go`` and ``etcd.go``:

* kine: ``--listen-address``, ``--endpoint`` (SQLite with kine's own default
  parameters: WAL, a 30 s busy timeout, synchronous NORMAL, immediate
  transactions; k4s is built without cgo, so the driver is modernc.org/sqlite,
  pure Go), ``--metrics-bind-address`` moved from kine's ``:8080`` (every
  interface) to loopback.
* etcd: ``--name`` (the node), ``--data-dir``, client and peer URLs on
  loopback, ``--initial-cluster`` of itself, metrics on 127.0.0.1:2381 (as
  kubeadm), no pprof.

Readiness: kine answers etcd's gRPC but has no HTTP health endpoint and
sends no sd_notify, so an accepted TCP connection it is; etcd says
``READY=1`` over ``NOTIFY_SOCKET`` (``etcdmain.notifySystemd``) once it
serves and has joined its cluster (a leader: the server's ReadyNotify), so
it is a ``notify`` probe, no polling. Grace 30 s: both flush their database on SIGTERM and exit in well
under a second; a SIGKILL mid-write could leave a torn WAL on a persistent
data dir, so the ceiling is generous. No liveness probe: etcd's /health also
fails on a NOSPACE alarm, which a restart does not cure. CPU: ``CONTROL_PLANE_FIRST``, as the apiserver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import Datastore
from k4sinit.core.spec import NotifyAction, Probe, ServiceSpec, TCPSocketAction
from k4sinit.services import CONTROL_PLANE_FIRST, flags

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

CLIENT_PORT = 2379
# kine's own sqlite.DefaultParams, less what modernc.org/sqlite ignores (cache=shared,
# _stmt_cache_size): WAL, wait on a lock instead of failing, immediate transactions.
SQLITE_OPTIONS = "_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate"


def name(node: NodeSettings) -> str:
    """The datastore's service name: the binary, ``kine`` or ``etcd``."""
    return node.datastore.value


def service(node: NodeSettings) -> ServiceSpec:
    if node.datastore is Datastore.KINE:
        args = flags(
            {
                "listen-address": f"127.0.0.1:{CLIENT_PORT}",
                "endpoint": f"sqlite://{kine_db(node)}?{SQLITE_OPTIONS}",
                "metrics-bind-address": "127.0.0.1:2381",
            }
        )
        readiness = Probe(TCPSocketAction(port=CLIENT_PORT))
    else:
        client = f"http://127.0.0.1:{CLIENT_PORT}"
        peer = "http://127.0.0.1:2380"
        args = flags(
            {
                "name": node.name,
                "data-dir": etcd_dir(node),
                "listen-client-urls": client,
                "advertise-client-urls": client,
                "listen-peer-urls": peer,
                "initial-advertise-peer-urls": peer,
                "initial-cluster": f"{node.name}={peer}",
                "listen-metrics-urls": "http://127.0.0.1:2381",
                "enable-pprof": "false",
            }
        )
        readiness = Probe(NotifyAction())
    return ServiceSpec(
        name=name(node),
        command=(name(node),),
        args=args,
        env=node.env,
        readiness_probe=readiness,
        termination_grace_period=30.0,
        resources=CONTROL_PLANE_FIRST,
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {}


def directories(node: NodeSettings) -> tuple[str, ...]:
    # SQLite does not create the database's directory; etcd makes its own (0700).
    return (f"{node.data_dir}/db",) if node.datastore is Datastore.KINE else ()


def kine_db(node: NodeSettings) -> str:
    return f"{node.data_dir}/db/state.db"


def etcd_dir(node: NodeSettings) -> str:
    return f"{node.data_dir}/etcd"
