"""What the pyvirtio pytest plugin gives a project's tests (``pip install pyvirtio``; the
fixtures come with it): a Linux guest with vhost-user devices, and commands run inside it.

    python -m pytest examples/pytest/test_guest_example.py
"""


def test_a_disk_and_an_entropy_source(pyvirtio_serve, pyvirtio_guest):
    disk = pyvirtio_serve("blk", size=32 << 20)
    rng = pyvirtio_serve("rng")
    guest = pyvirtio_guest(disk, rng)

    size = guest.run("cat /sys/block/vda/size").check()
    assert int(size.output) == (32 << 20) // 512

    # Write through the guest's page cache to the disk, drop the cache, read it back.
    guest.run("echo hello-from-the-guest | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null").check()
    back = guest.run("echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 count=1 2>/dev/null "
                     "| tr -d '\\000'").check()
    assert back.output.strip() == "hello-from-the-guest"

    entropy = guest.run("dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1").check()
    assert len(entropy.output.split()) == 16

    failed = guest.run("ls /no/such/file")
    assert failed.exit_code != 0 and "No such file" in failed.output
