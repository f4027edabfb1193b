#!/usr/bin/env bash
# The crate graph enforces the architecture: the engine links neither HTTP nor libvirt nor
# SQL, and the CLI (which runs on edge devices) never links libvirt nor the engine's codec.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { cargo tree -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u; }
if deps cloudlet-engine | grep -qE '^(axum|hyper|sqlx|virt|tokio)$'; then
  echo "cloudlet-engine depends on a forbidden crate:"; deps cloudlet-engine | grep -E '^(axum|hyper|sqlx|virt|tokio)$'; fail=1
fi
if deps cloudlet | grep -qE '^(virt|virt-sys|sqlx)$'; then
  echo "the cloudlet CLI depends on libvirt or sqlx"; fail=1
fi
# The CLI links the engine without its `codec` feature: it only reads overlays.
codec_deps=$(deps cloudlet | grep -E '^(rayon|xdelta3|memmap2)$' || true)
if [ -n "$codec_deps" ]; then
  echo "the cloudlet CLI links the engine's codec crates (build it with default-features = false):"
  echo "$codec_deps"; fail=1
fi
[ "$fail" = 0 ] && echo "crate boundaries ok"
exit "$fail"
