#!/usr/bin/env bash
# The engine benchmark of docs/benchmarks.md: a release build of cloudletd, then
# `cloudletd bench` on the reference customization (2 GiB disk, 1 GiB RAM) and on a heavy
# one (+256 MiB written, also in the page cache), and a small guest for the memory bound.
# Needs ~10 GB free under /var/tmp. Extra flags go to every run (e.g. --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudletd
bin=target/release/cloudletd
echo "## reference customization, 2 GiB disk, 1 GiB RAM"
"$bin" bench --disk-mib 2048 --ram-mib 1024 "$@"
echo
echo "## heavy customization (+256 MiB), 1 GiB disk, 1 GiB RAM"
"$bin" bench --disk-mib 1024 --ram-mib 1024 --extra-mib 256 "$@"
echo
echo "## same heavy customization, 256 MiB RAM, 512 MiB disk (peak memory vs image size)"
"$bin" bench --disk-mib 512 --ram-mib 256 --extra-mib 256 "$@"
