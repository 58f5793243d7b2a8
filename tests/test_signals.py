"""pyvirtio.signals: a stop signal taken by any thread wakes the daemon's loop, and closing puts
back the wakeup fd that was there before; the daemons (serve, serve over virtio-msg, proxy) have
their handlers before their socket file appears."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyvirtio.signals import STOP_SIGNALS, StopSignals

pytestmark = pytest.mark.timeout(30)


def test_a_signal_taken_by_another_thread_wakes_the_loop_and_runs_the_handler():
    r0, w0 = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    before = signal.set_wakeup_fd(w0)
    stopped = []
    signals = StopSignals(lambda: stopped.append(threading.current_thread()))
    try:
        for sig in STOP_SIGNALS:
            worker = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(), sig))
            worker.start()
            worker.join()
            assert select.select([signals], [], [], 5)[0], "the pipe did not become readable"
            signals.drain()
            assert not select.select([signals], [], [], 0)[0]  # drained
        assert stopped == [threading.main_thread()] * len(STOP_SIGNALS)  # run here, once each
    finally:
        signals.close()
        assert signal.set_wakeup_fd(before) == w0  # the one before ours is back
        os.close(r0)
        os.close(w0)


def test_made_and_closed_in_the_main_thread_only():
    errors = []

    def make():
        try:
            StopSignals(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
    worker = threading.Thread(target=make)
    worker.start()
    worker.join()
    assert errors and "main thread" in str(errors[0])

    before = signal.set_wakeup_fd(-1)
    signals = StopSignals(lambda: None)
    try:
        closer = threading.Thread(target=signals.close)  # elsewhere: a no-op, the pipe stays open
        closer.start()
        closer.join()
        os.fstat(signals.fileno())
        assert signal.set_wakeup_fd(-1) != -1
        signal.set_wakeup_fd(signals._write)
    finally:
        signals.close()
        assert signal.set_wakeup_fd(before) == -1


# The daemons as programs: a supervisor may stop one the moment it sees the socket file (systemd
# and libvirt wait for exactly that file), with any of the stop signals.  The handlers must
# already be there: the default action of SIGTERM would end the process with the file left behind.

CLI = [sys.executable, "-m", "pyvirtio.cli"]


@pytest.mark.parametrize("words", [
    ["serve", "rng", "--socket-path={sock}", "--control={tmp}/ctl.sock"],
    ["serve", "rng", "--transport=virtio-msg", "--socket-path={sock}"],
    ["proxy", "--listen={sock}", "--connect={tmp}/nobody.sock"],
], ids=["serve", "serve-virtio-msg", "proxy"])
def test_a_daemon_stopped_as_soon_as_its_socket_appears_ends_cleanly_and_removes_it(tmp_path, words):
    sock = tmp_path / "s.sock"
    for sig in STOP_SIGNALS:
        proc = subprocess.Popen([*CLI, *(w.format(sock=sock, tmp=tmp_path) for w in words)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the socket never appeared"
                time.sleep(0.0002)
            proc.send_signal(sig)
            assert proc.wait(10) == 0, (sig, proc.stderr.read())
            assert not sock.exists()
        finally:
            proc.kill()
            proc.wait()
