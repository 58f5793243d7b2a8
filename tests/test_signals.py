"""pyvirtio.signals: a stop signal taken by any thread wakes the daemon's loop, and closing puts
back the wakeup fd that was there before."""

from __future__ import annotations

import os
import select
import signal
import threading

import pytest

from pyvirtio.signals import STOP_SIGNALS, StopSignals

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def saved_handlers():
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_taken_by_another_thread_wakes_the_loop_and_runs_the_handler(saved_handlers):
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


def test_made_and_closed_in_the_main_thread_only(saved_handlers):
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
