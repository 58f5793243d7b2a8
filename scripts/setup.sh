#!/usr/bin/env bash
# Set up pyvirtio on a fresh Debian 12 machine: the Debian packages its devices and tests use
# (QEMU, busybox, DPDK, fio, kernel headers), a virtualenv in .venv with pyvirtio and its test
# extras, and the guest kernel cache (a Debian kernel package unpacked under ~/.cache/pyvirtio).
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-pip qemu-system-x86 qemu-utils busybox-static cpio
              linux-libc-dev fio dpdk dpdk-dev iproute2 systemd util-linux
              gcc python3-dev  # these two: tests/test_accelerated.py builds the mypyc ring cores
              xorriso sg3-utils  # virtio-scsi tests: ISO images made on the host; sg_* in the guest
              socat)  # vsock tests: socat on the host, copied into the guest
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

echo "setup: preparing the guest kernel cache"
.venv/bin/pyvirtio kernel prepare
echo "setup: done (activate with: . .venv/bin/activate)"
