#!/usr/bin/env bash
# Installs and starts everything cloudlet needs on a Debian 12 host. Idempotent: safe to
# run again; it only starts libvirtd/virtlogd when they are not already answering.
# Each step says why in a comment; docs/architecture.md and the README say what it sets up.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

# debootstrap, fdisk, extlinux and syslinux-common build the Debian test guest
# (tests/fixtures/build-debian.sh). tini reaps QEMU processes where PID 1 does not
# (see the libvirtd start below).
# qemu-utils is named together with qemu-system-x86: the image ships qemu-utils 10.0 from
# backports, and installing qemu-system-x86 7.2 alone removes it.
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  qemu-system-x86 qemu-utils pkg-config libclang-dev clang busybox-static cpio e2fsprogs
  xdelta3 zstd xz-utils curl sqlite3 python3 python3-venv
  debootstrap fdisk extlinux syslinux-common tini)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Pin qemu-utils to the same version as qemu-system-x86 (a newer qemu-utils "Breaks"
  # the stock qemu-system-common), downgrading a preinstalled backport if needed.
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  pinned=()
  for p in "${PACKAGES[@]}"; do
    case "$p" in qemu-utils | qemu-system-x86) pinned+=("$p=$qemu_version") ;; *) pinned+=("$p") ;; esac
  done
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${pinned[@]}" >/dev/null
fi

# OpenAPI tools: the validator of docs/openapi.json (.ci/run's "::: openapi" step) and the
# client generator of tests/openapi/client_check.py (tests/tests/openapi_client.rs). They go
# into a venv at a fixed path, not into a system Python: Debian's python3 refuses pip
# installs (PEP 668, "externally-managed-environment"), --break-system-packages could
# replace packages apt owns, and the python3 first on PATH may be another interpreter
# (pyenv) on some hosts; the venv works whichever python3 creates it, and client_check.py
# finds it there. The stamp names the pins, so a changed pin reinstalls and a rerun is fast.
CI_VENV=/opt/cloudlet-ci-venv
CI_PIP_PINS=('openapi-spec-validator>=0.9,<0.10' 'openapi-python-client>=0.29,<0.30')
if [ "$(cat "$CI_VENV/.cloudlet-pins" 2>/dev/null)" != "${CI_PIP_PINS[*]}" ] ||
  ! "$CI_VENV/bin/python3" -c 'import openapi_spec_validator, openapi_python_client, httpx' \
    2>/dev/null; then
  echo "setup-host: installing ${CI_PIP_PINS[*]} into $CI_VENV"
  "$CI_VENV/bin/python3" -c '' 2>/dev/null || python3 -m venv --clear "$CI_VENV"
  "$CI_VENV/bin/python3" -m pip install -q --disable-pip-version-check --no-input \
    "${CI_PIP_PINS[@]}"
  echo "${CI_PIP_PINS[*]}" >"$CI_VENV/.cloudlet-pins"
fi

if [ "${CLOUDLET_SKIP_LIBVIRTD:-0}" = 1 ]; then
  exit 0
fi

# libvirtd refuses to start its QEMU driver until its default user and folders exist.
mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /run/libvirt /etc/libvirt
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
getent group kvm >/dev/null || groupadd -r kvm

# libvirt probes QEMU's capabilities as libvirt-qemu but with CAP_DAC_OVERRIDE, so the
# probe reaches a root-only /dev/kvm and records KVM, while libvirt's own check of the
# qemu user's access says "no KVM": the cached capabilities never match the host, and
# libvirt rebuilds them (two throw-away QEMUs, ~4 s) twice on every domain start and
# restore; a 1 GiB restore took 8.7 s instead of 0.5-0.9 s. Give /dev/kvm Debian's usual
# access (group kvm read-write, libvirt-qemu in kvm) so that both views agree. Only adds
# access the distribution gives anyway; the domain type stays what the CPU allows.
if [ -c /dev/kvm ]; then
  id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm || usermod -aG kvm libvirt-qemu
  [ "$(stat -c %G /dev/kvm)" = kvm ] || chgrp kvm /dev/kvm
  chmod g+rw /dev/kvm
fi

