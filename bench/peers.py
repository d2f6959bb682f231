"""k4sinit beside s6, runit and supervisord: the same N static TCP listeners under each.

Each supervisor in turn, in one run (``--runs`` times, the supervisors' order
rotated between runs), supervises N services (``--counts``, default 50 and 200),
each a tiny static C program (compiled here with gcc) listening on
127.0.0.1:PORT:

* s6: ``s6-svscan DIR``; every service directory's ``run`` is a symlink to the
  listener, which takes its port from the directory's name (so no shell runs)
* runit: ``runsvdir DIR``, the same directories
* supervisord: ``supervisord -n -c FILE``, one ``[program:]`` per listener
  (``autorestart=true``, output discarded)
* k4sinit: ``k4sinit run --config FILE`` (``--k4sinit``: which command), one
  service per listener, nothing else in the config

Measured for each:

=======================  ==========================================================
start-all                supervisor spawned -> every port accepts (connects polled
                         every ~1 ms, each port until it first accepts)
restart p50 / p90        N = ``--restart-n`` only: ``--kills`` listeners SIGKILLed
                         one after the other (each up for over a second, so s6 and
                         runit do not throttle it), kill -> the port refuses ->
                         it accepts again (polled every ~0.2 ms); pooled over runs
stop-all                 the supervisor's own stop (s6-svscanctl -t, SIGHUP to
                         runsvdir, SIGTERM to supervisord and k4sinit) -> none of
                         its processes nor the listeners is left
PSS                      the supervisor's own processes (not the listeners):
                         ``Pss`` of /proc/PID/smaps_rollup summed, 0.3 s after
                         start-all (s6: s6-svscan + N s6-supervise; runit:
                         runsvdir + N runsv; supervisord and k4sinit: one process)
CLI                      at the first N: ``k4sinit status`` against the daemon,
                         ``k4sinit --help``, ``s6-svstat``, ``sv status``,
                         ``supervisorctl status`` on one service (wall time of the
                         command run from here, median of ``--cli-reps``)
=======================  ==========================================================

Every figure is the median over runs; ratios are against s6 in the same run set.
:func:`setup` installs s6, runit and supervisor with apt-get when one is missing
(root), and compiles the listener. Everything is cleaned up on exit, Ctrl-C or
SIGTERM: each supervisor runs in its own session, which is SIGKILLed whole,
and every process seen in it too.

Run: ``nice -n 19 .venv/bin/python bench/peers.py [--counts 50,200] [--runs 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _common import exit_on_signals, machine, table

SUPERVISORS = ("s6", "runit", "supervisord", "k4sinit")
#: ``--before CMD``: another k4sinit (an earlier revision) as a column of its own.
BEFORE = "before"
PACKAGES = {"s6-svscan": "s6", "runsvdir": "runit", "supervisord": "supervisor"}

LISTENER_C = r"""
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Listen on 127.0.0.1:PORT, accept and close forever. PORT is the digits of
   argv[1] ("42000"; s6-supervise passes the service's name, "l42000"), or of
   the working directory's name (runit runs ./run in "lPORT" with no argument). */
int main(int argc, char **argv) {
    char cwd[4096];
    const char *name;
    if (argc > 1) {
        name = argv[1];
    } else {
        if (!getcwd(cwd, sizeof cwd)) return 111;
        name = strrchr(cwd, '/') ? strrchr(cwd, '/') + 1 : cwd;
    }
    while (*name && (*name < '0' || *name > '9')) name++;
    int port = atoi(name);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; bind(s, (struct sockaddr *)&addr, sizeof addr) < 0; i++) {
        if (errno != EADDRINUSE || i > 5000) return 111;
        usleep(1000);
    }
    if (listen(s, 128) < 0) return 111;
    for (;;) {
        int c = accept(s, 0, 0);
        if (c >= 0) close(c);
    }
}
"""


# --- setup --------------------------------------------------------------------------


def setup(work: Path) -> Path:
    """Install the peers with apt-get where missing; compile the listener; return it."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"peers.py: {', '.join(missing)} missing; run as root to apt-get them")
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt = ["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0"]
        subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*apt, "install", "--no-install-recommends", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    source = work / "listener.c"
    source.write_text(LISTENER_C)
    binary = work / "listener"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(source)], check=True)
    return binary


