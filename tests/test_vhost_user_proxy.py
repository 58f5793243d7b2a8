"""The vhost-user proxy: its sans-I/O core (framing, log lines, rules, the record file) and its
socket shell (fds passed on, the back-end request channel relayed, drop/delay rules) between the
test front-end and a pyvirtio back-end in this process."""

from __future__ import annotations

import array
import io
import json
import os
import socket
import threading
import time

import pytest

from pyvirtio.cli import main
from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec.vhost_user import BackendReq
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import HeaderFlag
from pyvirtio.vhost_user.tools.proxy import (BE_FE, BE_FE_REQ, FE_BE, FramingError, ProxySession,
                                       RecordError, RuleError, decode_line, describe, parse_rule,
                                       read_record)
from pyvirtio.vhost_user.tools.proxy_server import ProxyServer
from pyvirtio.vhost_user.testing import TestFrontend
from pyvirtio.vhost_user.wire import (ConfigSpace, MemoryRegion, MemoryTable, U64, VringAddr,
                                      VringState, encode, encode_reply)

pytestmark = pytest.mark.timeout(60)

REPLY = 1 | HeaderFlag.REPLY


# --- the core ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream,req,flags,payload,expected", [
    (FE_BE, R.GET_FEATURES, 1, b"", "fe>be  GET_FEATURES flags=v1 size=0"),
    (BE_FE, R.GET_FEATURES, REPLY, U64((1 << 32) | (1 << 30)).pack(),
     "features=0x140000000[PROTOCOL_FEATURES,VERSION_1]"),
    (FE_BE, R.SET_PROTOCOL_FEATURES, 1, U64(0b1000).pack(), "protocol_features=0x8[REPLY_ACK]"),
    (FE_BE, R.SET_VRING_NUM, 1 | HeaderFlag.NEED_REPLY, VringState(1, 256).pack(),
     "SET_VRING_NUM flags=v1|NEED_REPLY size=8 index=1 num=256"),
    (FE_BE, R.SET_VRING_ADDR, 1, VringAddr(0, 0, 0x7f0000000000, 0x7f0000002000, 0x7f0000001000, 0).pack(),
     "index=0 flags=0 desc=0x7f0000000000 used=0x7f0000002000 avail=0x7f0000001000 log=0"),
    (FE_BE, R.SET_VRING_CALL, 1, U64(0x101).pack(), "SET_VRING_CALL flags=v1 size=8 index=1 nofd"),
    (FE_BE, R.SET_MEM_TABLE, 1, MemoryTable((MemoryRegion(0, 1 << 20, 0x7f0000000000, 0),)).pack(),
     "nregions=1 [gpa=0x0 size=0x100000 uaddr=0x7f0000000000 offset=0x0]"),
    (BE_FE, R.SET_OWNER, REPLY, U64(0).pack(), "SET_OWNER flags=v1|REPLY size=8 ack"),
    (BE_FE, R.SET_VRING_NUM, REPLY, U64(1).pack(), "nack=0x1"),
    (BE_FE, R.GET_CONFIG, REPLY, ConfigSpace(0, 4, 0, b"\x01\x02\x03\x04").pack(),
     "offset=0 size=4 flags=0 data=01020304"),
    (BE_FE_REQ, BackendReq.VRING_CALL, 1, VringState(2, 0).pack(), "be>fe* VRING_CALL flags=v1 size=8 index=2 num=0"),
    (FE_BE, 99, 0x1 | 0x40, b"\xab", "UNKNOWN_99 flags=v1|0x40 size=1 payload=ab"),
])
def test_describe_names_the_request_flags_and_payload_fields(stream, req, flags, payload, expected):
    assert expected in describe(stream, req, flags, payload)


@pytest.mark.parametrize("req,payload", [
    (R.SET_VRING_NUM, b"\x01\x02\x03"), (R.SET_MEM_TABLE, b"\x09" * 8), (R.SET_CONFIG, b"\xff" * 12),
    (R.SET_FEATURES, b""), (R.SET_LOG_BASE, b"\x00")])
def test_a_malformed_payload_is_shown_not_raised(req, payload):
    line = describe(FE_BE, req, 1, payload)
    assert "malformed (" in line and (payload.hex() in line or not payload)


def test_session_frames_byte_by_byte_keeps_each_messages_fds_and_passes_bytes_unchanged():
    core = ProxySession()
    a = encode(R.SET_VRING_NUM, VringState(0, 64).pack())
    b = encode(R.SET_VRING_KICK, U64(0).pack())
    out = []
    for i, byte in enumerate(a + b):
        out += core.receive(FE_BE, bytes([byte]), [42] if i == len(a) else [], now=1.0)
    assert [p.message.request for p in out] == [R.SET_VRING_NUM, R.SET_VRING_KICK]
    assert [p.fds for p in out] == [[], [42]]
    assert b"".join(p.data for p in out) == a + b
    assert all(p.action == "pass" and p.send_at == 1.0 for p in out)


