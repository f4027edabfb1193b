#!/usr/bin/env bash
# The test suite: unit, store and end-to-end tests (the latter start the real daemon and,
# where they need VMs, real libvirt + QEMU; run scripts/setup-host.sh first, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