# QEMU's user is the daemon's business, not the host's: each VM's domain XML names an
# unprivileged uid of its own (a static DAC seclabel, see docs/architecture.md,
# "Confined QEMU"), so libvirt's global qemu.conf stays as the distribution ships it.
# Older versions of this script appended a block that ran every guest of the host as root
# without a security driver; remove exactly that block (marker line + its 5 lines), once.
conf=/etc/libvirt/qemu.conf
if grep -qx '# cloudlet settings: run QEMU as root without a security driver, so guests can open the' "$conf" 2>/dev/null; then
  awk '
    BEGIN {
      n = split("# daemon\047s files wherever its data directory is.|user = \"root\"|group = \"root\"|security_driver = \"none\"|remember_owner = 0", want, "|")
    }
    skip > 0 { held[++h] = $0; if ($0 != want[n - skip + 1]) { for (i = 1; i <= h; i++) print held[i]; skip = 0; h = 0; next } if (--skip == 0) h = 0; next }
    $0 == "# cloudlet settings: run QEMU as root without a security driver, so guests can open the" { held[1] = $0; h = 1; skip = n; next }
    { print }
    END { for (i = 1; i <= h; i++) print held[i] }
  ' "$conf" >"$conf.cloudlet-new"
  if ! cmp -s "$conf" "$conf.cloudlet-new"; then
    cat "$conf.cloudlet-new" >"$conf" # keeps the file's owner and mode
    echo "setup-host: removed the old cloudlet block (root QEMU, no security driver) from $conf"
    restart_libvirtd=1
  fi
  rm -f "$conf.cloudlet-new"
fi

# A running libvirtd reads qemu.conf at start only: after the block above is removed it
# must restart to drop the root default (the daemon's own VMs run confined either way).
if [ "${restart_libvirtd:-0}" = 1 ] && pgrep -x libvirtd >/dev/null; then
  echo "setup-host: restart libvirtd to apply the change (running guests keep running):" \
    "systemctl restart libvirtd, or kill it and run this script again" >&2
fi

# libvirt starts each QEMU daemonized, so a QEMU's parent is the nearest subreaper or
# PID 1, and every stop of a VM (save, destroy, shutdown) waits until that parent reaps
# the exited QEMU. systemd does it at once. Where PID 1 is something else (containers,
# sandboxes: measured here, a sandbox init that reaps every ~2 s), each `virsh save` took
# 1.4-2.3 s instead of 0.4-0.6 s. So libvirtd runs under `tini -s`, a subreaper that
# reaps its orphans at once, unless systemd is PID 1.
pid1=$(cat /proc/1/comm 2>/dev/null || true)
start_libvirtd() {
  if [ "$pid1" = systemd ]; then
    libvirtd -d
  else
    mkdir -p /var/log/libvirt
    setsid -f tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd-stdio.log 2>&1
  fi
}
# A libvirtd started earlier without the subreaper (by an older version of this script)
# is restarted under it while it runs no VM; with VMs running, that is left to the admin.
running=$(pgrep -x libvirtd | head -1 || true)
if [ -n "$running" ] && [ "$pid1" != systemd ] &&
  [ "$(ps -o comm= -p "$(ps -o ppid= -p "$running" | tr -d ' ')" 2>/dev/null)" != tini ]; then
  if [ -z "$(virsh -c qemu:///system list --name 2>/dev/null | tr -d '[:space:]')" ]; then
    echo "setup-host: restarting libvirtd under tini (PID 1 is $pid1, which reaps slowly)"
    kill "$running"
    for _ in $(seq 1 50); do kill -0 "$running" 2>/dev/null || break; sleep 0.1; done
  else
    echo "setup-host: libvirtd runs VMs and not under tini: each VM stop may wait for PID 1" \
      "($pid1) to reap QEMU; stop the VMs and run this script again" >&2
  fi
fi
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || start_libvirtd
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "setup-host: libvirtd does not answer on qemu:///system; see /var/log/libvirt/libvirtd.log" >&2
  exit 1
fi
echo "setup-host: libvirt ready ($(virsh -c qemu:///system version | grep -i 'running hypervisor' || true))"
# Which domain type works here (install.sh writes it into the config; tests use qemu).
echo "setup-host: $(bash "$(dirname "$0")/detect-domain-type.sh" 2>&1 >/dev/null)"
