#!/usr/bin/env bash
# Benchmark on real VMs: cloudlet's overlay vs xz / zstd / xdelta3 / zstd --patch-from on the
# same customized VM files, and synthesis vs a plain `virsh restore` (issue 5).
#   bash scripts/bench-vms.sh [--runs N] [--json FILE] [--skip-xz] [--only WORKLOAD]
#   bash scripts/bench-vms.sh --big | --scale | --stream [--runs N] [--json FILE]
#     (through the daemon; --stream: streamed restore vs save file, link-speed series)
# Needs root and libvirtd (scripts/setup-host.sh); builds the fixture guest on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in xz zstd xdelta3 qemu-img virsh; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup-host.sh" >&2; exit 1; }
done
exec cargo run --release --locked -q -p cloudlet-e2e --bin bench-vms -- "$@"
