"""pyvirtio.bench.peers' CPU accounting: a process's CPU time, and the same split by thread group
(what ``benchmarks/blk_vhost_user.py --threads`` reports per request)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pyvirtio.bench.peers import (THREAD_GROUPS, CpuSampler, process_cpu_seconds, process_cpu_times,
                                  thread_cpu_seconds)

pytestmark = pytest.mark.timeout(60)


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_thread_cpu_seconds_names_each_thread_by_group():
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_burn(0.1), done.wait(10)))
    worker.start()
    try:
        time.sleep(0.05)
        threads = thread_cpu_seconds(os.getpid())
        assert threads[os.getpid()][0] == "main"
        assert threads[worker.native_id][0] == "threads"
        assert {group for group, _ in threads.values()} <= set(THREAD_GROUPS)
        assert sum(seconds for _, seconds in threads.values()) <= process_cpu_seconds(os.getpid()) + 0.02
    finally:
        done.set()
        worker.join()
    assert thread_cpu_seconds(2 ** 22 + 7) == {}  # no such process: nothing, no error


def test_groups_keep_a_thread_that_ended_inside_the_window_and_add_up():
    """A thread that used CPU and ended between the window's two ends still counts (io_uring's
    workers end with their ring, before the last sample); main's own CPU is main's."""
    with CpuSampler(os.getpid(), interval=0.01, threads=True) as cpu:
        time.sleep(0.05)
        start = time.monotonic()
        worker = threading.Thread(target=_burn, args=(0.3,))
        worker.start()
        worker.join()
        _burn(0.1)  # the main thread's share
        time.sleep(0.05)  # samples after the worker is gone
        end = time.monotonic()
        time.sleep(0.03)
    groups = cpu.groups_between(start, end)
    assert set(groups) == set(THREAD_GROUPS)
    assert groups["threads"] >= 0.25, groups
    assert 0.05 <= groups["main"] <= 0.2, groups
    assert groups["io_uring"] == 0.0
    assert abs(sum(groups.values()) - cpu.between(start, end)) < 0.03
    assert CpuSampler(os.getpid()).groups_between(start, end) == {}  # without threads=True


def test_user_and_system_time_are_told_apart():
    """``process_cpu_times`` and ``CpuSampler.user_between``: a loop in the process's own code
    is user time; a loop of system calls is mostly the kernel's (what the blk benchmarks print
    per request, to show which side of the system-call boundary a back-end spends its time)."""
    user0, system0 = process_cpu_times(os.getpid())
    assert abs(user0 + system0 - process_cpu_seconds(os.getpid())) < 0.02
    with CpuSampler(os.getpid(), interval=0.01) as cpu:
        time.sleep(0.03)
        start = time.monotonic()
        end = start + 0.3
        while time.monotonic() < end:  # pure Python (monotonic() makes no system call): user time
            sum(range(1000))
        mid = time.monotonic()
        fd = os.open("/dev/zero", os.O_RDONLY)
        try:
            end = mid + 0.3
            while time.monotonic() < end:  # 1 MiB reads: the kernel zeroes the buffer
                os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        stop = time.monotonic()
        time.sleep(0.03)
    # Ratios, not seconds: a loaded machine may give the loops less than their 0.3 s each.
    assert cpu.between(start, mid) >= 0.1, cpu.between(start, mid)
    assert cpu.user_between(start, mid) >= 0.6 * cpu.between(start, mid), (cpu.user_between(start, mid),
                                                                          cpu.between(start, mid))
    assert cpu.user_between(mid, stop) < 0.5 * cpu.between(mid, stop), (cpu.user_between(mid, stop),
                                                                       cpu.between(mid, stop))
    assert 0 <= cpu.user_between(start, stop) <= cpu.between(start, stop) + 0.02
    assert process_cpu_times(2 ** 22 + 7) == (0.0, 0.0)  # no such process


def test_a_tree_sampler_counts_the_children_and_keeps_the_most_after_they_exit():
    """``tree=True`` sums the process and its descendants (virtiofsd's work is in its sandbox
    child); ``most()`` is the whole run's CPU even after the processes are gone (they read 0)."""
    import subprocess
    import sys
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); "
                               "time.sleep(0.2)"])
    with CpuSampler(parent.pid, interval=0.02, tree=True) as tree, \
            CpuSampler(parent.pid, interval=0.02) as alone:
        parent.wait(timeout=30)
        time.sleep(0.1)  # samples of the exited process: 0
    assert tree.samples[-1][1] == 0.0
    assert tree.most() >= 0.3  # the child's 0.4 s, less a sampling interval or so
    assert alone.most() < 0.3  # the parent alone: an interpreter start-up and a wait