def versions() -> str:
    """The peers' Debian package versions, one line."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}, ", *sorted(set(PACKAGES.values()))],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return out.rstrip(", ")


# --- processes ------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone: its fds are closed)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X")


def become_subreaper() -> None:
    """Orphans of a stopping supervisor come to us (PID 1 here may not reap them)."""
    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap() -> None:
    """Reap every exited child (the supervisors and the orphans they left us)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def pss_kib(pid: int) -> int:
    """``Pss`` of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def accepts(port: int) -> bool:
    """One connect to 127.0.0.1:PORT; closed with a reset (no TIME_WAIT left here)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        s.close()


def wait_all_accept(ports: list[int], deadline: float, check: Callable[[], None]) -> float:
    """Poll until every port has accepted once; returns perf_counter then."""
    waiting = list(ports)
    while True:
        waiting = [p for p in waiting if not accepts(p)]
        now = time.perf_counter()
        if not waiting:
            return now
        if now > deadline:
            raise TimeoutError(f"{len(waiting)} ports never accepted, e.g. {waiting[:3]}")
        check()
        time.sleep(0.001)


def listener_pids(root: int, listener: Path) -> dict[int, int]:
    """port -> pid of each listener under ``root`` (from their listening sockets)."""
    found: dict[int, int] = {}
    for proc in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.exe() != str(listener):
                continue
            for conn in proc.net_connections("tcp4"):
                if conn.status == psutil.CONN_LISTEN:
                    found[conn.laddr.port] = proc.pid
    return found


# --- one supervisor -------------------------------------------------------------------


