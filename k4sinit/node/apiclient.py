"""A small, blocking client of the kube-apiserver's REST API (stdlib ``ssl`` + ``http.client``).

What k4sinit itself asks of the apiserver is a handful of requests (bootstrap
token Secrets on the controller, ``cluster-info`` on a joining worker), so it
speaks HTTP/1.1 with the standard library rather than carry a Kubernetes
client. One request per connection; each call blocks: callers in the daemon
run it in a thread (``trio.to_thread.run_sync``).

Two ways to trust the server: ``ca_pem`` (verify the certificate chain and the
host name, as kubectl does), or ``insecure=True`` for the one fetch a joining
worker makes before it knows the CA (its answer is checked another way: the
CA hash and the JWS signature, see :mod:`k4sinit.node.join`). Credentials:
a client certificate (``cert_file``/``key_file``) or none (anonymous).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE = 4 * 1024 * 1024  # bytes: a Secret list or cluster-info is a few KiB


class APIError(Exception):
    """A request failed; ``status`` is the HTTP status (None: no answer at all).

    The message says what happened in words (connection refused, the
    certificate not valid for the host, the apiserver's own message).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class APIClient:
    """Requests to ``server`` (``https://host:port``). See the module docstring."""

    server: str
    ca_pem: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if (self.ca_pem is None) == (not self.insecure):
            raise ValueError("give ca_pem, or insecure=True, not both")

    def context(self) -> ssl.SSLContext:
        """The TLS client context: trust, and the client certificate if any."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            assert self.ca_pem is not None
            ctx.load_verify_locations(cadata=self.ca_pem.decode())
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def get(self, path: str) -> Any:
        """GET ``path``; the decoded JSON body. Raises :class:`APIError`."""
        return self.request("GET", path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """``method path`` with ``body`` as JSON; the decoded JSON answer (2xx only).

        Raises :class:`APIError`: unreachable, TLS refused, a non-2xx status (with
        the apiserver's ``Status`` message), an answer that is not JSON.
        """
        parts = urlsplit(self.server)
        host = parts.hostname or ""
        port = parts.port or 443
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "k4sinit"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.context())
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read(MAX_RESPONSE + 1)
        except ssl.SSLCertVerificationError as exc:
            raise APIError(
                f"{self.server}: the server's certificate: {exc.verify_message}"
            ) from None
        except (ssl.SSLError, ConnectionResetError) as exc:
            raise APIError(f"{self.server}: TLS failed: {_reason(exc)}") from None
        except TimeoutError:
            raise APIError(f"{self.server}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise APIError(f"cannot reach {self.server}: {_reason(exc)}") from None
        except http.client.HTTPException as exc:
            raise APIError(f"{self.server}: not an HTTP answer ({exc!r})") from None
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE:
            raise APIError(f"{self.server}: answer larger than {MAX_RESPONSE} bytes")
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        if not 200 <= response.status < 300:
            raise APIError(
                f"{method} {path}: {response.status} {_message(decoded, response.reason)}",
                response.status,
            )
        if decoded is None and raw:
            raise APIError(f"{method} {path}: the answer is not JSON")
        return decoded


def _message(status: Any, fallback: str) -> str:
    """The ``message`` of a Kubernetes ``Status`` object, else the HTTP reason."""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else fallback


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