def test_want_reads_each_header_on_its_own():
    core = ProxySession()
    assert core.want(FE_BE) == 12
    core.receive(FE_BE, encode(R.SET_FEATURES, U64(1).pack())[:12])
    assert core.want(FE_BE) == 8


def test_a_stream_that_cannot_be_framed_raises_and_gives_back_its_fds():
    core = ProxySession()
    with pytest.raises(FramingError):
        core.receive(FE_BE, encode(R.GET_FEATURES, flags=0x2), [7])
    assert core.take_all_fds() == [7]


def test_drop_rule_picks_the_nth_request_and_never_a_reply():
    core = ProxySession(rules=[parse_rule("drop", "set_vring_call:2")])
    msg = encode(R.SET_VRING_CALL, U64(0).pack())
    actions = [core.receive(FE_BE, msg)[0].action for _ in range(3)]
    assert actions == ["pass", "drop", "pass"]
    reply = core.receive(BE_FE, encode_reply(R.SET_VRING_CALL, U64(0).pack()))[0]
    assert reply.action == "pass"


def test_delay_rule_holds_its_message_and_those_behind_it_on_the_stream():
    core = ProxySession(rules=[parse_rule("delay", "VHOST_USER_SET_OWNER:250")])
    first = core.receive(FE_BE, encode(R.SET_OWNER), now=10.0)[0]
    second = core.receive(FE_BE, encode(R.GET_FEATURES), now=10.1)[0]
    other = core.receive(BE_FE, encode_reply(R.GET_FEATURES, U64(1).pack()), now=10.1)[0]
    assert (first.action, first.send_at) == ("delay", 10.25)
    assert (second.action, second.send_at) == ("pass", 10.25)  # order on the stream is kept
    assert other.send_at == 10.1


@pytest.mark.parametrize("action,text,why", [
    ("drop", "NOT_A_REQUEST", "not a vhost-user request name"), ("drop", "SET_OWNER:0", "from 1"),
    ("drop", "SET_OWNER:x", "from 1"), ("delay", "SET_OWNER", "REQUEST:MS"),
    ("delay", "SET_OWNER:-5", "REQUEST:MS")])
def test_bad_rules_are_refused_with_the_reason(action, text, why):
    with pytest.raises(RuleError, match=why):
        parse_rule(action, text)


def test_a_record_line_decodes_as_the_proxy_logged_it():
    core = ProxySession(conn=3)
    p = core.receive(FE_BE, encode(R.SET_VRING_BASE, VringState(0, 7).pack()), [5], now=1.5)[0]
    assert decode_line(json.loads(json.dumps(p.record()))) == p.line()
    assert p.line().endswith("SET_VRING_BASE flags=v1 size=8 fds=1 index=0 num=7")


@pytest.mark.parametrize("text,why", [
    ('{"format": "something else"}\n', "header"), ("not json\n", "not JSON"),
    ('{"format": "pyvirtio-vhost-user-record", "version": 1}\n{"t": 1}\n', "neither"),
    ('{"format": "pyvirtio-vhost-user-record", "version": 1}\n'
     '{"t": 1, "conn": 1, "stream": "sideways", "request": 1, "flags": 1, "payload": ""}\n', "stream")])
def test_a_broken_record_is_refused_naming_the_line(text, why):
    with pytest.raises(RecordError, match=why):
        list(read_record(io.StringIO(text)))


# --- the shell ---------------------------------------------------------------------------------


class Proxy:
    def __init__(self, tmp_path, backend_path, **kw):
        self.path = str(tmp_path / "proxy.sock")
        self.record_path = tmp_path / "rec.jsonl"
        self.record = open(self.record_path, "w")
        self.lines: list[str] = []
        self.server = ProxyServer(self.path, backend_path, record=self.record, on_line=self.lines.append, **kw)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)
        self.record.close()
        assert not self.thread.is_alive() and not os.path.exists(self.path)

    def decoded(self, capsys) -> list[str]:
        capsys.readouterr()
        assert main(["proxy", "--decode", str(self.record_path)]) == 0
        return capsys.readouterr().out.splitlines()


