"""The control client of the CLI: synchronous, and it does not import trio.

``k4sinit status`` and the other client commands start in tens of
milliseconds because nothing here loads an event loop (tests/test_layers.py
checks that importing this module, and the CLI's use of it, loads no trio).
The protocol is :mod:`k4sinit.control.wire`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from k4sinit.control.wire import DEFAULT_SOCKET, Request, encode, peer_uid


class ControlClientError(Exception):
    """The daemon could not be reached or refused the request."""


def socket_path(cli_value: str | None = None) -> str:
    """The socket to use: ``--socket``, else ``$K4SINIT_SOCKET``, else the default."""
    return cli_value or os.environ.get("K4SINIT_SOCKET") or DEFAULT_SOCKET


def stream_request(path: str, request: Request, timeout: float | None = 30.0) -> Iterator[Any]:
    """Send ``request`` and yield each result; raises :class:`ControlClientError`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            _connect(sock, path, timeout)
        except FileNotFoundError:
            raise ControlClientError(
                f"no k4sinit control socket at {path} (is the daemon running?)"
            ) from None
        except BlockingIOError:
            raise ControlClientError(
                f"k4sinit at {path} is busy: it did not take the connection within {timeout}s"
            ) from None
        except OSError as exc:
            raise ControlClientError(
                f"cannot reach k4sinit at {path}: {exc.strerror or exc}"
            ) from None
        server_uid = peer_uid(sock)
        if server_uid not in (0, os.getuid()):
            # Someone else's socket at our path (a hijacked directory): its answers
            # are lies and our request (stop --all) must not reach it.
            raise ControlClientError(
                f"refusing to talk to {path}: it is served by uid {server_uid}, not by root or you"
            )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # A refusal (wrong uid, too many clients) may come before we have
            # sent anything and close the socket: read it below, don't hide it.
            sock.sendall(encode(request.to_json()))
        with sock.makefile("rb") as replies:
            try:
                for raw in replies:
                    reply = json.loads(raw)
                    if not reply.get("ok"):
                        raise ControlClientError(str(reply.get("error")))
                    yield reply.get("result")
            except TimeoutError:
                raise ControlClientError(
                    f"k4sinit at {path} did not answer within {timeout}s"
                ) from None


def _connect(sock: socket.socket, path: str, timeout: float | None) -> None:
    """Connect, waiting up to ``timeout`` in a busy daemon's full listen queue; then
    every read and write on ``sock`` is bounded by ``timeout`` too.

    A unix socket with a Python timeout is non-blocking, and its connect fails at once
    with EAGAIN when the listen queue is full. A blocking connect waits instead, as
    long as SO_SNDTIMEO allows.
    """
    seconds = 0.0 if timeout is None else max(timeout, 0.001)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_SNDTIMEO,
        struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000)),
    )
    sock.connect(path)
    sock.settimeout(timeout)


def request(path: str, req: Request, timeout: float | None = 30.0) -> Any:
    """Send ``req`` and return its single result."""
    for result in stream_request(path, req, timeout):
        return result
    raise ControlClientError("k4sinit closed the connection without an answer")
