"""A steerable child process for tests (like k0s's "pingpong").

Usage: python tests/child.py [options]; actions run in this order:

  --ignore-term          ignore SIGTERM (to test grace-period escalation)
  --grandchild FILE      double-fork a `sleep` grandchild, write its pid to FILE
  --orphans N            fork N children that exit at once and are never waited for:
                         zombies that become orphans when we exit
  --print N              print N numbered lines to stdout ("line 0" ...)
  --spew BYTES           write BYTES bytes of "x" to stdout with no newline
  --stderr TEXT          write TEXT and a newline to stderr
  --ready-after SECONDS  sleep, then create the --ready-file
  --ready-file FILE      file to create when ready (a `file:` probe target)
  --pid-file FILE        write our pid to FILE first thing
  --notify-early MSG     send MSG to $NOTIFY_SOCKET before waiting for --notify-when
  --notify-when FILE     wait until FILE exists before sending the --notify messages
  --notify MSG           send MSG to $NOTIFY_SOCKET (sd_notify; repeatable, in order)
  --flood N              send N malformed datagrams to $NOTIFY_SOCKET first
  --oversized N          send N datagrams of 8 KiB to $NOTIFY_SOCKET first
  --watchdog N           send WATCHDOG=1 N times, 0.1 s apart, after the --notify messages
  --done-file FILE       create FILE once every message is sent
  --sleep SECONDS        sleep this long before exiting (default: forever)
  --exit CODE            exit code (default 0)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild")
    parser.add_argument("--orphans", type=int, default=0)
    parser.add_argument("--print", type=int, default=0, dest="lines")
    parser.add_argument("--spew", type=int, default=0)
    parser.add_argument("--stderr")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--ready-file")
    parser.add_argument("--pid-file")
    parser.add_argument("--sleep", type=float)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--notify-early", action="append", default=[])
    parser.add_argument("--notify-when")
    parser.add_argument("--notify", action="append", default=[])
    parser.add_argument("--flood", type=int, default=0)
    parser.add_argument("--oversized", type=int, default=0)
    parser.add_argument("--watchdog", type=int, default=0)
    parser.add_argument("--done-file")
    args = parser.parse_args()

    if args.pid_file:
        _write(args.pid_file, str(os.getpid()))
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        _double_fork(args.grandchild)
    for _ in range(args.orphans):
        if os.fork() == 0:
            os._exit(0)
    for i in range(args.lines):
        print(f"line {i}")
    sys.stdout.flush()
    if args.spew:
        chunk = b"x" * 65536
        left = args.spew
        while left > 0:
            left -= os.write(1, chunk[: min(left, len(chunk))])
    if args.stderr:
        print(args.stderr, file=sys.stderr, flush=True)
    if args.ready_file:
        time.sleep(args.ready_after)
        _write(args.ready_file, "ready")
    if args.notify or args.notify_early or args.flood or args.oversized or args.watchdog:
        _notify(args)
    if args.sleep is None:
        while True:
            time.sleep(3600)
    time.sleep(args.sleep)
    return int(args.exit)


def _notify(args: argparse.Namespace) -> None:
    """sd_notify: datagrams to $NOTIFY_SOCKET (``@name``: the abstract namespace)."""
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for _ in range(args.flood):
            sock.sendto(b"no equals sign here", address)
        for _ in range(args.oversized):
            sock.sendto(b"STATUS=" + b"x" * 8192, address)
        for message in args.notify_early:
            sock.sendto(message.encode(), address)
        while args.notify_when and not os.path.exists(args.notify_when):
            time.sleep(0.01)
        for message in args.notify:
            sock.sendto(message.encode(), address)
        for _ in range(args.watchdog):
            sock.sendto(b"WATCHDOG=1", address)
            time.sleep(0.1)
    if args.done_file:
        _write(args.done_file, "done")


def _double_fork(pid_file: str) -> None:
    """A `sleep` grandchild re-parented away from us, still in our process group."""
    r, w = os.pipe()
    if os.fork() == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.close(r)
            os.close(w)
            os.execvp("sleep", ["sleep", "1000"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    pid = os.read(r, 32).decode()
    os.close(r)
    os.wait()
    _write(pid_file, pid)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
