"""The control protocol's wire: requests, replies and limits, shared by server and client.

Over a unix stream socket the client sends ONE request, a JSON object on one
line of at most :data:`MAX_REQUEST` bytes (:class:`Request`, :func:`encode`,
:func:`decode_request`); the server answers with JSON lines, each
:func:`ok` ``{"ok": true, "result": ...}`` or :func:`error` ``{"ok": false,
"error": "..."}``, then closes. Streaming requests (``logs`` with ``follow``)
get one line per result until the client goes away. ``logs`` may send its
backlog as several result lines (lists to concatenate), each of about
:data:`REPLY_CHUNK` bytes.

What each op's result holds is a TypedDict here (the daemon builds them, the
CLI reads them); see the table above :class:`PKIStatus`.

Trust, both ways: the server serves only peers whose uid (:func:`peer_uid`)
is root or its own, and the client believes only a server whose uid is root
or the client's own.

Pure: no trio, no event loop (the CLI's client imports this module).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import socket
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from signal import Signals
from typing import TYPE_CHECKING, Any, Protocol, Required, TypedDict

# The wire forms of a service's state, re-exported: the CLI reads every reply from here.
from k4sinit.core.jointoken import TOKEN_ID, server_problem
from k4sinit.core.reload import PlanJSON as PlanJSON
from k4sinit.core.reserved import DEFAULT_SOCKET as DEFAULT_SOCKET
from k4sinit.core.reserved import POWER_COMMANDS
from k4sinit.core.state import ExitJSON as ExitJSON
from k4sinit.core.state import LogLineJSON as LogLineJSON
from k4sinit.core.state import ServiceDetail as ServiceDetail
from k4sinit.core.state import ServiceSnapshot as ServiceSnapshot
from k4sinit.core.timeline import TimelineJSON as TimelineJSON

if TYPE_CHECKING:  # types only: the CLI does not load pyroute2 to read a reply
    from k4sinit.network import InterfaceSnapshot as InterfaceSnapshot
    from k4sinit.network import NetworkSnapshot as NetworkSnapshot
    from k4sinit.node.preflight import CheckJSON as CheckJSON
    from k4sinit.node.preflight import SummaryJSON as SummaryJSON
    from k4sinit.node.tokens import TokenJSON as TokenJSON

#: The limits every client can count on (the server's admission, server.py).
MAX_REQUEST = 64 * 1024  # bytes of the request line
REQUEST_TIMEOUT = 10.0  # to send the request line
SEND_TIMEOUT = 10.0  # for the client to take each reply line
MAX_CONNECTIONS = 64  # read-only requests (status, logs, kubeconfig) served at once
MAX_FOLLOWERS = 64  # ``logs -f`` clients at once
REPLY_CHUNK = 64 * 1024  # a long reply (the logs backlog) is sent in lines of about this size


class Op(enum.StrEnum):
    """What a request asks for; the value is the ``op`` on the wire."""

    STATUS = "status"
    LOGS = "logs"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    KILL = "kill"
    STOP_ALL = "stop_all"
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    HALT = "halt"
    KUBECONFIG = "kubeconfig"
    TOKEN_CREATE = "token_create"
    TOKEN_LIST = "token_list"
    TOKEN_REVOKE = "token_revoke"
    # Blocks the daemon's event loop for good; only with k4sinit.debug=hang on the
    # kernel command line (the hardware watchdog's test: a hung PID 1).
    DEBUG_HANG = "debug_hang"
    TIMELINE = "timeline"
    RELOAD = "reload"


OPS = tuple(Op)
#: The ops an unknown op's error lists (the debug one is not advertised).
ADVERTISED_OPS = tuple(op for op in Op if op is not Op.DEBUG_HANG)
#: The ends of a node (PID 1 only); the daemon maps each to a power action.
POWER_OPS = tuple(Op(name) for name in POWER_COMMANDS)
#: The ops that need a service ``name``.
NAMED_OPS = (Op.LOGS, Op.START, Op.STOP, Op.RESTART, Op.KILL)
#: Bootstrap tokens (a controller's; each asks the apiserver, node/tokens.py).
TOKEN_OPS = (Op.TOKEN_CREATE, Op.TOKEN_LIST, Op.TOKEN_REVOKE)
#: The longest ``ttl`` of a token: ten years (0 is "never expires").
MAX_TTL = 10 * 366 * 86400
#: What an operator must always get through with, however busy the socket is.
OPERATOR_OPS = (Op.START, Op.STOP, Op.RESTART, Op.KILL, Op.STOP_ALL, Op.RELOAD, *POWER_OPS)


class RequestError(Exception):
    """A request the daemon refuses; the message is sent to the client as is."""


class RequestJSON(TypedDict, total=False):
    """A request on the wire: ``op`` always, the other fields where they apply."""

    op: Required[str]
    name: str
    lines: int
    follow: bool
    signal: str
    ttl: float
    server: str
    dry_run: bool


@dataclass(frozen=True, slots=True, init=False)
class Request:
    """One control request. ``name`` is a service (a token id for token_revoke);
    ``lines``/``follow`` are for logs; ``signal`` (a name: ``KILL`` or
    ``SIGKILL``) is for kill; ``ttl`` (seconds, 0: never expires; None: the
    default) and ``server`` (None: the node's own) are for token_create;
    ``dry_run`` (plan only) is for reload.

    ``op`` may be given as its wire string; ValueError for one that is no :class:`Op`.
    """

    op: Op
    name: str | None
    lines: int
    follow: bool
    signal: str
    ttl: float | None
    server: str | None
    dry_run: bool

    def __init__(
        self,
        op: Op | str,
        name: str | None = None,
        lines: int = 50,
        follow: bool = False,
        signal: str = "TERM",
        ttl: float | None = None,
        server: str | None = None,
        dry_run: bool = False,
    ) -> None:
        object.__setattr__(self, "op", Op(op))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "follow", follow)
        object.__setattr__(self, "signal", signal)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "dry_run", dry_run)

    def to_json(self) -> RequestJSON:
        data: RequestJSON = {"op": self.op.value}
        if self.name is not None:
            data["name"] = self.name
        if self.op is Op.LOGS:
            data["lines"] = self.lines
            data["follow"] = self.follow
        if self.op is Op.KILL:
            data["signal"] = self.signal
        if self.ttl is not None:
            data["ttl"] = self.ttl
        if self.server is not None:
            data["server"] = self.server
        if self.op is Op.RELOAD:
            data["dry_run"] = self.dry_run
        return data

    def ttl_delta(self) -> dt.timedelta | None:
        """``ttl`` as a time span: None when 0 (the token never expires) or not given."""
        return dt.timedelta(seconds=self.ttl) if self.ttl else None

    def signal_number(self) -> Signals:
        """The ``signal`` field as a signal; RequestError names an unknown one."""
        name = self.signal.upper()
        try:
            return Signals[name if name.startswith("SIG") else "SIG" + name]
        except KeyError:
            raise RequestError(f"unknown signal {self.signal!r}; e.g. TERM, KILL, HUP") from None

    @classmethod
    def from_json(cls, data: Any) -> Request:
        """Validate a decoded request; raises :class:`RequestError` naming the problem."""
        if not isinstance(data, dict):
            raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
        op = data.get("op")
        if op not in OPS:
            raise RequestError(
                f"unknown op {_show(op)}; expected one of {', '.join(ADVERTISED_OPS)}"
            )
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError("'name' must be a string")
        if op in NAMED_OPS and not name:
            raise RequestError(f"op {op!r} needs a service 'name'")
        lines = data.get("lines", 50)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= 100_000:
            raise RequestError("'lines' must be an integer from 0 to 100000")
        follow = data.get("follow", False)
        if not isinstance(follow, bool):
            raise RequestError("'follow' must be true or false")
        sig = data.get("signal", "TERM")
        if not isinstance(sig, str):
            raise RequestError("'signal' must be a signal name such as \"KILL\"")
        ttl, server = _token_fields(op, name, data)
        dry_run = data.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise RequestError("'dry_run' must be true or false")
        request = cls(
            op=op,
            name=name,
            lines=lines,
            follow=follow,
            signal=sig,
            ttl=ttl,
            server=server,
            dry_run=dry_run,
        )
        request.signal_number()  # refuse an unknown signal here, before anything acts
        return request


def _token_fields(
    op: str, name: str | None, data: dict[str, Any]
) -> tuple[float | None, str | None]:
    """``ttl`` and ``server`` checked (for any op); a token_revoke's ``name`` a token id."""
    # Here, not with the module: the CLI's client reads the wire without these rules.

    ttl = data.get("ttl")
    if ttl is not None and (
        not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL
    ):
        raise RequestError(f"'ttl' must be seconds from 0 (never expires) to {MAX_TTL}")
    server = data.get("server")
    if server is not None and (not isinstance(server, str) or server_problem(server)):
        problem = server_problem(server) if isinstance(server, str) else "not a string"
        raise RequestError(f"'server': {problem}")
    if op == Op.TOKEN_REVOKE and not (isinstance(name, str) and TOKEN_ID.fullmatch(name)):
        raise RequestError("'name' of token_revoke must be a token id ([a-z0-9]{6})")
    return (None if ttl is None else float(ttl)), server


def _show(value: Any) -> str:
    """A short rendering of a client's JSON value for an error message."""
    if isinstance(value, list):
        return "(a JSON array)"
    if isinstance(value, dict):
        return "(a JSON object)"
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises :class:`RequestError` naming what is wrong.

    Hostile but well-formed JSON (nesting beyond the parser's recursion limit, an
    integer of more digits than Python converts) is a malformed request too.
    """
    try:
        data = json.loads(line)
    except RecursionError:
        raise RequestError("malformed request: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed request: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise RequestError(f"malformed request: {exc}") from None
        limit = sys.get_int_max_str_digits()  # int() refuses longer numbers
        raise RequestError(f"malformed request: a number with more than {limit} digits") from None
    return Request.from_json(data)


def encode(obj: Mapping[str, Any]) -> bytes:
    """One line of the wire: compact JSON and a newline."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def ok(result: Any) -> dict[str, Any]:
    """A result line's object."""
    return {"ok": True, "result": result}


def error(message: str) -> dict[str, Any]:
    """An error line's object: the request was refused, ``message`` says why."""
    return {"ok": False, "error": message}


class _Socket(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_uid(sock: _Socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# --- replies: what each request's result holds (the daemon builds, the CLI reads) ------
# ``status`` -> StatusReply; ``status NAME`` -> ServiceDetail, or NetworkReply, PKIReply,
# PreflightReply for those names; ``logs`` -> lists of LogLineJSON; ``start`` ->
# StartReply; ``stop``/``restart`` -> ServiceSnapshot; ``kill`` -> KillReply;
# ``kubeconfig`` -> KubeconfigReply; ``stop_all`` and the power ops -> StoppedReply;
# ``token_create`` -> TokenCreateReply, ``token_list`` -> TokenListReply,
# ``token_revoke`` -> TokenRevokeReply; ``timeline`` -> TimelineJSON (core/timeline.py);
# ``reload`` -> ReloadReply.


class PKIStatus(TypedDict):
    """The built-in ``pki`` condition."""

    ready: bool
    reason: str


class DaemonInfo(TypedDict):
    """k4sinit itself."""

    pid: int
    rss_bytes: int
    uptime: float
    version: str
    notify_dropped: dict[str, int]  # NOTIFY_SOCKET datagrams dropped, by reason (notify.py)


class MemoryInfo(TypedDict):
    """/proc/meminfo's MemTotal and MemAvailable, in bytes."""

    total: int
    available: int


class StatusReply(TypedDict):
    daemon: DaemonInfo
    memory: MemoryInfo
    services: list[ServiceSnapshot]  # in dependency order
    network: NetworkSnapshot
    pki: PKIStatus
    preflight: SummaryJSON | None  # None: no checks ran
    image: dict[str, Any] | None  # image.ImageInfo.to_json(); None: no image.json


class NetworkReply(TypedDict):
    network: NetworkSnapshot


class PKIReply(TypedDict):
    pki: PKIStatus


class PreflightReply(TypedDict):
    preflight: list[CheckJSON]


class StartReply(ServiceSnapshot):
    started: bool  # False: it was already running


class KillReply(ServiceSnapshot):
    signal: str  # the signal's name: SIGTERM


class KubeconfigReply(TypedDict):
    path: str
    kubeconfig: str


class StoppedReply(TypedDict):
    services: list[ServiceSnapshot]


class TokenCreateReply(TypedDict):
    join_token: str  # K4S1::<server>::sha256:<hash>::<id>.<secret> (core/jointoken.py)
    token: TokenJSON  # what token list shows of it


class TokenListReply(TypedDict):
    tokens: list[TokenJSON]  # by id


class TokenRevokeReply(TypedDict):
    id: str


class ReloadReply(TypedDict):
    """``reload``: the file's errors (as ``check`` prints them), or its plan and what was done.

    ``errors`` non-empty: the file is invalid, ``plan`` is None, nothing changed.
    ``applied``: the plan was carried out (not a dry run, nothing refused);
    ``done`` its steps (``restarted api``), ``failed`` those that failed.
    """

    source: str
    dry_run: bool
    errors: list[str]
    plan: PlanJSON | None
    applied: bool
    done: list[str]
    failed: list[str]
