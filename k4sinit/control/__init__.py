"""The control socket: how operators (the CLI, the host's relay, bench/) talk to the daemon.

* :mod:`~k4sinit.control.wire`: the protocol: requests, ops, replies, limits (pure)
* :mod:`~k4sinit.control.client`: the CLI's synchronous client (no trio)
* :mod:`~k4sinit.control.server`: the daemon's server (trio); import it by name
* :mod:`~k4sinit.control.port`: the same socket over a VM's virtio-serial port

This package re-exports the wire and the client, and nothing that loads trio:
``from k4sinit import control`` is what a client needs.
"""

from k4sinit.control.client import (
    ControlClientError,
    request,
    socket_path,
    stream_request,
)
from k4sinit.control.wire import (
    DEFAULT_SOCKET,
    MAX_CONNECTIONS,
    MAX_FOLLOWERS,
    MAX_REQUEST,
    NAMED_OPS,
    OPERATOR_OPS,
    OPS,
    POWER_OPS,
    REPLY_CHUNK,
    REQUEST_TIMEOUT,
    SEND_TIMEOUT,
    DaemonInfo,
    ExitJSON,
    KillReply,
    KubeconfigReply,
    LogLineJSON,
    MemoryInfo,
    NetworkReply,
    Op,
    PKIReply,
    PKIStatus,
    PreflightReply,
    Request,
    RequestError,
    RequestJSON,
    ServiceDetail,
    ServiceSnapshot,
    StartReply,
    StatusReply,
    StoppedReply,
    decode_request,
    encode,
    error,
    ok,
)

__all__ = [
    "DEFAULT_SOCKET",
    "MAX_CONNECTIONS",
    "MAX_FOLLOWERS",
    "MAX_REQUEST",
    "NAMED_OPS",
    "OPERATOR_OPS",
    "OPS",
    "POWER_OPS",
    "REPLY_CHUNK",
    "REQUEST_TIMEOUT",
    "SEND_TIMEOUT",
    "ControlClientError",
    "DaemonInfo",
    "ExitJSON",
    "KillReply",
    "KubeconfigReply",
    "LogLineJSON",
    "MemoryInfo",
    "NetworkReply",
    "Op",
    "PKIReply",
    "PKIStatus",
    "PreflightReply",
    "Request",
    "RequestError",
    "RequestJSON",
    "ServiceDetail",
    "ServiceSnapshot",
    "StartReply",
    "StatusReply",
    "StoppedReply",
    "decode_request",
    "encode",
    "error",
    "ok",
    "request",
    "socket_path",
    "stream_request",
]