def test_a_session_through_the_proxy_works_and_every_message_is_recorded(server, tmp_path, capsys):
    backend = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=backend)
    server.start()
    proxy = Proxy(tmp_path, backend)
    fe = TestFrontend.connect(proxy.path)
    fe.start(size=16)  # memory and eventfds cross the proxy
    addr, n = fe.buffer(32)
    fe.rings[0].queue.add(fe.memory, [], [(addr, n)], token=addr)
    fe.kick(0)
    [(token, written)] = fe.wait_used(0)
    assert token == addr and written == 32 and fe.memory.read(addr, 32) != bytes(32)
    fe.close()
    deadline = time.monotonic() + 5
    while not any("close" in line for line in proxy.lines) and time.monotonic() < deadline:
        time.sleep(0.01)
    proxy.stop()
    decoded = proxy.decoded(capsys)
    assert decoded[0].startswith("# pyvirtio-vhost-user-record v1")
    assert decoded[1:] == proxy.lines  # the file says what the log said
    names = [line.split()[3] for line in proxy.lines if " -- " not in line]
    for req in ("GET_FEATURES", "SET_OWNER", "SET_MEM_TABLE", "ADD_MEM_REG", "SET_VRING_NUM",
                "SET_VRING_ADDR", "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ENABLE"):
        if req in ("SET_MEM_TABLE", "ADD_MEM_REG"):
            assert "SET_MEM_TABLE" in names or "ADD_MEM_REG" in names
        else:
            assert req in names, (req, names)
    assert not [n for n in names if n.startswith("UNKNOWN")]
    assert any("fds=1" in line and "SET_VRING_KICK" in line for line in proxy.lines)


def _fake_backend(listener: socket.socket, seen: list):
    """Accept one front-end; take SET_BACKEND_REQ_FD's socket, send CONFIG_CHANGE_MSG with
    NEED_REPLY on it, keep the reply; answer GET_FEATURES on the main socket."""
    conn, _ = listener.accept()
    with conn:
        while True:
            data, anc, _, _ = conn.recvmsg(12, socket.CMSG_SPACE(16))
            if not data:
                return
            request, flags, size = array.array("I", data)
            payload = conn.recv(size) if size else b""
            fds = [fd for _, _, d in anc for fd in array.array("i", d)]
            seen.append((request, payload, fds))
            if request == R.SET_BACKEND_REQ_FD:
                chan = socket.socket(fileno=fds[0])
                chan.sendall(encode(BackendReq.CONFIG_CHANGE_MSG, flags=1 | HeaderFlag.NEED_REPLY))
                seen.append(("backend reply", chan.recv(64)))
                chan.close()
            elif request == R.GET_FEATURES:
                conn.sendall(encode_reply(R.GET_FEATURES, U64(1 << 30).pack()))


def test_backend_request_channel_is_relayed_and_decoded(tmp_path):
    backend = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(backend)
    listener.listen(1)
    seen: list = []
    thread = threading.Thread(target=_fake_backend, args=(listener, seen), daemon=True)
    thread.start()
    proxy = Proxy(tmp_path, backend)
    front = socket.socket(socket.AF_UNIX)
    front.connect(proxy.path)
    ours, theirs = socket.socketpair()
    front.sendmsg([encode(R.SET_BACKEND_REQ_FD)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                     array.array("i", [theirs.fileno()]))])
    theirs.close()
    ours.settimeout(5)
    request = ours.recv(12)
    assert array.array("I", request)[0] == BackendReq.CONFIG_CHANGE_MSG
    ours.sendall(encode_reply(BackendReq.CONFIG_CHANGE_MSG, U64(0).pack()))
    front.sendall(encode(R.GET_FEATURES))
    front.settimeout(5)
    assert front.recv(20)[12:] == U64(1 << 30).pack()
    front.close()
    thread.join(5)
    proxy.stop()
    listener.close()
    assert seen[1] == ("backend reply", encode_reply(BackendReq.CONFIG_CHANGE_MSG, U64(0).pack()))
    text = "\n".join(proxy.lines)
    assert "be>fe* CONFIG_CHANGE_MSG flags=v1|NEED_REPLY size=0" in text
    assert "fe>be* CONFIG_CHANGE_MSG flags=v1|REPLY size=8 ack" in text
    assert "SET_BACKEND_REQ_FD flags=v1 size=0 fds=1" in text


def test_a_dropped_request_never_reaches_the_backend(server, tmp_path):
    backend = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=backend)
    server.start()
    proxy = Proxy(tmp_path, backend, rules=[parse_rule("drop", "GET_QUEUE_NUM:1")])
    fe = TestFrontend.connect(proxy.path)
    fe.negotiate()
    fe.ch.sock.settimeout(0.5)
    with pytest.raises((socket.timeout, TimeoutError)):
        fe.get_u64(R.GET_QUEUE_NUM)  # dropped: no answer
    fe.ch.sock.settimeout(5)
    assert fe.get_u64(R.GET_QUEUE_NUM) == 1  # the second one passes
    fe.close()
    proxy.stop()
    dropped = [line for line in proxy.lines if line.endswith("[drop]")]
    assert len(dropped) == 1 and "GET_QUEUE_NUM" in dropped[0]


