"""pyvirtio.spec.fuse agrees with the kernel's linux/fuse.h (linux-libc-dev): every opcode,
flag and struct size we model is compiled against the header and compared."""

import os
import shutil
import subprocess

import pytest

from pyvirtio.spec import fuse

HEADER = "/usr/include/linux/fuse.h"

#: (C struct name, our Struct or size)
STRUCTS = [
    ("fuse_in_header", fuse.FUSE_IN_HEADER), ("fuse_out_header", fuse.FUSE_OUT_HEADER),
    ("fuse_attr", fuse.FUSE_ATTR), ("fuse_entry_out", fuse.FUSE_ENTRY_OUT),
    ("fuse_attr_out", fuse.FUSE_ATTR_OUT), ("fuse_kstatfs", fuse.FUSE_KSTATFS),
    ("fuse_file_lock", fuse.FUSE_FILE_LOCK), ("fuse_forget_in", fuse.FUSE_FORGET_IN),
    ("fuse_forget_one", fuse.FUSE_FORGET_ONE), ("fuse_batch_forget_in", fuse.FUSE_BATCH_FORGET_IN),
    ("fuse_getattr_in", fuse.FUSE_GETATTR_IN), ("fuse_mknod_in", fuse.FUSE_MKNOD_IN),
    ("fuse_mkdir_in", fuse.FUSE_MKDIR_IN), ("fuse_rename_in", fuse.FUSE_RENAME_IN),
    ("fuse_rename2_in", fuse.FUSE_RENAME2_IN), ("fuse_link_in", fuse.FUSE_LINK_IN),
    ("fuse_setattr_in", fuse.FUSE_SETATTR_IN), ("fuse_open_in", fuse.FUSE_OPEN_IN),
    ("fuse_create_in", fuse.FUSE_CREATE_IN), ("fuse_open_out", fuse.FUSE_OPEN_OUT),
    ("fuse_release_in", fuse.FUSE_RELEASE_IN), ("fuse_flush_in", fuse.FUSE_FLUSH_IN),
    ("fuse_read_in", fuse.FUSE_READ_IN), ("fuse_write_in", fuse.FUSE_WRITE_IN),
    ("fuse_write_out", fuse.FUSE_WRITE_OUT), ("fuse_fsync_in", fuse.FUSE_FSYNC_IN),
    ("fuse_setxattr_in", fuse.FUSE_SETXATTR_IN), ("fuse_getxattr_in", fuse.FUSE_GETXATTR_IN),
    ("fuse_getxattr_out", fuse.FUSE_GETXATTR_OUT), ("fuse_lk_in", fuse.FUSE_LK_IN),
    ("fuse_lk_out", fuse.FUSE_FILE_LOCK), ("fuse_access_in", fuse.FUSE_ACCESS_IN),
    ("fuse_init_in", fuse.FUSE_INIT_IN), ("fuse_init_out", fuse.FUSE_INIT_OUT),
    ("fuse_interrupt_in", fuse.FUSE_INTERRUPT_IN), ("fuse_fallocate_in", fuse.FUSE_FALLOCATE_IN),
    ("fuse_lseek_in", fuse.FUSE_LSEEK_IN), ("fuse_lseek_out", fuse.FUSE_LSEEK_OUT),
    ("fuse_copy_file_range_in", fuse.FUSE_COPY_FILE_RANGE_IN), ("fuse_syncfs_in", fuse.FUSE_SYNCFS_IN),
    ("fuse_dirent", fuse.FUSE_DIRENT), ("fuse_statfs_out", fuse.FUSE_KSTATFS),
]

