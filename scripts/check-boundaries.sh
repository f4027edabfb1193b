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
# Test and benchmark helpers (synthetic VMs) stay out of the production daemon.
if cargo tree -p cloudletd -e features,no-dev --prefix none | grep -q 'cloudlet-engine feature "testkit"'; then
  echo "cloudletd links the engine's testkit (a test-only feature)"; fail=1
fi
# The API contract crate stays runtime-free: the CLI and any Rust client link it.
if deps cloudlet-api | grep -qE '^(tokio|axum|hyper|sqlx|virt|reqwest)$'; then
  echo "cloudlet-api depends on a runtime or transport crate:"; deps cloudlet-api | grep -E '^(tokio|axum|hyper|sqlx|virt|reqwest)$'; fail=1
fi
[ "$fail" = 0 ] && echo "crate boundaries ok"
exit "$fail"
