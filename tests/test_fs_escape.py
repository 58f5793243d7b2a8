"""A guest cannot leave the shared directory: ``..`` at the root, symlinks pointing outside
(absolute and relative), names with '/', renames racing lookups, links, and the /proc/self/fd
reopen of O_PATH handles (which must never follow a symlink).  Every test keeps a directory
*beside* the share and checks it is untouched."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest

from fs_requests import entry, init, name, request, split
from pyvirtio.devices.fs.passthrough import PassthroughFs
from pyvirtio.devices.fs.server import FuseServer
from pyvirtio.spec import fuse as F

O = F.FuseOpcode
SECRET = b"outside the share\n"


@pytest.fixture
def layout(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    os.chmod(outside / "secret.txt", 0o600)
    share = tmp_path / "share"
    share.mkdir()
    (share / "sub").mkdir()
    (share / "sub" / "inner").write_bytes(b"inner")
    os.symlink(str(outside), share / "abs_dir")
    os.symlink(str(outside / "secret.txt"), share / "abs_file")
    os.symlink("../outside/secret.txt", share / "rel_file")
    os.symlink("../../outside", share / "sub" / "rel_dir")
    return share, outside


@pytest.fixture
def srv(layout):
    share, _ = layout
    server = FuseServer(PassthroughFs(str(share), xattr=True))
    assert split(server.handle(init(), 4096))[0].error == 0
    yield server
    server.backend.close()


def untouched(outside) -> None:
    secret = outside / "secret.txt"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert secret.read_bytes() == SECRET
    st = os.stat(secret)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    assert os.listxattr(secret) == []


def call(srv, data):
    return split(srv.handle(data, 1 << 20))


def lookup(srv, parent, nm):
    hdr, payload = call(srv, request(O.LOOKUP, parent, name(nm)))
    return -hdr.error, (entry(payload) if not hdr.error else None)


def test_dotdot_at_the_root_is_the_root(srv, layout):
    share, outside = layout
    err, (head, attr) = lookup(srv, 1, "..")
    assert err == 0 and head.nodeid == F.FUSE_ROOT_ID and attr.ino == os.stat(share).st_ino
    err, (head, _) = lookup(srv, 1, ".")
    assert head.nodeid == F.FUSE_ROOT_ID
    sub = lookup(srv, 1, "sub")[1][0].nodeid
    assert lookup(srv, sub, "..")[1][0].nodeid == F.FUSE_ROOT_ID  # from below: the root again
    untouched(outside)


@pytest.mark.parametrize("nm", ["../outside", "../../", "sub/../..", "/etc", "a/b"])
def test_names_with_a_slash_are_refused(srv, layout, nm):
    assert lookup(srv, 1, nm)[0] == errno.EINVAL
    for data in (request(O.MKDIR, 1, F.FUSE_MKDIR_IN.pack(0o755, 0), name(nm)),
                 request(O.CREATE, 1, F.FUSE_CREATE_IN.pack(os.O_RDWR, 0o644, 0, 0), name(nm)),
                 request(O.UNLINK, 1, name(nm)),
                 request(O.RENAME, 1, F.FUSE_RENAME_IN.pack(1), name("sub"), name(nm)),
                 request(O.SYMLINK, 1, name(nm), name("x")),
                 request(O.LINK, 1, F.FUSE_LINK_IN.pack(1), name(nm))):
        assert -call(srv, data)[0].error == errno.EINVAL
    untouched(layout[1])


@pytest.mark.parametrize("nm", [".", ".."])
def test_dot_names_are_refused_where_virtiofsd_refuses_them(srv, layout, nm):
    for data in (request(O.MKDIR, 1, F.FUSE_MKDIR_IN.pack(0o755, 0), name(nm)),
                 request(O.RMDIR, 1, name(nm)), request(O.UNLINK, 1, name(nm)),
                 request(O.RENAME, 1, F.FUSE_RENAME_IN.pack(1), name(nm), name("x"))):
        assert -call(srv, data)[0].error == errno.EINVAL


@pytest.mark.parametrize("link", ["abs_dir", "abs_file", "rel_file"])
def test_symlinks_out_are_inodes_of_their_own_never_followed(srv, layout, link):
    share, outside = layout
    err, (head, attr) = lookup(srv, 1, link)
    assert err == 0 and stat.S_ISLNK(attr.mode)
    node = head.nodeid
    assert call(srv, request(O.READLINK, node))[1] == os.readlink(share / link).encode()
    assert lookup(srv, node, "secret.txt")[0] == errno.ENOTDIR
    assert -call(srv, request(O.OPEN, node, F.FUSE_OPEN_IN.pack(os.O_RDWR | os.O_TRUNC, 0)))[0].error == errno.EBADF
    assert -call(srv, request(O.OPENDIR, node, F.FUSE_OPEN_IN.pack(0, 0)))[0].error == errno.ENOTDIR
    size = F.FuseSetattrIn(F.FattrFlag.SIZE, 0, 0, 0, *(0,) * 12)
    assert -call(srv, request(O.SETATTR, node, F.FUSE_SETATTR_IN.pack(*size)))[0].error == errno.EBADF
    mode = F.FuseSetattrIn(F.FattrFlag.MODE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0o100777, 0, 0, 0, 0)
    call(srv, request(O.SETATTR, node, F.FUSE_SETATTR_IN.pack(*mode)))  # Linux: EOPNOTSUPP on a symlink
    times = F.FuseSetattrIn(F.FattrFlag.MTIME | F.FattrFlag.ATIME, 0, 0, 0, 0, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    before = os.stat(outside / "secret.txt").st_mtime_ns
    call(srv, request(O.SETATTR, node, F.FUSE_SETATTR_IN.pack(*times)))
    assert os.stat(outside / "secret.txt").st_mtime_ns == before
    call(srv, request(O.SETXATTR, node, F.FUSE_COMPAT_SETXATTR_IN.pack(1, 0), name("user.x"), b"v"))
    for sub in ("new", "secret.txt"):
        call(srv, request(O.CREATE, node, F.FUSE_CREATE_IN.pack(os.O_RDWR | os.O_TRUNC, 0o644, 0, 0), name(sub)))
        call(srv, request(O.MKDIR, node, F.FUSE_MKDIR_IN.pack(0o755, 0), name(sub)))
        call(srv, request(O.UNLINK, node, name(sub)))
    untouched(outside)


def test_create_over_an_existing_symlink_does_not_open_its_target(srv, layout):
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    hdr, _ = call(srv, request(O.CREATE, 1, F.FUSE_CREATE_IN.pack(flags, 0o644, 0, 0), name("abs_file")))
    assert -hdr.error == errno.EBADF
    untouched(layout[1])


def test_relative_symlink_below_the_root_does_not_lead_out(srv, layout):
    sub = lookup(srv, 1, "sub")[1][0].nodeid
    err, (head, attr) = lookup(srv, sub, "rel_dir")
    assert stat.S_ISLNK(attr.mode)
    assert lookup(srv, head.nodeid, "secret.txt")[0] == errno.ENOTDIR
    untouched(layout[1])


def test_links_only_reach_inodes_inside(srv, layout):
    share, outside = layout
    err, (head, _) = lookup(srv, 1, "abs_file")
    hdr, payload = call(srv, request(O.LINK, 1, F.FUSE_LINK_IN.pack(head.nodeid), name("hard")))
    assert hdr.error == 0 and (share / "hard").is_symlink()  # a link to the symlink itself
    assert os.lstat(share / "hard").st_ino == os.lstat(share / "abs_file").st_ino
    for forged in (0, 2**64 - 1, 999_999):
        hdr, _ = call(srv, request(O.LINK, 1, F.FUSE_LINK_IN.pack(forged), name(f"h{forged}")))
        assert -hdr.error == errno.EBADF
    untouched(outside)


def test_a_node_follows_its_directory_not_its_name(srv, layout):
    """A rename after the lookup (the guest's or the host's) cannot redirect the node: it is
    the directory's own descriptor, not a path."""
    share, outside = layout
    sub = lookup(srv, 1, "sub")[1][0].nodeid
    os.rename(share / "sub", share / "moved")
    os.symlink(str(outside), share / "sub")
    err, (head, attr) = lookup(srv, sub, "inner")
    assert err == 0 and attr.size == 5  # still the real directory, now called 'moved'
    assert lookup(srv, sub, "secret.txt")[0] == errno.ENOENT
    untouched(outside)


def test_renames_racing_lookups(srv, layout):
    """One thread swaps 'sub' between the directory and a symlink to the outside (RENAME2
    EXCHANGE through the server); others look up sub/secret.txt and read what they find."""
    share, outside = layout
    os.symlink(str(outside), share / "evil")
    stop = time.monotonic() + 0.5
    found = []

    def swap():
        while time.monotonic() < stop:
            call(srv, request(O.RENAME2, 1, F.FUSE_RENAME2_IN.pack(1, F.RENAME_EXCHANGE, 0), name("sub"), name("evil")))

    def probe():
        while time.monotonic() < stop:
            err, got = lookup(srv, 1, "sub")
            if err:
                continue
            err, got = lookup(srv, got[0].nodeid, "secret.txt")
            if not err:
                found.append(got)

    threads = [threading.Thread(target=swap)] + [threading.Thread(target=probe) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == []
    untouched(outside)
