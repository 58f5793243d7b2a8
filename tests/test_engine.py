"""The queue-group worker (pyvirtio.engine): adaptive polling before it sleeps."""

import os
import select
import threading
import time

import pytest

from pyvirtio import engine
from pyvirtio.engine import POLL_GROW, POLL_START, GroupWorker


class _Host:
    """A QueueHost with one queue whose kicks arrive on an eventfd; counts what it serves."""

    def __init__(self):
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.served = 0
        self.lock = threading.Lock()
        self.log = []  # what a test's host records of its turns

    def kick_fd(self, index):
        return self.kick

    def polling(self, index):
        return False

    def process(self, index):
        with self.lock:
            self.served += 1
        return False

    def host_fds(self, group):
        return []

    def host_ready(self, group, events):
        return set()

    def notify(self, index):
        raise AssertionError("nothing asked for a notification")

    def close(self):
        os.close(self.kick)


class _Clock:
    """perf_counter for engine._wait: ``wait`` seconds pass in each blocking poll."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Poller:
    """poll(0) finds nothing until ``ready_after`` non-blocking polls; a blocking poll takes the
    clock forward by ``block`` seconds and returns one event."""

    def __init__(self, clock, block, ready_after=None):
        self.clock, self.block, self.ready_after = clock, block, ready_after
        self.polls = 0

    def poll(self, timeout=None):
        if timeout == 0:
            self.polls += 1
            self.clock.now += 1e-6
            if self.ready_after is not None and self.polls >= self.ready_after:
                return [(3, select.POLLIN)]
            return []
        self.clock.now += self.block
        return [(3, select.POLLIN)]


def _worker(poll_max):
    return GroupWorker(_Host(), 0, [0], name="t", poll_max=poll_max)


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(engine.time, "perf_counter", c)
    return c


def test_short_waits_grow_the_window_up_to_poll_max(clock):
    w = _worker(32e-6)
    windows = []
    for _ in range(6):  # each event comes 10 µs after polling gave up
        w._wait(_Poller(clock, block=10e-6), None)
        windows.append(round(w._window * 1e6))
    # 10, 14, 18, 26 µs waits grow it; 32 µs of polling + 10 is longer than poll_max (QEMU
    # counts the polling in the wait too): polling ends, and starts again from 4 µs.
    assert windows == [4, 8, 16, 32, 0, 4]
    assert POLL_START == 4e-6 and POLL_GROW == 2


def test_a_long_wait_ends_polling_and_an_idle_worker_sleeps_at_once(clock):
    w = _worker(32e-6)
    w._window = 32e-6
    p = _Poller(clock, block=5e-3)  # 5 ms idle: longer than poll_max
    assert w._wait(p, None)
    assert w._window == 0
    p = _Poller(clock, block=5e-3)
    w._wait(p, None)
    assert p.polls == 0  # no window: straight to the blocking poll, no spinning


def test_an_event_found_while_polling_keeps_the_window_and_is_counted(clock):
    w = _worker(32e-6)
    w._window = 16e-6
    p = _Poller(clock, block=1.0, ready_after=3)
    assert w._wait(p, None) == [(3, select.POLLIN)]
    assert p.polls == 3 and w.polled == 1 and w._window == 16e-6


def test_polling_stops_at_the_window_then_blocks(clock):
    w = _worker(32e-6)
    w._window = 8e-6
    p = _Poller(clock, block=20e-6)
    w._wait(p, None)
    assert 7 <= p.polls <= 9  # about 8 µs of 1 µs polls
    assert w._window == 16e-6  # waited 28 µs in all: short, so it grows


def test_a_polling_worker_serves_kicks_and_idles_without_spinning():
    host = _Host()
    w = GroupWorker(host, 0, [0], name="poll-test", poll_max=200e-6).start()
    try:
        for i in range(300):  # kicks close together: the window grows, some are found polling
            os.eventfd_write(host.kick, 1)
            if i % 3 == 0:
                time.sleep(0.0002)
        time.sleep(0.05)
        before = host.served
        os.eventfd_write(host.kick, 1)  # one more, after a pause: served all the same
        deadline = time.monotonic() + 5
        while host.served == before and time.monotonic() < deadline:
            time.sleep(0.001)
        assert host.served > before
        time.sleep(0.05)  # idle for longer than poll_max: the next wait sleeps at once
        thread = w._thread
        assert thread is not None and thread.ident is not None
        clk = time.pthread_getcpuclockid(thread.ident)
        cpu0 = time.clock_gettime(clk)
        time.sleep(0.3)
        assert time.clock_gettime(clk) - cpu0 < 0.03, "an idle worker kept spinning"
    finally:
        assert w.stop()
        host.close()


def test_serve_refuses_a_poll_window_out_of_range(tmp_path):
    import subprocess
    import sys

    for bad in ("-1", "abc", "20000"):
        r = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "serve", "rng", f"--poll-us={bad}",
                            f"--socket-path={tmp_path / 's.sock'}"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "--poll-us" in r.stderr, r.stderr


def test_a_completion_is_notified_before_a_held_ring_is_looked_at_again():
    """A host turn whose completions the driver wants to hear of notifies first, then drains
    the queues whose kicks are held (requests were in flight): the driver starts its next
    request meanwhile.  A completion of that drain asks again."""

    class Device:
        kicks_held = {0}
        faults = engine._NO_FAULTS

    class Host(_Host):
        def host_ready(self, group, events):
            self.log.append("published")
            return {0}

        def process(self, index):
            self.log.append("drained")
            return len(self.log) > 3  # the second turn's drain completes something too

        def notify(self, index):
            self.log.append(f"notified {index}")

    host = Host()
    w = GroupWorker(host, 0, [0], name="early", device=Device())
    try:
        w.turn(events=[(99, select.POLLIN)])
        assert host.log == ["published", "notified 0", "drained"]
        host.log.clear()
        host.log.append("-")
        w.turn(events=[(99, select.POLLIN)])
        assert host.log == ["-", "published", "notified 0", "drained", "notified 0"]
    finally:
        host.close()


def test_a_kick_is_read_after_its_turn_and_a_later_one_serves_the_ring_again():
    """A plain kick (POLLIN) is read after the turn has served and notified its queue.  If the
    eventfd counted only that kick, the ring is not looked at again; if another kick landed
    meanwhile (its chain perhaps after the drain's last look), the ring is served once more in
    the same call — no chain waits for a kick that was already consumed."""

    class Host(_Host):
        def __init__(self, kicks_during_turn):
            super().__init__()
            self.kicks_during_turn = kicks_during_turn

        def process(self, index):
            self.log.append("process")
            if self.kicks_during_turn:  # the driver adds a chain and kicks while we serve
                self.kicks_during_turn -= 1
                os.eventfd_write(self.kick, 1)
            return True

        def notify(self, index):
            self.log.append("notify")

    for during, expected in ((0, ["process", "notify"]),
                             (1, ["process", "notify", "process", "notify"])):
        host = Host(during)
        w = GroupWorker(host, 0, [0], name="late-kick")
        try:
            os.eventfd_write(host.kick, 1)
            w._serve([(host.kick, select.POLLIN)], {host.kick: (select.POLLIN, 0)}, False)
            assert host.log == expected
            with pytest.raises(BlockingIOError):  # every kick consumed
                os.eventfd_read(host.kick)
        finally:
            host.close()


def test_a_host_with_its_own_short_way_takes_the_kicks_turn_in_one_call():
    """A host with ``serve_kick`` (vhost-user's session) takes a kick's turn in one call: the
    worker counts what it says (-1: the fd was replaced — nothing counted, the kick left
    unread; else one kick and the notifications it sent) and reads the kick after it."""
    from pyvirtio.stats import QueueCounters

    class Host(_Host):
        def __init__(self):
            super().__init__()
            self.current = self.kick
            self.calls = []

        def serve_kick(self, index, fd):
            self.calls.append((index, fd))
            if fd != self.current:
                return -1
            self.served += 1
            return 1

        def process(self, index):
            raise AssertionError("the turn went the general way")

    host = Host()
    counters = [QueueCounters()]
    w = GroupWorker(host, 0, [0], name="own-short-way", counters=counters)
    try:
        os.eventfd_write(host.kick, 1)
        host.current = -1
        w._serve_kick(host.kick, 0)
        assert host.calls == [(0, host.kick)] and (counters[0].kicks, counters[0].interrupts) == (0, 0)
        assert os.eventfd_read(host.kick) == 1  # left for whoever owns that number now
        host.current = host.kick
        os.eventfd_write(host.kick, 1)
        w._serve_kick(host.kick, 0)
        assert host.served == 1 and (counters[0].kicks, counters[0].interrupts) == (1, 1)
        with pytest.raises(BlockingIOError):  # the kick was read after the turn
            os.eventfd_read(host.kick)
    finally:
        host.close()


def test_the_worker_takes_a_lone_kick_the_short_way_and_anything_more_the_general_way():
    """The running worker (_run): a kick alone goes to the host's short way (serve_kick); a
    kick that comes with a host call pending goes the general way (the call first, then
    ``process``) — both served, every kick read."""

    class Host(_Host):
        def serve_kick(self, index, fd):
            self.log.append("serve_kick")
            return 0

        def process(self, index):
            self.log.append("process")
            return False

    host = Host()
    w = GroupWorker(host, 0, [0], name="dispatch").start()
    try:
        deadline = time.monotonic() + 10
        os.eventfd_write(host.kick, 1)
        while not host.log and time.monotonic() < deadline:
            time.sleep(0.001)
        assert host.log == ["serve_kick"]
        with w.lock:  # a host call and a kick in the same poll
            w.call_soon(lambda: host.log.append("call"))
            os.eventfd_write(host.kick, 1)
        while len(host.log) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert host.log[1:3] == ["call", "process"]
        while select.select([host.kick], [], [], 0)[0] and time.monotonic() < deadline:
            time.sleep(0.001)  # (if the wake came first, the kick is read by a turn of its own)
        assert not select.select([host.kick], [], [], 0)[0]
    finally:
        assert w.stop()
        host.close()


def test_a_lone_kick_of_a_host_without_a_short_way_takes_the_general_turn():
    """A host without ``serve_kick`` (the tests' hosts; LocalEngine never has kick fds) gets a
    turn of one kick from the general turn (_serve), which _run calls for it: a kick fd that the
    control path replaced since the poll is neither served nor read (the number may name another
    file now); a served kick counts one kick and, notified, one interrupt."""
    from pyvirtio.stats import QueueCounters

    class Host(_Host):
        def __init__(self):
            super().__init__()
            self.current = self.kick
            self.notified = 0

        def kick_fd(self, index):
            return self.current

        def process(self, index):
            super().process(index)
            return True

        def notify(self, index):
            self.notified += 1

    host = Host()
    counters = [QueueCounters()]
    w = GroupWorker(host, 0, [0], name="general-way", counters=counters)
    assert w._serve_one is None
    one = ([(host.kick, select.POLLIN)], {host.kick: (select.POLLIN, 0)}, False)
    try:
        os.eventfd_write(host.kick, 1)
        host.current = -1  # replaced after the poll reported the old fd readable
        w._serve(*one)
        assert (host.served, host.notified, counters[0].kicks) == (0, 0, 0)
        assert os.eventfd_read(host.kick) == 1  # left for whoever owns that number now
        host.current = host.kick
        os.eventfd_write(host.kick, 1)
        w._serve(*one)
        assert (host.served, host.notified) == (1, 1)
        assert (counters[0].kicks, counters[0].interrupts) == (1, 1)
        with pytest.raises(BlockingIOError):  # the kick was read after the turn
            os.eventfd_read(host.kick)
    finally:
        host.close()
