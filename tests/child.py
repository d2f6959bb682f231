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
  --sleep SECONDS        sleep this long before exiting (default: forever)
  --exit CODE            exit code (default 0)
"""

from __future__ import annotations

import argparse
import os
import signal
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
    if args.sleep is None:
        while True:
            time.sleep(3600)
    time.sleep(args.sleep)
    return int(args.exit)


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
