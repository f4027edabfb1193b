#!/usr/bin/env bash
# Runs a command next to a private libvirtd with libvirt's default qemu.conf (Debian's:
# QEMU as libvirt-qemu, DAC, dynamic_ownership and remember_owner on), without touching
# the host's libvirtd or its config: everything happens in a private mount namespace,
# where libvirt's run, state, cache and log directories are fresh tmpfs mounts and an
# empty file stands in for /etc/libvirt/qemu.conf. The daemon and the tests reach the
# private one through qemu:///system as usual. Root only.
#
#   bash scripts/private-libvirtd.sh cargo test -p cloudlet-e2e --test confinement
#
# Used to check that confined VMs (docs/architecture.md, "Confined QEMU") work whatever
# the host's qemu.conf says; the host's libvirtd and its VMs keep running meanwhile.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "private-libvirtd.sh must run as root (it mounts and starts libvirtd)" >&2
  exit 1
fi
if [ "${CLOUDLET_PRIVATE_LIBVIRTD:-}" != inside ]; then
  exec env CLOUDLET_PRIVATE_LIBVIRTD=inside unshare -m --propagation private bash "$0" "$@"
fi

work=$(mktemp -d /tmp/cloudlet-private-libvirtd.XXXXXX)
for d in /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /var/log/libvirt; do
  mount -t tmpfs tmpfs "$d"
done
mkdir -p /var/log/libvirt/qemu
: >"$work/qemu.conf"
mount --bind "$work/qemu.conf" /etc/libvirt/qemu.conf

# Stops only the two daemons started here, by their pid files (their VMs first).
cleanup() {
  for vm in $(virsh -c qemu:///system list --name 2>/dev/null); do
    virsh -c qemu:///system destroy "$vm" >/dev/null 2>&1 || true
  done
  for pidfile in "$work/libvirtd.pid" "$work/virtlogd.pid"; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

virtlogd -d -p "$work/virtlogd.pid"
libvirtd -d -p "$work/libvirtd.pid"
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
echo "private-libvirtd: $(virsh -c qemu:///system version | grep -i 'running hypervisor'), default qemu.conf" >&2
"$@"
