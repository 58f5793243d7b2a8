"""Boot real Linux guests under QEMU (TCG) for tests, demos and benchmarks.

    from pyvirtio.guest import prepare_kernel, boot_guest
    kernel = prepare_kernel()                       # cached Debian kernel
    res = boot_guest(kernel, "cat /sys/block/vda/size",
                     qemu_args=["-device", "virtio-blk-pci,drive=d0",
                                "-drive", "if=none,id=d0,file=disk.img,format=raw"])
    res.check().lines                               # what the script printed

See ``kernel`` (download, PVH ELF), ``initramfs`` (assembly, host binaries) with ``cpio`` (the
newc codec), ``modules`` (the module index) and ``init`` (the /init script), and ``qemu``
(boot_guest / start_guest).
"""

from .errors import (GuestBootError, GuestError, GuestScriptError, GuestTimeout,
                     InitramfsError, KernelPrepareError)
from .cpio import CpioWriter, read_initrd, read_newc
from .initramfs import FileSet, build_initrd
from .kernel import KernelBundle, default_cache_dir, prepare_kernel
from .modules import DEFAULT_MODULES, EXT4_MODULES, VIRTIOFS_MODULES, VSOCK_MODULES, ModuleIndex
from .qemu import (GuestProcess, GuestResult, boot_guest, qemu_available, qemu_command,
                   start_guest)

__all__ = [
    "GuestBootError", "GuestError", "GuestScriptError", "GuestTimeout", "InitramfsError",
    "KernelPrepareError", "DEFAULT_MODULES", "EXT4_MODULES", "VIRTIOFS_MODULES",
    "VSOCK_MODULES", "CpioWriter", "FileSet", "ModuleIndex", "build_initrd", "read_initrd",
    "read_newc", "KernelBundle", "default_cache_dir", "prepare_kernel", "GuestProcess",
    "GuestResult", "boot_guest", "qemu_available", "qemu_command", "start_guest",
]
