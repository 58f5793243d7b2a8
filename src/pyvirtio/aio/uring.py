"""io_uring through the raw syscalls: a thin binding of our own (ctypes + mmap + struct).

Layout (``/usr/include/linux/io_uring.h``): ``io_uring_setup`` fills ``io_uring_params`` with the
offsets of the SQ ring (head, tail, mask, flags, array), the CQ ring (head, tail, mask, overflow,
cqes) and we map them with ``mmap`` (one mapping with IORING_FEAT_SINGLE_MMAP) plus the SQE array.
The SQ index array is filled once with the identity (slot i -> SQE i), so preparing an op is one
``struct.pack_into`` of a 64-byte SQE; ``submit()`` stores the SQ tail once and calls
``io_uring_enter`` once, however many ops were prepared.  No ctypes object per request except the
one per view that tells us a memoryview's address (``c_char.from_buffer``, ~0.2 µs; see
benchmarks/aio.md) — and none when the caller passes the views' addresses along (``addresses=``:
a virtqueue walk knows them, ``DescriptorChain.addresses``).

Ordering (x86-64, TSO): stores are not reordered with stores, and loads are not reordered with
loads or with later stores.  So a plain store of the SQ tail after the SQE stores publishes them
(the kernel reads the tail with smp_load_acquire), and loading the CQ tail, then the CQEs, then
storing the CQ head is in order too (the kernel reads our head with a load-acquire).  No full
fence is needed on these paths; ``pyvirtio.fence`` is only for store-then-load patterns, which do
not occur here.  On other architectures this module refuses to run (see ``unavailable_reason``).

Each op takes a *slot* (0..depth-1): the SQE's user_data is the slot, and the slot keeps the
caller's token, the memoryviews and the iovec array alive until the completion is reaped.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import mmap
import operator
import os
import platform
import struct
import time

from ..errors import UsageError
from .base import AioEngine, AioError, AioQueueFull, AioSetupError

SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER = 425, 426, 427  # x86-64

IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES = 0, 0x8000000, 0x10000000
IORING_FEAT_SINGLE_MMAP, IORING_FEAT_NODROP = 1 << 0, 1 << 1
IORING_FEAT_EXT_ARG = 1 << 8  # io_uring_enter takes a timeout (Linux 5.11+)
IORING_ENTER_GETEVENTS, IORING_ENTER_EXT_ARG = 1 << 0, 1 << 3
#: Completions posted by task work (an O_DIRECT read finished by the disk's interrupt, the
#: release of an op io_uring's workers ran) do not interrupt the submitting thread with an IPI
#: while it runs: they are run when it next enters the kernel (any syscall: our poll, an
#: io_uring_enter) or wakes from an interruptible sleep.  Linux 5.19+; older kernels refuse it
#: with EINVAL and get a ring without it.
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SQ_CQ_OVERFLOW = 1 << 1
IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1

IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC, IORING_OP_FALLOCATE = 1, 2, 3, 17
IORING_OP_READ, IORING_OP_WRITE = 22, 23  # one buffer, no iovec array (Linux 5.6+)
#: the vectored op -> its one-buffer form, used for a request in a single buffer when the kernel
#: has it (IORING_REGISTER_PROBE): the SQE carries the buffer's address and length itself
_SINGLE_OP = {IORING_OP_READV: IORING_OP_READ, IORING_OP_WRITEV: IORING_OP_WRITE}
IOSQE_ASYNC = 1 << 4
IORING_FSYNC_DATASYNC = 1
RWF_DSYNC = 2

# struct io_uring_params: 10 u32 (sq_entries … resv[3]), io_sqring_offsets, io_cqring_offsets.
_PARAMS = struct.Struct("<10I 8I Q 8I Q")
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")  # opcode flags ioprio fd off addr len rw_flags user_data …
_SQE_HEAD = struct.Struct("<BBHiQQIIQ")  # … up to user_data: all we ever write
_CQE = struct.Struct("<QiI")  # user_data res flags
_U32 = struct.Struct("<I")
_U64 = (1 << 64) - 1  # offset -1: the file position (pipes, sockets)
_IOV = struct.Struct("<QQ")  # struct iovec { void *iov_base; size_t iov_len; }
_TIMESPEC = struct.Struct("<qq")  # struct __kernel_timespec { tv_sec; tv_nsec; }
#: struct io_uring_getevents_arg { u64 sigmask; u32 sigmask_sz; u32 pad; u64 ts; } (no sigmask)
_GETEVENTS_ARG = struct.Struct("<QIIQ")
#: its size as the syscall's size_t argument (a plain int would go as a 32-bit int through
#: syscall(2)'s varargs, the register's upper half undefined)
_ARGSZ = ctypes.c_size_t(_GETEVENTS_ARG.size)
assert _SQE.size == 64 and _CQE.size == 16 and _PARAMS.size == 120

#: iovecs each slot has room for in the engine's shared table; a slot given more gets a table of
#: its own, made once and kept (grown to the next power of two) for its later requests — a
#: guest's request in scattered pages brings one iovec per page.
IOV_PER_SLOT = 16
_SLOT_BYTES = IOV_PER_SLOT * 16

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_c_char_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof
_nbytes = operator.attrgetter("nbytes")

_reason_cache: list = []


def unavailable_reason() -> str | None:
    """None if io_uring works here (checked once per process by setting up a tiny ring)."""
    if not _reason_cache:
        _reason_cache.append(_probe())
    return _reason_cache[0]


def _probe() -> str | None:
    if platform.machine() != "x86_64":
        return f"io_uring binding is x86-64 only (syscall numbers, TSO ordering); this is {platform.machine()}"
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
    except OSError:
        disabled = "0"
    try:
        fd, _, _ = _setup(2)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        why = f"io_uring_setup: {name}"
        if disabled != "0":
            why += f" (disabled by sysctl kernel.io_uring_disabled={disabled})"
        elif e.errno == errno.ENOSYS:
            why += " (kernel built without io_uring)"
        elif e.errno == errno.EPERM:
            why += " (refused, e.g. by a seccomp filter)"
        return why
    os.close(fd)
    return None


def _setup(entries: int, wanted: tuple[int, ...] = (IORING_SETUP_COOP_TASKRUN, 0)) -> tuple[int, tuple, int]:
    """io_uring_setup with the first of ``wanted`` setup flags this kernel takes (EINVAL: it
    does not know one of them); returns the ring fd, the params and the flags it took."""
    for flags in wanted:
        params = ctypes.create_string_buffer(_PARAMS.size)
        _PARAMS.pack_into(params, 0, *(0, 0, flags) + (0,) * 25)
        fd = _syscall(SYS_IO_URING_SETUP, ctypes.c_uint(entries), params)
        if fd >= 0:
            return fd, _PARAMS.unpack(params.raw), flags
        err = ctypes.get_errno()
        if err != errno.EINVAL or flags == wanted[-1]:
            raise OSError(err, os.strerror(err))
    raise AssertionError("unreachable: the last flags either work or raise")


def _enter(ring_fd: int, to_submit: int, min_complete: int, flags: int) -> int:
    """io_uring_enter, retrying EINTR; returns the count or -errno (EAGAIN, EBUSY …)."""
    while True:
        ret = _syscall(SYS_IO_URING_ENTER, ring_fd, to_submit, min_complete, flags, None, 0)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -err


def _supports(ring_fd: int, *ops: int) -> bool:
    """Whether the kernel behind ``ring_fd`` knows every one of ``ops`` (IORING_REGISTER_PROBE,
    Linux 5.6+; an older kernel refuses the probe itself: False)."""
    count = 256
    probe = ctypes.create_string_buffer(16 + 8 * count)  # io_uring_probe + ops[count]
    if _syscall(SYS_IO_URING_REGISTER, ring_fd, IORING_REGISTER_PROBE, probe, count) < 0:
        return False
    raw = probe.raw  # last_op, ops_len, then one 8-byte io_uring_probe_op per op from offset 16
    return all(op <= raw[0] and raw[16 + 8 * op + 2] & IO_URING_OP_SUPPORTED for op in ops)


class IoUringEngine(AioEngine):
    """An io_uring with ``depth`` slots; its fd is readable while completions wait."""

    name = "io_uring"

    def __init__(self, depth: int = 128, *, force_async: bool = False):
        self.depth = depth
        self.inflight = 0
        self.force_async = force_async  # IOSQE_ASYNC: never do the I/O inline in submit()
        self._sqe_flags = IOSQE_ASYNC if force_async else 0
        self._closed = False
        self._maps: list[mmap.mmap] = []
        self.fd = -1
        try:
            self._ring_fd, params, self.setup_flags = _setup(depth)
        except OSError as e:
            raise AioSetupError(f"io_uring_setup({depth}): {e.strerror}", e.errno or 0) from e
        try:
            self._map_rings(params)
            self._single_op = _SINGLE_OP if _supports(self._ring_fd, IORING_OP_READ, IORING_OP_WRITE) else {}
        except OSError as e:
            self._free()
            raise AioSetupError(f"io_uring set-up: {e.strerror}", e.errno or 0) from e
        #: What a poller watches: the ring's own fd, readable (POLLIN) while the completion queue
        #: holds any entry — reaping them is what clears it, no eventfd to read (a system call
        #: per completion turn saved).
        self.fd = self._ring_fd
        self._free_slots = list(range(depth - 1, -1, -1))
        self._tokens: list = [None] * depth
        self._keep: list = [None] * depth  # memoryviews (and spill iovec buffers) per slot
        self._sq_tail = _U32.unpack_from(self._sq, self._sq_tail_off)[0]  # free-running; masked on use
        self._to_submit = 0
        self._wait_arg: tuple | None = None  # wait()'s timespec and getevents arg, made once
        iov_table = bytearray(depth * IOV_PER_SLOT * _IOV.size)
        self._iov_table = iov_table
        self._iov_base = _addressof(_c_char_from_buffer(iov_table))
        self._spill: list[tuple[bytearray, int] | None] = [None] * depth  # per slot: table, address

    def _map_rings(self, p: tuple) -> None:
        sq_entries, cq_entries, _flags, _cpu, _idle, features = p[0:6]
        self.features = features
        (_sq_head, sq_tail, sq_mask, _sq_n, sq_flags, _dropped, sq_array, _r1, _ua) = p[10:19]
        (cq_head, cq_tail, cq_mask, _cq_n, cq_overflow, cqes, _cq_flags, _r2, _ua2) = p[19:28]
        if not features & IORING_FEAT_NODROP:
            raise OSError(errno.ENOTSUP, "kernel lacks IORING_FEAT_NODROP (needs Linux 5.5+)")
        sq_size = sq_array + sq_entries * 4
        cq_size = cqes + cq_entries * _CQE.size
        flags, prot = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), mmap.PROT_READ | mmap.PROT_WRITE
        if features & IORING_FEAT_SINGLE_MMAP:
            sq = cq = mmap.mmap(self._ring_fd, max(sq_size, cq_size), flags, prot, offset=IORING_OFF_SQ_RING)
            self._maps.append(sq)
        else:
            sq = mmap.mmap(self._ring_fd, sq_size, flags, prot, offset=IORING_OFF_SQ_RING)
            self._maps.append(sq)
            cq = mmap.mmap(self._ring_fd, cq_size, flags, prot, offset=IORING_OFF_CQ_RING)
            self._maps.append(cq)
        sqes = mmap.mmap(self._ring_fd, sq_entries * _SQE.size, flags, prot, offset=IORING_OFF_SQES)
        self._maps.append(sqes)
        self._sq, self._cq, self._sqes = memoryview(sq), memoryview(cq), memoryview(sqes)
        self._sq_tail_off, self._sq_flags_off = sq_tail, sq_flags
        self._sq_mask = _U32.unpack_from(sq, sq_mask)[0]
        self._cq_head_off, self._cq_tail_off, self._cqes_off = cq_head, cq_tail, cqes
        self._cq_mask = _U32.unpack_from(cq, cq_mask)[0]
        self._cq_overflow_off = cq_overflow
        for i in range(sq_entries):  # identity: SQ array slot i names SQE i, once and for all
            _U32.pack_into(sq, sq_array + 4 * i, i)

    # --- preparing -------------------------------------------------------------------------

    def _take_slot(self, token: int, keep) -> int:
        if self._closed:
            raise AioError("io_uring engine is closed", errno.EBADF)
        if not self._free_slots:
            raise AioQueueFull(f"io_uring engine already has {self.depth} ops in flight")
        slot = self._free_slots.pop()
        self._tokens[slot] = token
        self._keep[slot] = keep
        self.inflight += 1
        return slot

    def _slow_iovecs(self, slot: int, iovecs: list, writing: bool) -> int:
        """The iovec array for many, empty or read-only buffers (own buffer, copies)."""
        table = bytearray(max(1, len(iovecs)) * _IOV.size)
        keep: list[object] = [iovecs, table]  # alive until the slot is reaped
        for i, view in enumerate(iovecs):
            view = memoryview(view)
            if view.readonly and view.nbytes:
                if not writing:
                    raise UsageError("prep_readv needs writable buffers")
                view = memoryview(bytearray(view))  # a read-only buffer to write out: copied
                keep.append(view)
            address = _addressof(_c_char_from_buffer(view)) if view.nbytes else 0
            _IOV.pack_into(table, i * _IOV.size, address, view.nbytes)
        self._keep[slot] = keep
        return _addressof(_c_char_from_buffer(table))

    def _spill_table(self, slot: int, count: int) -> tuple[bytearray, int]:
        """Slot ``slot``'s own iovec table, with room for ``count`` (made or grown now)."""
        spill = self._spill[slot]
        if spill is None or len(spill[0]) < count * _IOV.size:
            table = bytearray((1 << (count - 1).bit_length()) * _IOV.size)
            spill = self._spill[slot] = (table, _addressof(_c_char_from_buffer(table)))
        return spill

    def _push(self, opcode: int, fd: int, off: int, addr: int, length: int, rw_flags: int, slot: int) -> None:
        # Only the first 40 bytes: the rest of every SQE (buf_index … addr3) stays zero as mapped.
        _SQE_HEAD.pack_into(self._sqes, (self._sq_tail & self._sq_mask) << 6, opcode, self._sqe_flags,
                            0, fd, off & _U64, addr, length, rw_flags, slot)
        self._sq_tail += 1
        self._to_submit += 1

    def _rw(self, opcode: int, fd: int, iovecs: list, offset: int, token: int, rw_flags: int,
            sqe_flags: int, addresses: list[int] | None) -> None:
        """The hot path, kept flat: one slot, the iovec pairs (none for one buffer), one SQE."""
        free = self._free_slots
        if not free or self._closed:
            self._take_slot(token, None)  # raises the right error
        slot = free.pop()
        self._keep[slot] = iovecs  # the list (and so its views) lives until reaped
        try:
            count = len(iovecs)
            if count == 1 and addresses is not None and opcode in self._single_op:
                # One buffer whose address the caller knows: IORING_OP_READ/WRITE carry its
                # address and length in the SQE, no iovec.
                opcode, addr, count = self._single_op[opcode], addresses[0], iovecs[0].nbytes
            else:
                if count <= IOV_PER_SLOT:
                    table, off = self._iov_table, slot * _SLOT_BYTES
                    addr = self._iov_base + off
                else:
                    table, addr = self._spill_table(slot, count)
                    off = 0
                if addresses is not None and len(addresses) == count:
                    # The caller's addresses (the views' own, from the walk that sliced them): no
                    # lookup per view; many pairs interleaved by C-level slice stores.
                    if count <= 4:
                        for view, address in zip(iovecs, addresses):
                            _IOV.pack_into(table, off, address, view.nbytes)
                            off += 16
                    else:
                        pairs = array.array("Q", bytes(16 * count))
                        pairs[0::2] = array.array("Q", addresses)
                        pairs[1::2] = array.array("Q", map(_nbytes, iovecs))
                        table[off:off + 16 * count] = pairs
                else:
                    for view in iovecs:
                        _IOV.pack_into(table, off, _addressof(_c_char_from_buffer(view)), view.nbytes)
                        off += 16
        except (TypeError, ValueError, AttributeError, OverflowError):  # read-only, empty, not views
            try:
                addr = self._slow_iovecs(slot, iovecs, opcode == IORING_OP_WRITEV)
            except BaseException:
                self._keep[slot] = None
                free.append(slot)
                raise
            count = len(iovecs)
        self._tokens[slot] = token
        self.inflight += 1
        _SQE_HEAD.pack_into(self._sqes, (self._sq_tail & self._sq_mask) << 6, opcode, sqe_flags,
                            0, fd, offset & _U64, addr, count, rw_flags, slot)
        self._sq_tail += 1
        self._to_submit += 1

    def prep_readv(self, fd: int, iovecs: list, offset: int, token: int, *, offload: bool = False,
                   addresses: list[int] | None = None) -> None:
        self._rw(IORING_OP_READV, fd, iovecs, offset, token, 0,
                 self._sqe_flags | IOSQE_ASYNC if offload else self._sqe_flags, addresses)

    def prep_writev(self, fd: int, iovecs: list, offset: int, token: int, *, dsync: bool = False,
                    offload: bool = False, addresses: list[int] | None = None) -> None:
        self._rw(IORING_OP_WRITEV, fd, iovecs, offset, token, RWF_DSYNC if dsync else 0,
                 self._sqe_flags | IOSQE_ASYNC if offload else self._sqe_flags, addresses)

    def prep_fsync(self, fd: int, token: int, *, datasync: bool = True) -> None:
        slot = self._take_slot(token, None)
        self._push(IORING_OP_FSYNC, fd, 0, 0, 0, IORING_FSYNC_DATASYNC if datasync else 0, slot)

    def prep_fallocate(self, fd: int, mode: int, offset: int, length: int, token: int) -> None:
        slot = self._take_slot(token, None)
        self._push(IORING_OP_FALLOCATE, fd, offset, length, mode, 0, slot)  # addr = len, len = mode

    # --- submitting and reaping -------------------------------------------------------------

    def submit(self) -> int:
        """Hand every prepared op to the kernel with one io_uring_enter; returns how many."""
        if not self._to_submit:
            return 0
        # Plain store after the SQE stores: enough on x86-64 (TSO), see the module docstring.
        _U32.pack_into(self._sq, self._sq_tail_off, self._sq_tail & 0xFFFFFFFF)
        done = 0
        deadline = None
        while self._to_submit:
            ret = _enter(self._ring_fd, self._to_submit, 0, 0)
            if ret > 0:
                self._to_submit -= ret
                done += ret
                continue
            if ret in (0, -errno.EAGAIN, -errno.EBUSY):  # out of memory for requests, or CQ backlog
                deadline = deadline or time.monotonic() + 10.0
                if time.monotonic() > deadline:
                    raise AioError(f"io_uring_enter kept refusing ({ret})", -ret)
                self._flush_overflow()
                time.sleep(0.0005)
                continue
            raise AioError(f"io_uring_enter: {os.strerror(-ret)}", -ret)
        return done

    def _flush_overflow(self) -> None:
        # With IORING_FEAT_NODROP the kernel keeps CQEs that did not fit; GETEVENTS moves them in.
        _enter(self._ring_fd, 0, 0, IORING_ENTER_GETEVENTS)

    def reap(self, clear: bool = True) -> list[tuple[int, int]]:
        """Every finished op as (token, result); never blocks.  No fd to clear (``clear`` is
        for engines that signal on an eventfd): the ring's fd is readable while entries wait."""
        if self._closed:
            return []
        out = self._reap_cq()
        if _U32.unpack_from(self._sq, self._sq_flags_off)[0] & IORING_SQ_CQ_OVERFLOW:
            self._flush_overflow()
            out += self._reap_cq()
        return out

    def _reap_cq(self) -> list[tuple[int, int]]:
        cq = self._cq
        head = _U32.unpack_from(cq, self._cq_head_off)[0]
        tail = _U32.unpack_from(cq, self._cq_tail_off)[0]
        if head == tail:
            return []
        out = []
        mask, base, unpack = self._cq_mask, self._cqes_off, _CQE.unpack_from
        tokens, keep, free = self._tokens, self._keep, self._free_slots
        while head != tail:
            slot, res, _flags = unpack(cq, base + (head & mask) * 16)
            head = (head + 1) & 0xFFFFFFFF
            out.append((tokens[slot], res))
            tokens[slot] = keep[slot] = None
            free.append(slot)
        self.inflight -= len(out)
        _U32.pack_into(cq, self._cq_head_off, head)  # after the CQE loads: ordered on TSO
        return out

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        """As :meth:`AioEngine.wait`; with a timeout, one ``io_uring_enter`` that waits for a
        completion itself (IORING_ENTER_EXT_ARG, Linux 5.11+): the completion's task work runs
        inside that wait, no poll to set up, restart and return from."""
        if timeout is None or not self.features & IORING_FEAT_EXT_ARG:
            return super().wait(timeout)  # (it reaps first itself)
        done = self.reap()
        if done or self._closed or not self._in_kernel():
            return done
        # -ETIME when the time ran out; -EINTR (a signal) ends the wait early: either way, reap.
        _syscall(SYS_IO_URING_ENTER, self._ring_fd, 0, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                 self._wait_arg_for(timeout), _ARGSZ)
        return self.reap()

    def submit_and_wait(self, timeout: float) -> list[tuple[int, int]]:
        """:meth:`submit` and :meth:`wait` in one ``io_uring_enter`` (IORING_ENTER_EXT_ARG): the
        prepared ops go to the kernel and the call returns at the first completion, or after
        ``timeout`` seconds — one system call per request at queue depth 1 on a disk, not two.
        The kernel waits only when it took every op; otherwise (or on an older kernel) the
        rest goes through :meth:`submit`, then :meth:`wait`."""
        to_submit = self._to_submit
        if not to_submit or self._closed or not self.features & IORING_FEAT_EXT_ARG:
            return super().submit_and_wait(timeout)
        _U32.pack_into(self._sq, self._sq_tail_off, self._sq_tail & 0xFFFFFFFF)
        arg = self._wait_arg_for(timeout)
        # The count taken (a wait that timed out or was interrupted still returns it), or
        # -errno when none was (EAGAIN, EBUSY: submit() retries those).
        ret = _syscall(SYS_IO_URING_ENTER, self._ring_fd, to_submit, 1,
                       IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, arg, _ARGSZ)
        if ret > 0:
            self._to_submit -= min(ret, to_submit)
        if ret == to_submit:
            return self.reap()
        return super().submit_and_wait(timeout)  # the rest, and then the wait

    def _wait_arg_for(self, timeout: float):
        """The io_uring_getevents_arg of a wait of ``timeout`` seconds (its timespec and it are
        made once, and the timespec filled in for each wait)."""
        if self._wait_arg is None:
            ts = ctypes.create_string_buffer(_TIMESPEC.size)
            arg = ctypes.create_string_buffer(_GETEVENTS_ARG.size)
            _GETEVENTS_ARG.pack_into(arg, 0, 0, 0, 0, _addressof(ts))
            self._wait_arg = (ts, arg)
        ts, arg = self._wait_arg
        ns = max(0, int(timeout * 1e9))
        _TIMESPEC.pack_into(ts, 0, ns // 1_000_000_000, ns % 1_000_000_000)
        return arg

    def _in_kernel(self) -> bool:
        return self.inflight > self._to_submit

    def close(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s) for ops in the kernel, then free the ring; idempotent.

        Ops still running at the deadline are cancelled by the kernel when the ring goes; their
        results are lost.  Prepared but unsubmitted ops are dropped.
        """
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        while self.inflight > self._to_submit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wait(left)
        self._closed = True
        self._free()
        self._tokens = [None] * self.depth
        self._keep = [None] * self.depth
        self.inflight = 0

    def _free(self) -> None:
        for view in ("_sq", "_cq", "_sqes"):
            if hasattr(self, view):
                getattr(self, view).release()
        for m in self._maps:
            m.close()
        self._maps = []
        if self._ring_fd >= 0:
            os.close(self._ring_fd)  # the kernel cancels whatever is still running
            self._ring_fd = -1
        self.fd = -1

