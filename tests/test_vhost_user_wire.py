"""The vhost-user codec: symmetric payload structs and message framing (whole, byte by byte,
with trailing data), and which message the fds belong to."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirtio.vhost_user import wire
from pyvirtio.vhost_user.errors import BadPayloadSize, FramingError
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import HeaderFlag, MAX_PAYLOAD_SIZE

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def test_header_layout_is_three_native_u32():
    assert wire.HEADER_SIZE == 12
    data = wire.encode(R.SET_FEATURES, struct.pack("=Q", 7))
    assert struct.unpack_from("=III", data) == (2, 1, 8)
    assert wire.encode_reply(R.GET_FEATURES)[4:8] == struct.pack("=I", 1 | HeaderFlag.REPLY)


@pytest.mark.parametrize("cls,size", [(wire.U64, 8), (wire.VringState, 8), (wire.VringAddr, 40),
                                      (wire.MemoryRegion, 32), (wire.SingleMemoryRegion, 40),
                                      (wire.Inflight, 24)])
def test_payload_sizes_match_the_spec(cls, size):
    assert cls.size() == size


@given(u32, u32, u64, u64, u64, u64)
def test_vring_addr_round_trips(index, flags, desc, used, avail, log):
    a = wire.VringAddr(index, flags, desc, used, avail, log)
    assert wire.VringAddr.unpack(a.pack()) == a


@given(st.lists(st.tuples(u64, u64, u64, u64), min_size=1, max_size=8))
def test_memory_table_round_trips(regions):
    table = wire.MemoryTable(tuple(wire.MemoryRegion(*r) for r in regions))
    data = table.pack()
    assert len(data) == 8 + 32 * len(regions)
    assert wire.MemoryTable.unpack(data) == table
    # The whole 8-slot array (as some front-ends send it) parses too.
    assert wire.MemoryTable.unpack(data.ljust(8 + 32 * 8, b"\0")) == table


@pytest.mark.parametrize("data", [b"", b"\0" * 7, struct.pack("=II", 0, 0), struct.pack("=II", 9, 0) + bytes(288),
                                  struct.pack("=II", 2, 0) + bytes(32)])
def test_bad_memory_tables_are_refused(data):
    with pytest.raises(BadPayloadSize):
        wire.MemoryTable.unpack(data)


@given(u32, st.binary(max_size=64), st.integers(0, 1))
def test_config_space_round_trips(offset, data, flags):
    cfg = wire.ConfigSpace(offset, len(data), flags, data)
    assert wire.ConfigSpace.unpack(cfg.pack()) == cfg


def test_config_space_size_must_match_its_header():
    with pytest.raises(BadPayloadSize):
        wire.ConfigSpace.unpack(struct.pack("=III", 0, 8, 0) + bytes(4))


def test_fixed_payloads_refuse_wrong_sizes():
    with pytest.raises(BadPayloadSize):
        wire.U64.unpack(b"\0" * 4)
    with pytest.raises(BadPayloadSize):
        wire.VringAddr.unpack(b"\0" * 41)


# --- framing -------------------------------------------------------------------------------------

MESSAGES = [wire.encode(R.GET_FEATURES), wire.encode(R.SET_FEATURES, struct.pack("=Q", 1 << 32)),
            wire.encode(R.SET_VRING_ADDR, wire.VringAddr(0, 0, 1, 2, 3, 4).pack())]
STREAM = b"".join(MESSAGES)


def _requests(msgs):
    return [(m.request, m.payload) for m in msgs]


EXPECTED = [(R.GET_FEATURES, b""), (R.SET_FEATURES, struct.pack("=Q", 1 << 32)),
            (R.SET_VRING_ADDR, wire.VringAddr(0, 0, 1, 2, 3, 4).pack())]


def test_framer_whole_stream():
    assert _requests(wire.Framer().feed(STREAM)) == EXPECTED


def test_framer_one_byte_at_a_time():
    f, got = wire.Framer(), []
    for i in range(len(STREAM)):
        got += f.feed(STREAM[i:i + 1])
    assert _requests(got) == EXPECTED
    assert f.pending_bytes == 0


def test_framer_keeps_trailing_bytes():
    f = wire.Framer()
    assert _requests(f.feed(STREAM + MESSAGES[1][:5])) == EXPECTED
    assert f.pending_bytes == 5 and f.want() == 7
    assert _requests(f.feed(MESSAGES[1][5:])) == EXPECTED[1:2]


def test_want_says_header_then_payload():
    f = wire.Framer()
    assert f.want() == 12
    f.push(MESSAGES[1][:12])
    assert f.next_message() is None and f.want() == 8


def test_fds_belong_to_the_message_holding_the_first_byte():
    f = wire.Framer()
    first = f.feed(MESSAGES[0][:3], [100])  # fds arrive with a message's first bytes
    assert first == []
    got = f.feed(MESSAGES[0][3:] + MESSAGES[1], [])
    assert [m.fds for m in got] == [[100], []]
    got = f.feed(MESSAGES[2], [7, 8])
    assert got[0].fds == [7, 8]


def test_bad_version_is_a_framing_error_and_fds_are_handed_back():
    f = wire.Framer()
    bad = struct.pack("=III", 1, 2, 0)
    f.push(bad, [42])
    with pytest.raises(FramingError, match="version"):
        f.next_message()
    assert f.take_all_fds() == [42]


def test_oversized_payload_is_a_framing_error():
    f = wire.Framer()
    f.push(struct.pack("=III", 1, 1, MAX_PAYLOAD_SIZE + 1))
    with pytest.raises(FramingError, match="payload"):
        f.next_message()