def test_a_backend_that_is_not_there_ends_the_front_ends_connection(tmp_path):
    proxy = Proxy(tmp_path, str(tmp_path / "nobody.sock"))
    front = socket.socket(socket.AF_UNIX)
    front.connect(proxy.path)
    front.settimeout(5)
    assert front.recv(1) == b""
    proxy.stop()
    assert "cannot connect to" in proxy.lines[-1]


def test_cli_refuses_bad_rules_and_missing_paths(capsys):
    assert main_exit(["proxy", "--listen=a", "--connect=b", "--drop=NOPE"]) == 2
    assert "not a vhost-user request name" in capsys.readouterr().err
    assert main(["proxy", "--listen=a"]) == 2
    assert "--connect" in capsys.readouterr().err


def main_exit(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code



def test_a_delayed_request_arrives_late_and_in_order(server, tmp_path):
    backend = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=backend)
    server.start()
    proxy = Proxy(tmp_path, backend, rules=[parse_rule("delay", "GET_QUEUE_NUM:300")])
    fe = TestFrontend.connect(proxy.path)
    fe.negotiate()
    start = time.monotonic()
    assert fe.get_u64(R.GET_QUEUE_NUM) == 1
    assert fe.get_u64(R.GET_MAX_MEM_SLOTS) > 0
    assert time.monotonic() - start >= 0.3
    fe.close()
    proxy.stop()
    assert any(line.endswith("[delay]") and "GET_QUEUE_NUM" in line for line in proxy.lines)


def test_mutate_rules_parse_and_change_what_passes():
    from pyvirtio.vhost_user.wire import Message
    rule = parse_rule("mutate", "reply:get_queue_num:u64=0xffff")
    assert (rule.reply, rule.request, rule.field, rule.value) == (True, "GET_QUEUE_NUM", "u64", 0xFFFF)
    core = ProxySession(rules=[rule])
    core.receive("fe>be", encode(R.GET_QUEUE_NUM), [], 1.0)  # the request passes untouched
    (p,) = core.receive("be>fe", encode_reply(R.GET_QUEUE_NUM, U64(2).pack()), [], 1.1)
    assert p.action == "mutate" and p.message.payload == U64(0xFFFF).pack()
    assert p.original.payload == U64(2).pack() and "[mutate; was flags" in p.line()
    assert p.record()["original"]["payload"] == U64(2).pack().hex()
    assert "[mutate" in decode_line(p.record())
    nth = parse_rule("mutate", "SET_VRING_NUM:2:num=0")
    msg = Message(R.SET_VRING_NUM, 1, bytes(range(8)))
    assert not nth.matches("SET_VRING_NUM") and nth.matches("SET_VRING_NUM")
    assert nth.mutate(msg).payload == bytes(range(4)) + bytes(4)
    assert parse_rule("mutate", "GET_FEATURES:size=3").mutate(msg).payload == bytes(range(3))
    assert parse_rule("mutate", "GET_FEATURES:size=10").mutate(msg).payload == bytes(range(8)) + bytes(2)
    assert parse_rule("mutate", "GET_FEATURES:@2/2=0xabcd").mutate(msg).payload[2:4] == b"\xcd\xab"
    assert parse_rule("mutate", "GET_FEATURES:flags=0x5").mutate(msg).flags == 5


@pytest.mark.parametrize("text, why", [
    ("GET_FEATURES", "no FIELD=VALUE"), ("NOPE:u64=1", "not a vhost-user request name"),
    ("GET_FEATURES:0:u64=1", "from 1"), ("GET_FEATURES:nope=1", "unknown FIELD"),
    ("GET_FEATURES:u64=x", "not an integer"), ("SET_VRING_NUM:num=0x100000000", "does not fit"),
    ("GET_FEATURES:@3/3=1", "WIDTH"), ("GET_FEATURES:@5000=1", "WIDTH"), ("GET_FEATURES:@x=1", "@OFFSET"),
    ("GET_FEATURES:size=5000", "out of range")])
def test_bad_mutate_rules_say_why(text, why):
    with pytest.raises(RuleError, match=why):
        parse_rule("mutate", text)


def test_a_mutated_reply_reaches_the_front_end(server, tmp_path):
    """GET_QUEUE_NUM answered 0xffff through the proxy: the front-end sees the lie, the record
    keeps both, and the rest of the session goes on."""
    backend = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=backend)
    server.start()
    proxy = Proxy(tmp_path, backend, rules=[parse_rule("mutate", "reply:GET_QUEUE_NUM:1:u64=0xffff")])
    fe = TestFrontend.connect(proxy.path)
    fe.negotiate()
    assert fe.get_u64(R.GET_QUEUE_NUM) == 0xFFFF
    assert fe.get_u64(R.GET_QUEUE_NUM) == 1  # only the first
    fe.close()
    proxy.stop()
    mutated = [line for line in proxy.lines if "[mutate" in line]
    assert len(mutated) == 1 and "GET_QUEUE_NUM" in mutated[0]
