#!/usr/bin/env bash
# Prints the libvirt domain type cloudletd should use on this host: `kvm` only where
# hardware virtualization works, otherwise `qemu` (TCG emulation, slower but works
# everywhere). The reason goes to stderr. Used by install.sh and setup-host.sh.
#
#   scripts/detect-domain-type.sh [--no-libvirt] [CPUINFO [KVM_DEVICE]]
#
# kvm needs all of:
# - `vmx` (Intel) or `svm` (AMD) among the CPU flags in CPUINFO (default /proc/cpuinfo);
# - KVM_DEVICE (default /dev/kvm) a character device that opens read-write;
# - unless --no-libvirt (or virsh is missing or libvirtd does not answer):
#   `virsh domcapabilities --virttype kvm` succeeds.
# Neither the device nor libvirt alone is enough: on some cloud VMs /dev/kvm exists and
# opens and libvirt reports kvm capabilities, but the CPU has no vmx/svm and a kvm guest
# hangs without printing anything.
set -euo pipefail

use_libvirt=1
if [ "${1:-}" = --no-libvirt ]; then
  use_libvirt=0
  shift
fi
cpuinfo=${1:-/proc/cpuinfo}
device=${2:-/dev/kvm}

qemu() {
  echo "domain type qemu: $*" >&2
  echo qemu
  exit 0
}

[ -r "$cpuinfo" ] || qemu "cannot read $cpuinfo"
grep -qE '^flags[[:space:]]*:(.*[[:space:]])?(vmx|svm)([[:space:]]|$)' "$cpuinfo" ||
  qemu "the CPU offers no hardware virtualization (no vmx/svm flag in $cpuinfo)"
[ -e "$device" ] || qemu "$device does not exist (kvm module not loaded?)"
[ -c "$device" ] || qemu "$device is not a character device"
(exec 3<>"$device") 2>/dev/null || qemu "$device does not open read-write"
if [ "$use_libvirt" = 1 ] && command -v virsh >/dev/null &&
  virsh -c qemu:///system version >/dev/null 2>&1; then
  virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1 ||
    qemu "libvirt refuses kvm (virsh domcapabilities --virttype kvm failed)"
fi
echo "domain type kvm: vmx/svm in $cpuinfo and $device usable" >&2
echo kvm
