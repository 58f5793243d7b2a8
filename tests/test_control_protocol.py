"""The control protocol core (pyvirtio.control.protocol, .commands): every line gets exactly one
reply line that is a valid reply object; nothing a client sends raises; a fake device stands in
for each device type."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.control.commands import ControlTarget, build_commands, parse_size
from pyvirtio.control.protocol import (ERROR_TYPES, VERSION, Arg, Command, ControlConnection,
                                       Dispatcher, encode_request, parse_request)
from pyvirtio.devices.rng import RngDevice
from pyvirtio.errors import UsageError
from pyvirtio.spec.ids import DeviceType


def _conn(device=None, **kw):
    return ControlConnection(Dispatcher(build_commands(ControlTarget(device or RngDevice()))), **kw)


def _replies(conn, data: bytes):
    out = [json.loads(line) for line in conn.receive(data)]
    for reply in out:
        _valid(reply)
    return out


def _valid(reply):
    assert reply["v"] == VERSION and "id" in reply
    if reply["ok"]:
        assert "result" in reply
    else:
        assert reply["error"]["type"] in ERROR_TYPES and isinstance(reply["error"]["message"], str)


def _ask(conn, cmd, args=None, rid=1):
    [reply] = _replies(conn, encode_request(cmd, args, rid))
    assert reply["id"] == rid
    return reply


def test_stats_version_help():
    conn = _conn()
    stats = _ask(conn, "stats")["result"]
    assert stats["type"] == "entropy" and stats["connection"] == {"transport": "in-process"}
    assert _ask(conn, "version")["result"]["protocol"] == VERSION
    names = {c["cmd"] for c in _ask(conn, "help")["result"]}
    assert {"stats", "resize", "link", "port.add", "port.remove", "port.resize", "fault.add",
            "fault.list", "fault.clear", "reset"} <= names


def test_one_reply_per_line_in_order_across_any_split():
    lines = b"".join(encode_request("version", None, i) for i in range(5))
    for step in (1, 3, 7, len(lines)):
        conn = _conn()
        got = []
        for i in range(0, len(lines), step):
            got += _replies(conn, lines[i:i + step])
        assert [r["id"] for r in got] == list(range(5))


@pytest.mark.parametrize("line, etype", [
    (b"not json", "parse"),
    (b"\xff\xfe", "parse"),
    (b"[1, 2]", "request"),
    (b'{"cmd": 5}', "request"),
    (b'{"cmd": "stats", "v": 2}', "request"),
    (b'{"cmd": "stats", "args": []}', "request"),
    (b'{"cmd": "stats", "extra": 1}', "request"),
    (b'{"cmd": "stats", "id": {"a": 1}}', "request"),
    (b'{"cmd": "nope"}', "unknown-command"),
    (b'{"cmd": "stats", "args": {"x": 1}}', "bad-argument"),
    (b'{"cmd": "resize"}', "bad-argument"),
    (b'{"cmd": "resize", "args": {"size": true}}', "bad-argument"),
    (b'{"cmd": "fault.remove", "args": {"id": "1"}}', "bad-argument"),
    (b'{"cmd": "resize", "args": {"size": "1G"}}', "unsupported"),
    (b'{"cmd": "link", "args": {"state": "up"}}', "unsupported"),
    (b'{"cmd": "port.remove", "args": {"name": "x"}}', "unsupported"),
    (b"[" * 100000, "too-long"),
    (b"[" * 20000 + b"]" * 20000, "parse"),  # nesting deeper than the JSON decoder goes
])
def test_refusals_are_typed(line, etype):
    [reply] = _replies(_conn(), line + b"\n")
    assert not reply["ok"] and reply["error"]["type"] == etype, reply


def test_resize_on_an_rng_names_the_device():
    reply = _ask(_conn(), "resize", {"size": "1G"})
    assert reply["error"]["message"] == "resize: not a block device (this one is entropy)"


def test_a_long_line_is_skipped_to_its_newline_and_the_next_is_served():
    conn = _conn(max_line=100)
    got = _replies(conn, b"x" * 60)
    got += _replies(conn, b"y" * 60)  # past the bound: one too-long reply
    got += _replies(conn, b"z" * 500 + b"\n" + encode_request("version", None, 9))
    assert [r.get("error", {}).get("type") for r in got] == ["too-long", None]
    assert got[1]["id"] == 9


def test_blank_lines_get_no_reply():
    assert _replies(_conn(), b"\n\n  \n") == []


def test_a_failing_handler_is_an_internal_error_reply():
    def boom(args):
        raise RuntimeError("bug")
    conn = ControlConnection(Dispatcher({"x": Command("x", "", boom)}))
    [reply] = _replies(conn, b'{"cmd":"x"}\n')
    assert reply["error"]["type"] == "internal"


def test_a_usage_error_is_a_failed_reply():
    def refuse(args):
        raise UsageError("no such size")
    conn = ControlConnection(Dispatcher({"x": Command("x", "", refuse, (Arg("n", (int,)),))}))
    [reply] = _replies(conn, b'{"cmd":"x","args":{"n":1}}\n')
    assert reply["error"] == {"type": "failed", "message": "x: no such size"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(data):
    conn = _conn(max_line=512)
    _replies(conn, data)
    _replies(conn, b"\n")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                     max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["stats", "resize", "link", "port.add", "port.remove", "port.resize",
                        "fault.add", "fault.list", "fault.remove", "fault.clear", "version",
                        "help", "bogus"]),
       st.dictionaries(st.sampled_from(["size", "state", "name", "path", "pty", "id", "cols",
                                        "rows", "rule", "x"]), _json, max_size=4),
       _json)
def test_any_args_of_any_type_get_a_typed_reply(cmd, args, rid):
    conn = _conn()
    line = json.dumps({"v": 1, "id": rid, "cmd": cmd, "args": args}).encode() + b"\n"
    [reply] = _replies(conn, line)
    assert reply["ok"] or reply["error"]["type"] != "internal", reply


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_json_value_as_a_request_gets_one_reply(value):
    conn = _conn()
    assert len(_replies(conn, json.dumps(value).encode() + b"\n")) == 1


def test_parse_request_defaults():
    r = parse_request(b'{"cmd":"stats"}')
    assert (r.id, r.cmd, r.args) == (None, "stats", {})


@pytest.mark.parametrize("text, size", [("1G", 1 << 30), ("512M", 512 << 20), ("4096", 4096),
                                        ("1.5GiB", 3 << 29), ("64k", 64 << 10), (8192, 8192)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1X", "-1", "0", "1 G B", 0, -5])
def test_parse_size_refuses(text):
    with pytest.raises(UsageError):
        parse_size(text)


# --- the device-type commands against fakes --------------------------------------------------------


class FakeNet(RngDevice):
    device_type = DeviceType.NET

    def __init__(self):
        super().__init__()
        self.link_up = True

    def set_link(self, up):
        self.link_up = up


class FakeBlk(RngDevice):
    device_type = DeviceType.BLOCK

    def __init__(self):
        super().__init__()
        self.sizes = []

    def resize(self, size):
        if size % 512:
            raise UsageError(f"size {size} is not a multiple of 512")
        self.sizes.append(size)
        self.capacity = size // 512


def test_link_on_a_net_device():
    dev = FakeNet()
    conn = _conn(dev)
    assert _ask(conn, "link", {"state": "down"})["result"] == {"link": "down"} and not dev.link_up
    assert _ask(conn, "stats")["result"]["link"] == "down"
    assert _ask(conn, "link", {"state": "sideways"})["error"]["type"] == "bad-argument"


def test_resize_on_a_block_device():
    dev = FakeBlk()
    conn = _conn(dev)
    assert _ask(conn, "resize", {"size": "1G"})["result"] == {"size": 1 << 30, "sectors": 1 << 21}
    assert _ask(conn, "resize", {"size": 1000})["error"] == {
        "type": "failed", "message": "resize: size 1000 is not a multiple of 512"}
    assert dev.sizes == [1 << 30]


def test_reset_puts_the_device_in_needs_reset():
    dev = RngDevice()
    reply = _ask(_conn(dev), "reset")
    assert "DEVICE_NEEDS_RESET" in reply["result"]["status"]


def test_console_ports_with_a_memory_endpoint():
    from pyvirtio.devices.console import ConsoleDevice
    from pyvirtio.devices.console_endpoints import MemoryEndpoint
    dev = ConsoleDevice()
    made = []

    def endpoint(args):
        made.append(MemoryEndpoint())
        return made[-1]
    conn = ControlConnection(Dispatcher(build_commands(ControlTarget(dev, port_endpoint=endpoint))))
    added = _ask(conn, "port.add", {"name": "org.test.a", "path": "/nowhere"})["result"]
    assert added["name"] == "org.test.a" and dev.ports[added["id"]].name == "org.test.a"
    assert _ask(conn, "port.add", {"name": "org.test.a", "path": "/x"})["error"]["type"] == "failed"
    assert _ask(conn, "port.add", {"name": "b"})["error"]["type"] == "bad-argument"
    assert _ask(conn, "port.resize", {"name": "org.test.a", "cols": 100, "rows": 40})["ok"]
    assert _ask(conn, "port.resize", {"name": "org.test.a", "cols": 0, "rows": 40})["error"]["type"] == "bad-argument"
    assert _ask(conn, "port.remove", {"name": "org.test.a"})["result"]["id"] == added["id"]
    assert added["id"] not in dev.ports and not made[0].connected
    assert _ask(conn, "port.remove", {"name": "org.test.a"})["error"]["type"] == "failed"


def test_a_real_disk_shrinks_only_when_asked(tmp_path):
    from pyvirtio.commands.ctl import to_request
    from pyvirtio.devices.blk import BlkDevice
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    dev = BlkDevice(str(image), locking=False)
    conn = _conn(dev)
    refused = _ask(conn, "resize", {"size": "2M"})
    assert refused["error"]["type"] == "failed" and "shrink" in refused["error"]["message"]
    assert dev.capacity == 8192 and os.path.getsize(image) == 4 << 20
    cmd, args = to_request(["resize", "2M", "--shrink"])
    assert (cmd, args) == ("resize", {"size": "2M", "shrink": True})
    assert _ask(conn, cmd, args)["result"] == {"size": 2 << 20, "sectors": 4096}
    assert os.path.getsize(image) == 2 << 20
    assert _ask(conn, "resize", {"size": "8M"})["result"]["sectors"] == 16384  # growing needs nothing
    dev.close()
