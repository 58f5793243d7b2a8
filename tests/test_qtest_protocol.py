"""The qtest wire protocol: parsing (whole, byte by byte, with asynchronous IRQ lines in between),
request formatting that refuses what QEMU would assert on, and the client over a socket pair."""

import socket
import threading

import pytest

from pyvirtio.errors import PeerDisconnected, PeerProtocolError, UsageError
from pyvirtio.qtest import protocol as p
from pyvirtio.qtest.client import QtestClient, QtestError

STREAM = b"OK\nIRQ raise 22\nOK 0x0000000074726976\nIRQ lower 22\nFAIL Unknown device\nOK ABCD==\n"
EXPECTED = [p.Reply(True, ()), p.IrqEvent(True, 22), p.Reply(True, ("0x0000000074726976",)),
            p.IrqEvent(False, 22), p.Reply(False, ("Unknown", "device")), p.Reply(True, ("ABCD==",))]


def test_parse_whole_stream():
    assert p.QtestParser().feed(STREAM) == EXPECTED


def test_parse_one_byte_at_a_time():
    parser, events = p.QtestParser(), []
    for i in range(len(STREAM)):
        events += parser.feed(STREAM[i:i + 1])
    assert events == EXPECTED


def test_parse_with_trailing_partial_line():
    parser = p.QtestParser()
    assert parser.feed(STREAM + b"OK 0x1") == EXPECTED
    assert parser.feed(b"2\n") == [p.Reply(True, ("0x12",))]


@pytest.mark.parametrize("line", [b"HELLO\n", b"IRQ sideways 3\n", b"IRQ raise\n"])
def test_malformed_lines_are_protocol_errors(line):
    with pytest.raises(PeerProtocolError):
        p.QtestParser().feed(line)


def test_reply_value():
    assert p.Reply(True, ("0x10051af4",)).value == 0x10051AF4
    with pytest.raises(PeerProtocolError):
        p.Reply(True, ()).value


def test_formatting_refuses_what_qemu_asserts_on():
    assert p.mem_read(0xFEB00000, 4) == "readl 0xfeb00000"
    assert p.mem_write(0x1000, 2, 0x12345) == "writew 0x1000 0x2345"
    assert p.port_out(0xCF8, 4, 0x80000800) == "outl 0xcf8 0x80000800"
    with pytest.raises(UsageError):
        p.port_in(0x10000, 1)
    with pytest.raises(UsageError):
        p.port_in(0xCFC, 8)
    with pytest.raises(UsageError):
        p.b64read(0x1000, 0)
    with pytest.raises(UsageError):
        p.mem_read(0x1000, 3)
    with pytest.raises(UsageError):
        p.mem_read(-1, 4)


class FakeServer:
    """Answers qtest requests from a script: {request prefix: reply lines}."""

    def __init__(self, script):
        self.ours, theirs = socket.socketpair()
        self.script = script
        self.seen = []
        self.thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        self.thread.start()

    def _serve(self, sock):
        buf = b""
        with sock:
            while True:
                data = sock.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.decode()
                    self.seen.append(line)
                    if line == "hangup":
                        return
                    reply = next((r for k, r in self.script.items() if line.startswith(k)), "OK\n")
                    sock.sendall(reply.encode())


def test_client_requests_irq_lines_and_failures():
    server = FakeServer({"readl": "IRQ raise 5\nOK 0x0000000074726976\n", "irq_intercept_in": "FAIL Unknown device\n",
                         "b64read": "OK AQID\n"})
    client = QtestClient(server.ours, timeout=5)
    assert client.mem_read(0xFEB00000, 4) == 0x74726976
    assert client.irq_levels == {5: True} and client.irq_epoch == 1
    assert client.read_bytes(0x1000, 3) == b"\x01\x02\x03"
    with pytest.raises(QtestError, match="Unknown device"):
        client.irq_intercept_in("nowhere")
    replies = client.pipeline([p.mem_write(0x1000 + i, 1, i) for i in range(1000)])
    assert len(replies) == 1000 and server.seen[-1] == "writeb 0x13e7 0xe7"
    with pytest.raises(PeerDisconnected):
        client.request("hangup")
    client.close()


def test_client_times_out_without_a_reply():
    a, b = socket.socketpair()
    client = QtestClient(a, timeout=0.05)
    with pytest.raises(QtestError, match="no qtest reply"):
        client.mem_read(0, 4)
    a.close()
    b.close()


def test_wait_async_sees_irq_lines_while_idle():
    a, b = socket.socketpair()
    client = QtestClient(a, timeout=1)
    assert not client.wait_async(0.01)
    b.sendall(b"IRQ raise 23\n")
    assert client.wait_async(1) and client.irq_levels[23]
    a.close()
    b.close()