@dataclass
class Supervisor:
    """One supervisor on N listeners, in its own temp dir and session."""

    kind: str
    listener: Path
    ports: list[int]
    k4sinit: list[str]
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="k4sinit-peers-")))
    proc: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)

    def prepare(self) -> list[str]:
        """Write the service definitions; return the command that supervises them."""
        if self.kind in ("s6", "runit"):
            scan = self.tmp / "scan"
            scan.mkdir()
            for port in self.ports:
                (scan / f"l{port}").mkdir()
                (scan / f"l{port}" / "run").symlink_to(self.listener)
            return ["s6-svscan", str(scan)] if self.kind == "s6" else ["runsvdir", str(scan)]
        if self.kind == "supervisord":
            lines = [
                "[supervisord]",
                f"logfile={self.tmp}/supervisord.log",
                f"pidfile={self.tmp}/supervisord.pid",
                f"childlogdir={self.tmp}",
                "minfds=8192",
                "[unix_http_server]",
                f"file={self.tmp}/supervisor.sock",
                "[supervisorctl]",
                f"serverurl=unix://{self.tmp}/supervisor.sock",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            ]
            for port in self.ports:
                lines += [
                    f"[program:l{port}]",
                    f"command={self.listener} {port}",
                    "autorestart=true",
                    "stdout_logfile=NONE",
                    "stderr_logfile=NONE",
                ]
            (self.tmp / "supervisord.conf").write_text("\n".join(lines) + "\n")
            return ["supervisord", "-n", "-c", str(self.tmp / "supervisord.conf")]
        config = ["services:"]
        for port in self.ports:
            config += [f"  l{port}:", f"    command: {json.dumps([str(self.listener), str(port)])}"]
        (self.tmp / "config.yaml").write_text("\n".join(config) + "\n")
        options = ["--socket", self.socket, "--log-format", "json"]
        return [*self.k4sinit, "run", "--config", str(self.tmp / "config.yaml"), *options]

    @property
    def socket(self) -> str:
        return str(self.tmp / "control.sock")

    def start(self, argv: list[str]) -> float:
        """Spawn the supervisor in its own session; returns perf_counter just before."""
        log = open(self.tmp / "out.log", "wb")  # noqa: SIM115 (closed right after the spawn)
        with log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True
            )
        return t0

    def check(self) -> None:
        """Raise if the supervisor has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (self.tmp / "out.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{tail}")

    def tree(self) -> list[psutil.Process]:
        """The supervisor and every descendant (remembered for the cleanup)."""
        assert self.proc is not None
        try:
            top = psutil.Process(self.proc.pid)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def own_pids(self) -> list[int]:
        """The supervisor's own processes: its tree without the listeners."""
        own = []
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                if proc.exe() != str(self.listener):
                    own.append(proc.pid)
        return own

    def stop(self) -> None:
        """Ask the supervisor to stop everything, its own way."""
        assert self.proc is not None
        if self.kind == "s6":
            subprocess.run(["s6-svscanctl", "-t", str(self.tmp / "scan")], check=True)
        elif self.kind == "runit":
            self.proc.send_signal(signal.SIGHUP)
        else:
            self.proc.send_signal(signal.SIGTERM)

    def cleanup(self) -> None:
        """Kill the session and everything seen in it; remove the temp dir. Idempotent."""
        if self.proc is not None:
            self.tree()  # s6 runs each service in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in self.seen:
                with contextlib.suppress(ProcessLookupError):
                    if not gone(pid):
                        os.kill(pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            reap()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def supervising(sup: Supervisor) -> Iterator[Supervisor]:
    try:
        yield sup
    finally:
        sup.cleanup()


# --- the measures --------------------------------------------------------------------


def restart_latencies(sup: Supervisor, kills: int) -> list[float]:
    """SIGKILL ``kills`` listeners one by one: kill -> the old one is gone (its pidfd
    readable: its socket is closed) and the port accepts again (seconds)."""
    pids = listener_pids(sup.tree()[0].pid, sup.listener)
    latencies = []
    for port in sup.ports[:kills]:
        pidfd = os.pidfd_open(pids[port])
        try:
            t0 = time.perf_counter()
            os.kill(pids[port], signal.SIGKILL)
            dead = False
            while True:
                dead = dead or bool(select.select([pidfd], [], [], 0)[0])
                if dead and accepts(port):
                    latencies.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > 15:
                    raise TimeoutError(f"{sup.kind}: port {port} not back after 15 s")
                time.sleep(0.0002)
        finally:
            os.close(pidfd)
    return latencies


def stop_seconds(sup: Supervisor, timeout: float = 30.0) -> float:
    """The supervisor's own stop -> nothing of its tree left."""
    assert sup.proc is not None
    pids = [p.pid for p in sup.tree()]
    t0 = time.perf_counter()
    sup.stop()
    while True:
        reap()  # our own child, and what a supervisor left to us (we are a subreaper)
        pids = [pid for pid in pids if not gone(pid)]
        now = time.perf_counter()
        if not pids:
            return now - t0
        if now - t0 > timeout:
            raise TimeoutError(f"{sup.kind}: {len(pids)} processes left after {timeout} s")
        time.sleep(0.001)


def cli_times(sup: Supervisor, reps: int) -> dict[str, float]:
    """Median wall seconds of the supervisor's status command (and k4sinit --help)."""
    one = f"l{sup.ports[0]}"
    commands: dict[str, list[str]] = {
        "s6": ["s6-svstat", str(sup.tmp / "scan" / one)],
        "runit": ["sv", "status", str(sup.tmp / "scan" / one)],
        "supervisord": ["supervisorctl", "-c", str(sup.tmp / "supervisord.conf"), "status", one],
        "k4sinit": [*sup.k4sinit, "status", "--socket", sup.socket],
    }
    commands[BEFORE] = commands["k4sinit"]
    runs = {"status": commands[sup.kind]}
    if sup.kind in ("k4sinit", BEFORE):
        runs["--help"] = [*sup.k4sinit, "--help"]
    times: dict[str, float] = {}
    for name, argv in runs.items():
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            samples.append(time.perf_counter() - t0)
            if done.returncode not in (0, 3):  # sv status of a running service: 0
                err = done.stderr.decode(errors="replace")
                raise RuntimeError(f"{argv} exited {done.returncode}: {err}")
        times[name] = statistics.median(samples)
    return times


def measure(kind: str, n: int, base: int, listener: Path, args: argparse.Namespace) -> Result:
    """One supervisor, one run at N: every measure that applies."""
    command = args.before if kind == BEFORE else args.k4sinit
    sup = Supervisor(kind, listener, list(range(base, base + n)), command)
    result = Result()
    busy = [port for port in sup.ports if accepts(port)]
    if busy:
        raise RuntimeError(f"ports already in use (a leftover?): {busy[:5]}")
    with supervising(sup):
        argv = sup.prepare()
        t0 = sup.start(argv)
        ready = wait_all_accept(sup.ports, t0 + args.timeout, sup.check)
        result.start = ready - t0
        time.sleep(0.3)
        result.pss = sum(pss_kib(pid) for pid in sup.own_pids()) / 1024
        if args.cli_at == n:
            result.cli = cli_times(sup, args.cli_reps)
        if n == args.restart_n:
            time.sleep(max(0.0, ready + 1.2 - time.perf_counter()))  # s6/runit throttle < 1 s
            result.restarts = restart_latencies(sup, min(args.kills, n))
        result.stop = stop_seconds(sup)
    return result


@dataclass
class Result:
    start: float = 0.0
    stop: float = 0.0
    pss: float = 0.0
    restarts: list[float] = field(default_factory=list)
    cli: dict[str, float] = field(default_factory=dict)


# --- the table -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(n: int, results: dict[str, list[Result]], args: argparse.Namespace) -> str:
    """The side-by-side table at N, with k4sinit's ratio against s6."""

    def r0(kind: str) -> dict[str, float]:
        return results[kind][0].cli

    def med(kind: str, get: Callable[[Result], float]) -> float:
        return statistics.median(get(r) for r in results[kind])

    rows: list[tuple[str, Callable[[str], float], str]] = [
        (
            "start-all until every port accepts (ms)",
            lambda k: med(k, lambda r: r.start) * 1e3,
            ".0f",
        ),
        ("stop-all until everything is gone (ms)", lambda k: med(k, lambda r: r.stop) * 1e3, ".0f"),
        ("supervisor PSS (MiB)", lambda k: med(k, lambda r: r.pss), ".1f"),
    ]
    if n == args.restart_n:

        def pooled(kind: str) -> list[float]:
            return [x for r in results[kind] for x in r.restarts]

        rows.insert(
            1,
            ("restart after kill -9, p50 (ms)", lambda k: percentile(pooled(k), 0.5) * 1e3, ".1f"),
        )
        rows.insert(
            2,
            ("restart after kill -9, p90 (ms)", lambda k: percentile(pooled(k), 0.9) * 1e3, ".1f"),
        )
    if args.cli_at == n:
        rows.append(
            ("status command, wall (ms)", lambda k: med(k, lambda r: r.cli["status"]) * 1e3, ".1f")
        )
    kinds = [k for k in (*SUPERVISORS, BEFORE) if results[k]]
    body = []
    for label, get, fmt in rows:
        values = {kind: get(kind) for kind in kinds}
        ratio = values["k4sinit"] / values["s6"] if {"s6", "k4sinit"} <= set(kinds) else None
        ratio_cell = "-" if ratio is None else f"{ratio:.2f}"
        body.append([label, *(format(values[k], fmt) for k in kinds), ratio_cell])
    if args.cli_at == n and "k4sinit" in kinds:
        helps = {k: med(k, lambda r: r.cli["--help"]) * 1e3 for k in kinds if "--help" in r0(k)}
        cells = [f"{helps[k]:.1f}" if k in helps else "-" for k in kinds]
        body.append(["k4sinit --help, wall (ms)", *cells, "-"])
    return table([f"N={n}", *kinds, "k4sinit/s6"], body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="50,200", help="comma-separated N (default 50,200)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N; medians (default 3)")
    parser.add_argument("--only", default=",".join(SUPERVISORS), help="supervisors to run")
    parser.add_argument(
        "--before",
        default=None,
        help="another k4sinit command (e.g. an earlier revision), measured as the column "
        f"'{BEFORE}'",
    )
    parser.add_argument("--restart-n", type=int, default=50, help="N of the restart measure")
    parser.add_argument("--kills", type=int, default=25, help="listeners killed per run")
    parser.add_argument("--cli-reps", type=int, default=10, help="calls per CLI figure")
    parser.add_argument("--port", type=int, default=42000, help="first port")
    parser.add_argument("--timeout", type=float, default=60.0, help="start-all timeout (s)")
    parser.add_argument(
        "--k4sinit",
        default=None,
        help="the k4sinit command, split on spaces (default: k4sinit next to this python)",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    args.cli_at = counts[0]
    default_cmd = Path(sys.executable).with_name("k4sinit")
    args.k4sinit = args.k4sinit.split() if args.k4sinit else [str(default_cmd)]
    kinds = [k for k in SUPERVISORS if k in args.only.split(",")]
    if args.before:
        args.before = args.before.split()
        kinds.append(BEFORE)
    exit_on_signals()
    become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="k4sinit-peers-build-"))
    try:
        listener = setup(work)
        print(f"{machine()}; {versions()}; k4sinit: {' '.join(args.k4sinit)}", flush=True)
        if args.before:
            print(f"{BEFORE}: {' '.join(args.before)}", flush=True)
        for n in counts:
            results: dict[str, list[Result]] = {k: [] for k in (*SUPERVISORS, BEFORE)}
            for run in range(args.runs):
                order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
                for kind in order:
                    res = measure(kind, n, args.port, listener, args)
                    results[kind].append(res)
                    print(
                        f"  N={n} run {run + 1} {kind:>11}: start {res.start * 1e3:7.1f} ms, "
                        f"stop {res.stop * 1e3:7.1f} ms, PSS {res.pss:5.1f} MiB; "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
            print()
            print(report(n, results, args))
            print(flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
