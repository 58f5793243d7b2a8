"""Start reference vhost-user back-ends as subprocesses (for benchmarks and interop tests).

Each ``start_*`` returns a :class:`Peer` once its socket is listening; :meth:`Peer.close` ends the
process (SIGTERM, then SIGKILL) and removes the socket file.  Command lines follow
/work/shared/PEERS.md: qemu-storage-daemon's vhost-user-blk export, ``pyvirtio serve``,
DPDK's testpmd with a net_vhost port, and QEMU's C virtiofsd.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import TransportError

QSD = "qemu-storage-daemon"
TESTPMD = "dpdk-testpmd"
VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far, every thread, also those that
    ended (an io_uring's kernel workers count here); 0.0 once it is gone."""
    return sum(process_cpu_times(pid))


def process_cpu_times(pid: int) -> tuple[float, float]:
    """:func:`process_cpu_seconds` split: (user, system) seconds — the process's own code, and
    the kernel's work for it (system calls, its io_uring workers).  The kernel charges each
    clock tick to one or the other, so the split is a sample: exact enough over thousands of
    requests, not for one.  (0.0, 0.0) once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return _stat_cpu_times(f.read())
    except OSError:
        return 0.0, 0.0


def _stat_cpu_seconds(stat: str) -> float:
    """utime + stime of a ``/proc/.../stat`` line, in seconds (the fields after the name)."""
    return sum(_stat_cpu_times(stat))


def _stat_cpu_times(stat: str) -> tuple[float, float]:
    """(utime, stime) of a ``/proc/.../stat`` line, in seconds."""
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


#: The thread groups :func:`thread_cpu_seconds` sorts a process's threads into.
THREAD_GROUPS = ("main", "threads", "io_uring")


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """The CPU seconds of every thread of process ``pid`` now, by thread id, with its group:
    ``main`` (the thread whose id is the pid: qemu-storage-daemon's event loop; pyvirtio's
    vhost-user control thread), ``io_uring`` (the kernel's io_uring workers, ``iou-wrk-*`` and
    ``iou-sqp-*``) and ``threads`` (every other one: pyvirtio's queue workers,
    qemu-storage-daemon's thread pool).  Empty once the process is gone."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        group = ("main" if tid == str(pid) else
                 "io_uring" if name.startswith(("iou-wrk", "iou-sqp")) else "threads")
        out[int(tid)] = (group, _stat_cpu_seconds(stat))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (virtiofsd's sandbox forks: the child does the work)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class CpuSampler:
    """Samples a process's CPU time every ``interval`` seconds on a thread, so that the CPU of a
    window known only afterwards (a benchmark's timed phase) can be read: :meth:`between`;
    with ``threads``, also by thread group (:func:`thread_cpu_seconds`, :meth:`groups_between`);
    with ``tree``, the process and its descendants together (:func:`process_tree`), and
    :meth:`most` for a whole run that may outlast the process."""

    def __init__(self, pid: int, interval: float = 0.02, *, threads: bool = False, tree: bool = False):
        self.pid, self.interval, self.threads, self.tree = pid, interval, threads, tree
        self.samples: list[tuple[float, float]] = []
        #: the user part of each of :attr:`samples` (:func:`process_cpu_times`)
        self.user_samples: list[float] = []
        self.group_samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cpu-{pid}", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        now = time.monotonic()
        pids = process_tree(self.pid) if self.tree else (self.pid,)
        times = [process_cpu_times(p) for p in pids]
        self.samples.append((now, sum(u + k for u, k in times)))
        self.user_samples.append(sum(u for u, _ in times))
        if self.threads:
            self.group_samples.append((now, thread_cpu_seconds(self.pid)))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                self._sample()
                return

    def most(self) -> float:
        """The most CPU seconds any sample saw: what the process used over the whole run, even
        if it exited before the sampler stopped (a process that is gone reads 0)."""
        return max((cpu for _, cpu in self.samples), default=0.0)

    def between(self, start: float, end: float) -> float:
        """CPU seconds used from monotonic time ``start`` to ``end`` (nearest samples)."""
        return self._between(start, end, user=False)

    def user_between(self, start: float, end: float) -> float:
        """The user part of :meth:`between`: CPU seconds spent in the process's own code (the
        rest is the kernel working for it)."""
        return self._between(start, end, user=True)

    def _between(self, start: float, end: float, *, user: bool) -> float:
        if not self.samples:
            return 0.0
        def at(t: float) -> float:
            i = min(range(len(self.samples)), key=lambda i: abs(self.samples[i][0] - t))
            return self.user_samples[i] if user else self.samples[i][1]
        return at(end) - at(start)

    def groups_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per thread group (:data:`THREAD_GROUPS`) from ``start`` to ``end``
        (needs ``threads``).  Each thread counts from the sample nearest ``start`` (0 if it
        started later) to the last sample up to the one nearest ``end`` that still saw it — so a
        thread that ends inside the window (io_uring's workers end with their ring) keeps what it
        used; what no sample saw (a thread born and gone between two samples) goes to
        ``threads``, so that the groups add up to :meth:`between`."""
        if not self.group_samples:
            return {}
        def nearest(t: float) -> int:
            return min(range(len(self.group_samples)), key=lambda i: abs(self.group_samples[i][0] - t))
        first, last = nearest(start), nearest(end)
        before = self.group_samples[first][1]
        latest: dict[int, tuple[str, float]] = {}
        for _, threads in self.group_samples[first:last + 1]:
            latest.update(threads)
        used = dict.fromkeys(THREAD_GROUPS, 0.0)
        for tid, (group, seconds) in latest.items():
            used[group] += max(0.0, seconds - before.get(tid, (group, 0.0))[1])
        used["threads"] += max(0.0, self.between(start, end) - sum(used.values()))
        return used


class PeerFailed(TransportError):
    """A back-end program did not start (missing, exited, or never listened)."""


@dataclass
class Peer:
    name: str
    socket_path: str
    process: subprocess.Popen
    log_path: str
    extra_cleanup: list = field(default_factory=list)
    kind: str = ""  # the device it serves (blk, rng, net …) when known

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for path in [self.socket_path, *self.extra_cleanup]:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def which(program: str) -> str | None:
    return shutil.which(program)


def virtiofsd_path() -> str | None:
    return next((p for p in VIRTIOFSD_PATHS if os.access(p, os.X_OK)), None)


def _start(name: str, argv: list[str], socket_path: str, timeout: float, log_dir: str | None = None,
           settle: float = 0.05, env: dict | None = None) -> Peer:
    log_dir = log_dir or os.path.dirname(socket_path) or tempfile.gettempdir()
    log_path = os.path.join(log_dir, f"{os.path.basename(socket_path)}.log")
    log = open(log_path, "ab")  # a restarted peer on the same socket adds to the same log
    log.write(f"--- {name} started: {' '.join(argv)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    except FileNotFoundError:
        log.close()
        raise PeerFailed(f"{name}: {argv[0]} is not installed") from None
    log.close()
    peer = Peer(name, socket_path, proc, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            peer.close()
            raise PeerFailed(f"{name} exited with status {proc.returncode}: {peer.log()[-2000:]}")
        try:
            if stat.S_ISSOCK(os.stat(socket_path).st_mode):
                time.sleep(settle)  # bind() made the file; give listen() a moment
                return peer
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            peer.close()
            raise PeerFailed(f"{name} did not listen on {socket_path} within {timeout}s: "
                             f"{peer.log()[-2000:]}")
        time.sleep(0.02)


def start_qsd(socket_path: str, image: str | None = None, *, null_size: int | None = None,
              writable: bool = True, num_queues: int = 1, discard: bool = True,
              direct: bool = False, aio: str | None = None, iothread: bool = False,
              poll_max_ns: int | None = None, timeout: float = 10.0) -> Peer:
    """qemu-storage-daemon exporting ``image`` (file driver; ``direct``: ``cache.direct=on``,
    ``aio``: ``io_uring``, ``threads`` or ``native``) or a null-co device of ``null_size`` bytes
    as vhost-user-blk; with ``iothread``, the export runs in an IOThread (``--object iothread``,
    ``iothread=``), whose event loop polls adaptively (``poll_max_ns``, QEMU's default 32768)
    where the main loop's does not."""
    if (image is None) == (null_size is None):
        raise ValueError("give exactly one of image and null_size")
    if image is not None:
        blockdev = (f"driver=file,node-name=f0,filename={image}" + (",discard=unmap" if discard else "")
                    + (",cache.direct=on" if direct else "") + (f",aio={aio}" if aio else ""))
    else:
        blockdev = f"driver=null-co,node-name=f0,size={null_size}"
    export = (f"type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={socket_path},"
              f"writable={'on' if writable else 'off'}" + (f",num-queues={num_queues}" if num_queues > 1 else "")
              + (",iothread=io0" if iothread else ""))
    thread = "iothread,id=io0" + (f",poll-max-ns={poll_max_ns}" if poll_max_ns is not None else "")
    argv = [QSD] + (["--object", thread] if iothread else []) + [
        "--blockdev", blockdev, "--export", export]
    peer = _start("qemu-storage-daemon", argv, socket_path, timeout)
    peer.kind = "blk"
    return peer


def start_pyvirtio(kind: str, socket_path: str, *, blk_file: str | None = None,
                   read_only: bool = False, num_queues: int = 1, direct: bool = False,
                   aio: str | None = None, timeout: float = 15.0, src: str | None = None,
                   extra_args: Sequence[str] = (), program: Sequence[str] | None = None) -> Peer:
    """``pyvirtio serve blk|rng`` in a child interpreter (blk: ``--direct``, ``--aio=AIO``); with
    ``src``, the package is imported from that directory (another checkout's ``src``: an A/B
    against an earlier commit); ``program``, the command that takes ``serve ...`` instead of
    ``python -m pyvirtio.cli`` (a benchmark's own variant of the daemon)."""
    command = list(program) if program is not None else [sys.executable, "-m", "pyvirtio.cli"]
    argv = [*command, "serve", kind, f"--socket-path={socket_path}", *extra_args]
    if kind == "blk":
        argv += [f"--blk-file={blk_file}", f"--num-queues={num_queues}"]
        argv += (["--read-only"] if read_only else []) + (["--direct"] if direct else [])
        argv += [f"--aio={aio}"] if aio else []
    env = None
    if src is not None:
        if not os.path.isfile(os.path.join(src, "pyvirtio", "cli.py")):
            raise PeerFailed(f"pyvirtio serve {kind}: {src} holds no pyvirtio package")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    peer = _start(f"pyvirtio serve {kind}", argv, socket_path, timeout, env=env)
    peer.kind = kind
    return peer


def run_virtio_user_txonly(socket_path: str, *, prefix: str, seconds: float, txpkts: int = 64,
                           vdev_opts: str = "", main_lcore: int | None = None,
                           start_timeout: float = 60.0) -> str:
    """DPDK testpmd as a vhost-user front-end (``net_virtio_user``, txonly) for ``seconds`` of
    transmitting, then SIGINT (SIGKILL if it will not end); returns its output.  The seconds count
    from the first statistics line with a non-zero Tx-pps, so a slow start (a loaded machine, a
    back-end that connects later in ``server=1`` mode) does not eat the run; after
    ``start_timeout`` seconds without one it is stopped anyway.  Its runtime directory is removed."""
    argv = [TESTPMD, "-l", "0,1"] + (["--main-lcore", str(main_lcore)] if main_lcore is not None else [])
    argv += ["--no-huge", "-m", "1024", "--no-pci", f"--file-prefix={prefix}", "--vdev",
             f"net_virtio_user0,path={socket_path},queues=1" + (f",{vdev_opts}" if vdev_opts else ""),
             "--", "--forward-mode=txonly", "-a", "--stats-period", "1", "--nb-cores=1",
             f"--txpkts={txpkts}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    sending = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = _TX_PPS.search(line)
            if m and int(m.group(1)) > 0:
                sending.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not sending.is_set() and proc.poll() is None and time.monotonic() < deadline:
            sending.wait(0.2)
        if sending.is_set():
            end = time.monotonic() + seconds
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    return "".join(lines)


_TX_PPS = re.compile(r"Tx-pps:\s+(\d+)")


def start_testpmd(socket_path: str, *, prefix: str | None = None, mode: str = "icmpecho",
                  timeout: float = 30.0) -> Peer:
    """DPDK testpmd with one net_vhost port listening on ``socket_path`` (PEERS.md)."""
    prefix = prefix or f"pyvirtio-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
    argv = [TESTPMD, "-l", "0,1", "--no-huge", "-m", "1024", "--no-pci", f"--file-prefix={prefix}",
            "--vdev", f"net_vhost0,iface={socket_path},queues=1", "--",
            "--total-num-mbufs=16384", f"--forward-mode={mode}", "-a", "--stats-period", "60"]
    peer = _start("dpdk-testpmd", argv, socket_path, timeout)
    peer.extra_cleanup.append(f"/var/run/dpdk/{prefix}")
    return peer


def start_virtiofsd(socket_path: str, source: str, *, timeout: float = 10.0,
                    options: Sequence[str] = ()) -> Peer:
    """QEMU's C virtiofsd sharing ``source`` (it serves one front-end, then exits); ``options``
    are more ``-o`` options (``xattr``, ``cache=none`` ...)."""
    path = virtiofsd_path()
    if path is None:
        raise PeerFailed("virtiofsd is not installed")
    opts = ",".join([f"source={source}", *options])
    return _start("virtiofsd", [path, f"--socket-path={socket_path}", "-o", opts],
                  socket_path, timeout)


def fill_image(path: str, size: int) -> None:
    """A raw image of ``size`` bytes of real random data (no holes: reads reach the disk),
    preallocated first and synced."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
        for _ in range(size >> 20):
            f.write(chunk)
        f.write(chunk[:size & ((1 << 20) - 1)])
        f.flush()
        os.fsync(f.fileno())


def interleave(names: list, tests, rounds: int, run_one, log=None, *, each_round=None) -> list[dict]:
    """Run every test of ``tests`` (``(name, params)`` pairs) on every back-end of ``names``,
    test by test, ``rounds`` times, reversing the back-end order every other round (PEERS.md).
    ``run_one(backend, params)`` returns a result dict; each is kept with its round, test and
    back-end, and passed to ``log(row)`` when given.  ``each_round(round)``, when given, runs
    before every round (a harness that starts its back-ends anew each round)."""
    runs = []
    for rnd in range(rounds):
        if each_round is not None:
            each_round(rnd)
        order = names if rnd % 2 == 0 else names[::-1]
        for test, params in tests:
            for name in order:
                row = {"round": rnd, "test": test, "backend": name, **run_one(name, params)}
                runs.append(row)
                if log is not None:
                    log(row)
    return runs


def relauncher(peers: dict, starts: dict, names) -> Callable[[int], None]:
    """An :func:`interleave` ``each_round`` for a harness that starts its back-ends anew each
    round: from the second round on, every peer in ``peers`` is closed and each of ``names``
    started again by ``starts[name]()``, in ``peers`` itself (which ``run_one`` reads)."""
    def relaunch(rnd: int) -> None:
        if rnd:
            while peers:
                peers.popitem()[1].close()
            for name in names:
                peers[name] = starts[name]()
    return relaunch


def same_round_ratios(runs: list[dict], test: str, a: str, b: str, key: str = "iops") -> list[float]:
    """``a``'s ``key`` over ``b``'s in each round where both ran ``test``."""
    by = {(r["round"], r["backend"]): r[key] for r in runs if r["test"] == test}
    rounds = sorted({rnd for rnd, _ in by})
    return [by[rnd, a] / by[rnd, b] for rnd in rounds if (rnd, a) in by and by.get((rnd, b))]


class InProcessBackend:
    """A pyvirtio device served by :class:`~pyvirtio.vhost_user.backend.server.VhostUserServer` on a
    thread of this process (tests; the benchmark uses the ``pyvirtio serve`` program instead)."""

    def __init__(self, device, socket_path: str, **options):
        import threading

        from ..vhost_user.backend.server import VhostUserServer

        self.device = device
        self.socket_path = socket_path
        self.server = VhostUserServer()
        self.server.add(device, socket_path=socket_path, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"serve-{socket_path}",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)
        self.device.close()

    def __enter__(self) -> "InProcessBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Peer", "PeerFailed", "InProcessBackend", "fill_image", "interleave", "same_round_ratios", "start_qsd", "start_pyvirtio", "start_testpmd", "start_virtiofsd",
           "which", "virtiofsd_path", "QSD", "TESTPMD"]