#: (C expression, our value)
CONSTANTS = (
    [(f"FUSE_{op.name}", int(op)) for op in fuse.FuseOpcode]
    + [(f"FUSE_{flag.name}", int(flag)) for flag in fuse.FuseInitFlag]
    + [(f"FOPEN_{flag.name}", int(flag)) for flag in fuse.FopenFlag]
    + [(f"FATTR_{flag.name}", int(flag)) for flag in fuse.FattrFlag]
    + [(name, getattr(fuse, name)) for name in (
        "FUSE_KERNEL_VERSION", "FUSE_ROOT_ID", "FUSE_MIN_READ_BUFFER", "FUSE_RELEASE_FLUSH",
        "FUSE_RELEASE_FLOCK_UNLOCK", "FUSE_GETATTR_FH", "FUSE_LK_FLOCK", "FUSE_WRITE_CACHE",
        "FUSE_WRITE_LOCKOWNER", "FUSE_WRITE_KILL_SUIDGID", "FUSE_READ_LOCKOWNER",
        "FUSE_FSYNC_FDATASYNC", "FUSE_ATTR_SUBMOUNT", "FUSE_ATTR_DAX", "FUSE_OPEN_KILL_SUIDGID",
        "FUSE_SETXATTR_ACL_KILL_SGID", "FUSE_INIT_BSWAP_RESERVED", "FUSE_COMPAT_ENTRY_OUT_SIZE",
        "FUSE_COMPAT_ATTR_OUT_SIZE", "FUSE_COMPAT_STATFS_SIZE", "FUSE_COMPAT_WRITE_IN_SIZE",
        "FUSE_COMPAT_MKNOD_IN_SIZE", "FUSE_COMPAT_INIT_OUT_SIZE", "FUSE_COMPAT_22_INIT_OUT_SIZE",
        "FUSE_NAME_OFFSET", "FUSE_NAME_OFFSET_DIRENTPLUS")]
    + [("sizeof(struct fuse_direntplus)", fuse.FUSE_NAME_OFFSET_DIRENTPLUS),
       ("offsetof(struct fuse_entry_out, attr)", fuse.FUSE_ENTRY_OUT_ATTR_OFFSET)]
)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not os.path.exists(HEADER):
        pytest.skip("needs a C compiler and linux-libc-dev's linux/fuse.h")
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/fuse.h>", "int main(void) {"]
    for name, _ in STRUCTS:
        lines.append(f'  printf("struct %s %zu\\n", "{name}", sizeof(struct {name}));')
    for expr, value in CONSTANTS:
        if value is not None:
            cast = "(unsigned int)" if value < 1 << 32 else ""  # (1 << 31) is an int in C
            lines.append(f'  printf("%s %llu\\n", "{expr}", (unsigned long long){cast}({expr}));')
    lines.append("  return 0;\n}")
    work = tmp_path_factory.mktemp("fuseh")
    (work / "f.c").write_text("\n".join(lines) + "\n")
    build = subprocess.run([cc, "-o", str(work / "f"), str(work / "f.c")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(work / "f")], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_struct_sizes_match_fuse_h(measured):
    for name, ours in STRUCTS:
        assert ours.size == measured[f"struct {name}"], name


def test_constants_match_fuse_h(measured):
    for expr, value in CONSTANTS:
        if value is not None:
            assert value == measured[expr], expr


def test_size_constants_match_structs():
    assert fuse.FUSE_ENTRY_OUT.size == fuse.FUSE_ENTRY_OUT_SIZE
    assert fuse.FUSE_ATTR_OUT.size == fuse.FUSE_ATTR_OUT_SIZE
    assert fuse.FUSE_INIT_IN.size == fuse.FUSE_INIT_IN_SIZE == 64
    assert fuse.FUSE_INIT_OUT.size == fuse.FUSE_INIT_OUT_SIZE
    assert fuse.FUSE_SETATTR_IN.size == fuse.FUSE_SETATTR_IN_SIZE
    assert fuse.FUSE_ENTRY_OUT_HEAD.size == fuse.FUSE_ENTRY_OUT_ATTR_OFFSET
    assert fuse.FUSE_COMPAT_SETXATTR_IN.size == 8
    for struct_, tuple_ in [(fuse.FUSE_ATTR, fuse.FuseAttr), (fuse.FUSE_SETATTR_IN, fuse.FuseSetattrIn),
                            (fuse.FUSE_INIT_OUT, fuse.FuseInitOut), (fuse.FUSE_LK_IN, fuse.FuseLkIn),
                            (fuse.FUSE_IN_HEADER, fuse.FuseInHeader), (fuse.FUSE_KSTATFS, fuse.FuseKstatfs)]:
        assert len(struct_.unpack(bytes(struct_.size))) == len(tuple_._fields)
