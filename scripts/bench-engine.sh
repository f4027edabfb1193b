#!/usr/bin/env bash
# The engine benchmark of docs/benchmarks.md: a release build of the `bench-engine` tool
# (tests/src/bin, not part of the daemon), then `bench-engine` on the reference customization (2 GiB disk, 1 GiB RAM) and on a heavy
# one (+256 MiB written, also in the page cache), and a small guest for the memory bound.
# Needs ~10 GB free under /var/tmp. Extra flags go to every run (e.g. --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudlet-e2e --bin bench-engine
bin=target/release/bench-engine
echo "## reference customization, 2 GiB disk, 1 GiB RAM"
"$bin" --disk-mib 2048 --ram-mib 1024 "$@"
echo
echo "## heavy customization (+256 MiB), 1 GiB disk, 1 GiB RAM"
"$bin" --disk-mib 1024 --ram-mib 1024 --extra-mib 256 "$@"
echo
echo "## same heavy customization, 256 MiB RAM, 512 MiB disk (peak memory vs image size)"
"$bin" --disk-mib 512 --ram-mib 256 --extra-mib 256 "$@"
