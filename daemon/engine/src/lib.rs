//! The cloudlet overlay engine: everything that turns a base VM and a customized VM into a
//! small VM overlay and back, with no HTTP and no libvirt in sight.
//!
//! The pipeline, as the modules lay it out:
//!
//! ```text
//! base creation : disk image ──┐                         ┌─> hash list (blake3 per 4 KiB)
//!                 save file ── savefile::SaveFileReader ─┴─> page image + memory layout
//! overlay       : customized disk (raw or qcow2) + customized save file
//!                   ─> diff (classify every chunk) ─> delta (xdelta3) ─> segments (zstd)
//!                   ─> format::OverlayWriter ─> one overlay file
//! synthesis     : overlay ─> format::OverlayReader (verifies header + index)
//!                   ─> decode (parallel segments, every chunk hash-checked)
//!                   ─> disk sink (qcow2 backed by the base, or raw) + save file
//! ```
//!
//! The engine is synchronous `std::io` code; the daemon runs it on its blocking pool.
#![warn(missing_docs)]
// Tests build fixtures with casts whose truncation is intended; the library itself is
// still linted without this (clippy checks the non-test build too).
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

// Without the `codec` feature the crate reads and writes the overlay format, save files
// and qcow2 images (all the CLI needs); encoding, decoding and bases need rayon, xdelta3
// and memmap2 and come with it.
#[cfg(feature = "codec")]
pub mod archive;
pub mod atomic;
#[cfg(feature = "codec")]
pub mod base;
mod bitmap;
pub mod chunk;
pub mod cursor;
#[cfg(feature = "codec")]
pub mod decode;
#[cfg(feature = "codec")]
pub mod delta;
#[cfg(feature = "codec")]
pub mod diff;
pub mod disk;
#[cfg(feature = "codec")]
pub mod encode;
pub mod format;
#[cfg(feature = "codec")]
pub mod hashlist;
pub mod hex;
pub mod limits;
pub mod progress;
pub mod qcow2;
// Two attributes, not `all(..)`: clippy allows unwrap only under a plain `cfg(test)`.
#[cfg(test)]
#[cfg(feature = "codec")]
mod roundtrip_tests;
pub mod savefile;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
