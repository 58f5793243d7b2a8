"""A real Linux guest (QEMU 7.2, TCG) with two virtio-fs shares in one boot: ``pyvirtio serve fs``
(tag ``pyv``) and QEMU's C virtiofsd, the reference (tag ``ref``).

The same guest script runs on both mounts: it reads back the files the host put there (sha256),
creates, writes, appends, truncates, renames (files, directories, over an existing file), hard-
and soft-links, removes and lists files and directories, copies a 64 MiB file in (the host checks
its sha256) and reads the host's 64 MiB file, and probes the ways out of a share: ``..`` at the
mount root, a host-made symlink to ``/etc/passwd`` and one to ``../../outside.txt``, a
guest-made symlink climbing out.  The guest's lines for the two shares must be the same, and
the host then checks that each share's directory tree is exactly the one expected (and the
two trees are equal).

What a symlink pointing outside the share does: the guest kernel resolves a symlink's target
itself, in the guest's namespace (FUSE READLINK hands back the target text; the daemon never
follows it), so ``host/out_abs -> /etc/passwd`` reads the guest's /etc/passwd and
``host/out_rel -> ../../outside.txt`` names /mnt/outside.txt in the guest, which does not
exist.  ``..`` at the mount root is the guest's /mnt.  virtiofsd behaves so; our share must too.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest

from pyvirtio.bench.peers import start_virtiofsd, virtiofsd_path
from pyvirtio.guest import VIRTIOFS_MODULES
from pyvirtio.testing.env import require
from pyvirtio.testing.serve import ServeProcess

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
BIG = 64 * MiB
GUEST_PASSWD = "guest-passwd-marker"
HOST_SIZES = {"empty": 0, "one": 1, "p4095": 4095, "p4096": 4096, "p4097": 4097,
              "k128p1": 128 * 1024 + 1, "m1p7": MiB + 7}
SHARES = ("pyv", "ref")

#: Run once per share: "share" name in $s, mount point in $M.  Lines "R <share> <what>" are
#: compared between the shares.
PER_SHARE = r"""
run_share() {
s=$1; M=/mnt/$1
r() { echo "R $s $*"; }
# what the host wrote, read back
( cd $M/host && find . -type f | sort | while read f; do r "sum $f $(sha256sum < $f | cut -c1-64)"; done )
r "host_ls $(ls -A $M/host | tr '\n' ' ')"
# the ways out
r "dotdot_is_guest_mnt $([ "$(stat -c %i $M/..)" = "$(stat -c %i /mnt)" ] && echo yes || echo no)"
r "out_abs_target $(readlink $M/host/out_abs)"
out=$(cat $M/host/out_abs 2>/dev/null); r "out_abs_read rc=$? $out"
out=$(cat $M/host/out_rel 2>/dev/null); r "out_rel_read rc=$? $out"
out=$(cat $M/host/in_rel 2>/dev/null | od -An -tx1 | tr -d ' '); r "in_rel_read $out"
# create, write, rename, link, symlink, remove
G=$M/g
mkdir $G && mkdir $G/d1 $G/d1/d2 $G/gone_dir $G/d1/d2/d3
echo one > $G/d1/a.txt
printf 'two\n' > $G/b.txt
dd if=/dev/zero bs=1024 count=5 2>/dev/null | tr '\0' 'x' > $G/d1/d2/c.bin
mv $G/b.txt $G/d1/b_renamed.txt; r "rename_file rc=$?"
mv $G/d1/d2 $G/d2moved; r "rename_dir rc=$?"
echo new > $G/replace_src; echo old > $G/replace_dst
mv -f $G/replace_src $G/replace_dst; r "rename_over rc=$?"
ln $G/d1/a.txt $G/a_link.txt; r "hardlink rc=$?"
echo more >> $G/a_link.txt
ln -s d1/a.txt $G/sym_a; r "symlink rc=$?"
ln -s /nonexistent/target $G/sym_dangling
ln -s ../../../etc/passwd $G/sym_climb
echo tmp > $G/tmp.txt; rm $G/tmp.txt; r "unlink rc=$?"
rmdir $G/gone_dir; r "rmdir rc=$?"
rmdir $G/d1 2>/dev/null; r "rmdir_nonempty rc=$?"
rm $G/nonexistent 2>/dev/null; r "unlink_missing rc=$?"
echo 0123456789 > $G/trunc.txt; truncate -s 4 $G/trunc.txt; r "truncate rc=$?"
chmod 600 $G/d1/b_renamed.txt
touch $G/d2moved/d3/empty
r "nlink_a $(stat -c %h $G/d1/a.txt)"
r "cat_via_link $(cat $G/a_link.txt | tr '\n' ' ')"
r "readlink_sym_a $(readlink $G/sym_a)"
r "cat_via_sym $(cat $G/sym_a | tr '\n' ' ')"
out=$(cat $G/sym_climb 2>/dev/null); r "sym_climb_read rc=$? $out"
out=$(cat $G/sym_dangling 2>/dev/null); r "sym_dangling_read rc=$?"
# the tree as the guest lists it
( cd $G && find . | sort | while read f; do
    if [ -L "$f" ]; then r "tree L $f -> $(readlink $f)"
    elif [ -d "$f" ]; then r "tree D $f $(ls -A $f | tr '\n' ' ')"
    else r "tree F $f $(stat -c '%s %h %a' $f) $(sha256sum < $f | cut -c1-16)"; fi
  done )
# 64 MiB guest -> host, then read back through the device
cp /tmp/big64 $G/big64; r "big_copy rc=$?"
sync; echo 3 > /proc/sys/vm/drop_caches
r "big_readback $(sha256sum < $G/big64 | cut -c1-64)"
}
"""

GUEST = (r"""
echo "__PASSWD__" > /etc/passwd
mkdir -p /mnt/pyv /mnt/ref
for s in pyv ref; do mount -t virtiofs $s /mnt/$s && echo "mounted_$s=1"; done
t0=$(date +%s)
dd if=/dev/urandom of=/tmp/big64 bs=1M count=64 2>/dev/null
echo "big64_sha=$(sha256sum < /tmp/big64 | cut -c1-64)"
""" + PER_SHARE + r"""
for s in pyv ref; do run_share $s; done
sync
for s in pyv ref; do umount /mnt/$s && echo "umounted_$s=1"; done
echo "guest_seconds=$(( $(date +%s) - t0 ))"
echo "guest_done=1"
""").replace("__PASSWD__", GUEST_PASSWD)


def _populate(root: Path, big: bytes) -> dict[str, str]:
    """The host's files in a share (``host/``), and a file outside it; their sha256 by path."""
    host = root / "host"
    (host / "small").mkdir(parents=True)
    (host / "sub" / "deep").mkdir(parents=True)
    sums = {}
    for name, size in HOST_SIZES.items():
        data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
        (host / "small" / name).write_bytes(data[:size])
        sums[f"./small/{name}"] = hashlib.sha256(data[:size]).hexdigest()
    (host / "sub" / "deep" / "file.txt").write_text("deep\n")
    sums["./sub/deep/file.txt"] = hashlib.sha256(b"deep\n").hexdigest()
    (host / "big.bin").write_bytes(big)
    sums["./big.bin"] = hashlib.sha256(big).hexdigest()
    os.symlink("/etc/passwd", host / "out_abs")
    os.symlink("../../outside.txt", host / "out_rel")
    os.symlink("small/one", host / "in_rel")
    return sums


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: path -> (kind, details) as the host sees it."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("L", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("D",)
            else:
                out[rel] = ("F", st.st_size, st.st_nlink, oct(st.st_mode & 0o777),
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _expected_g(big_sha: str) -> dict[str, tuple]:
    def f(data: bytes, nlink=1, mode=0o644):
        return ("F", len(data), nlink, oct(mode), hashlib.sha256(data).hexdigest())
    a = b"one\nmore\n"
    return {
        "d1": ("D",), "d1/a.txt": f(a, 2), "d1/b_renamed.txt": f(b"two\n", mode=0o600),
        "d2moved": ("D",), "d2moved/c.bin": f(b"x" * 5120), "d2moved/d3": ("D",),
        "d2moved/d3/empty": f(b""),
        "replace_dst": f(b"new\n"), "a_link.txt": f(a, 2),
        "sym_a": ("L", "d1/a.txt"), "sym_dangling": ("L", "/nonexistent/target"),
        "sym_climb": ("L", "../../../etc/passwd"), "trunc.txt": f(b"0123"),
        "big64": ("F", BIG, 1, oct(0o644), big_sha),
    }


class FsDaemon(ServeProcess):
    """``pyvirtio serve fs`` on a shared directory."""

    def __init__(self, tmp: Path, shared: Path, tag: str):
        self.socket = str(tmp / f"{tag}.sock")
        super().__init__(tmp, f"fs-{tag}", ["fs", f"--socket-path={self.socket}",
                                           f"--shared-dir={shared}", f"--tag={tag}"], [self.socket])


def _fs_args(sock: str, tag: str, slot: str) -> list[str]:
    return ["-chardev", f"socket,id={tag},path={sock}",
            "-device", f"vhost-user-fs-pci,chardev={tag},tag={tag},addr={slot}"]


def _share_lines(lines: list[str], share: str) -> list[str]:
    return [ln[len(f"R {share} "):] for ln in lines if ln.startswith(f"R {share} ")]


def test_same_script_on_pyvirtio_and_virtiofsd_shares(boot, tmp_path):
    require(virtiofsd_path() is not None, "virtiofsd", "not installed (package qemu-system-common)")
    big = os.urandom(BIG)
    roots = {s: tmp_path / f"share-{s}" for s in SHARES}
    sums = {}
    for s, root in roots.items():
        root.mkdir()
        sums[s] = _populate(root, big)
    (tmp_path / "outside.txt").write_text("host secret outside the shares\n")
    ours = FsDaemon(tmp_path, roots["pyv"], "pyv")
    try:
        ref = start_virtiofsd(str(tmp_path / "ref.sock"), str(roots["ref"]))
    except BaseException:
        ours.stop()
        raise
    try:
        started = time.monotonic()
        result = boot(GUEST, qemu_args=_fs_args(ours.socket, "pyv", "0x4")
                      + _fs_args(str(tmp_path / "ref.sock"), "ref", "0x5"),
                      modules=VIRTIOFS_MODULES, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        code = ours.stop()
        ref.close()
    log = ours.log.read_text()
    values = result.values()
    assert values.get("guest_done") == "1", result.output[-4000:]
    print(f"guest: {elapsed:.1f} s in all, {values.get('guest_seconds')} s of script", file=sys.stderr)
    lines = result.lines
    pyv, refl = _share_lines(lines, "pyv"), _share_lines(lines, "ref")
    assert refl, result.output[-3000:]
    assert pyv == refl, "\n".join(f"pyv: {a}\nref: {b}" for a, b in zip(pyv, refl) if a != b) or (pyv, refl)

    # what the reference did, which ours matched line by line
    r = dict(ln.split(" ", 1) for ln in refl if not ln.startswith(("sum ", "tree ")))
    guest_sums = dict(ln.split(" ")[1:3] for ln in refl if ln.startswith("sum "))
    assert guest_sums == sums["ref"]
    assert r["dotdot_is_guest_mnt"] == "yes"
    assert r["out_abs_target"] == "/etc/passwd"
    assert r["out_abs_read"] == f"rc=0 {GUEST_PASSWD}"  # the guest's /etc/passwd, not the host's
    assert r["out_rel_read"].startswith("rc=1")       # /mnt/outside.txt in the guest: none
    assert r["sym_climb_read"] == f"rc=0 {GUEST_PASSWD}"
    assert r["sym_dangling_read"].startswith("rc=1")
    assert r["in_rel_read"] == hashlib.sha256(b"one").digest()[:1].hex()
    assert r["nlink_a"] == "2" and r["rmdir_nonempty"] != "rc=0" and r["unlink_missing"] != "rc=0"
    for key in ("rename_file", "rename_dir", "rename_over", "hardlink", "symlink", "unlink",
                "rmdir", "truncate", "big_copy"):
        assert r[key] == "rc=0", (key, r[key])
    assert r["big_readback"] == values["big64_sha"]

    # the host sees exactly what the guest did, in both shares
    trees = {s: _tree(roots[s] / "g") for s in SHARES}
    assert trees["ref"] == _expected_g(values["big64_sha"])
    assert trees["pyv"] == trees["ref"]
    for s in SHARES:  # the host's files are untouched
        for rel, digest in sums[s].items():
            assert hashlib.sha256((roots[s] / "host" / rel).read_bytes()).hexdigest() == digest
    assert (tmp_path / "outside.txt").read_text() == "host secret outside the shares\n"
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]
