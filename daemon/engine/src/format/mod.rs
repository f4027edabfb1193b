//! The overlay file: one self-verifying file holding everything synthesis needs besides the
//! base. Byte layout, versioning and guarantees: `docs/overlay-format.md`.
//!
//! ```text
//! ┌────────────── header, 72 bytes ──────────────┐
//! │ magic "CLDOVRLY" │ major │ minor │ pad       │
//! │ meta_compressed_len │ meta_len │ meta_hash   │  meta_hash = blake3(compressed meta)
//! │ header_check (blake3 of bytes 0..64, 8 B)    │
//! ├────────────── meta (zstd) ───────────────────┤
//! │ base id, disk size, memory layout + device   │
//! │ state, properties, segment table, record     │
//! │ table (target, encoding, blake3 of chunk)    │
//! ├────────────── pad zero bytes ───────────────┤  payload block-aligned (writer)
//! ├────────────── payload ───────────────────────┤
//! │ segment 0 (zstd) │ segment 1 │ ...           │  each listed with offset, size, blake3
//! └──────────────────────────────────────────────┘
//! ```
//!
//! The index (meta) comes first, so a reader knows every chunk's place before the payload
//! arrives: it can apply segments while an upload is still streaming in, decode them in
//! parallel, or fetch one segment on demand.

use crate::chunk::ChunkHash;

mod info;
mod meta;
mod reader;
mod writer;
pub(crate) mod zstd_ctx;

pub use info::OverlayInfo;

pub use meta::{Encoding, EncodingCounts, MemorySnapshot, OverlayMeta, Record, SegmentEntry};
pub use reader::{decompress_segment, BaseShape, OverlayReader, Segment};
pub use writer::OverlayWriter;

/// First 8 bytes of every overlay file.
pub const MAGIC: &[u8; 8] = b"CLDOVRLY";
/// Format major version written. Version 2 turned version 1's reserved, always-zero
/// header field into the padding length, so this reader also reads version 1 files.
pub const FORMAT_MAJOR: u16 = 2;
/// Oldest major version this reader understands.
pub const FORMAT_MAJOR_OLDEST: u16 = 1;
/// Format minor version: newer minors only append fields to the meta, which older readers
/// ignore.
pub const FORMAT_MINOR: u16 = 0;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 72;
/// Most zero bytes allowed between metadata and payload (the writer pads to a file-system
/// block so that it can put the payload in place first).
pub const MAX_PAYLOAD_PAD: u64 = 65535;
/// A segment is closed once its payload reaches this size (Elijah found ~1 MiB segments the
/// best trade between compression ratio and random access).
pub const SEGMENT_TARGET_BYTES: usize = 1 << 20;
/// ... or once it carries this many records (zero and reference records have no payload;
/// the cap bounds what a decoder holds per segment: 4 MiB of rebuilt chunks).
pub const SEGMENT_MAX_RECORDS: usize = 1024;

/// Errors reading or writing an overlay file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("i/o error on overlay")]
    Io(#[source] std::io::Error),
    /// The file ends before the structure it announces.
    #[error("overlay is truncated ({what})")]
    Truncated {
        /// The part that is cut short.
        what: &'static str,
    },
    /// Not an overlay file at all.
    #[error("not a cloudlet overlay (bad magic)")]
    BadMagic,
    /// A format version this reader does not understand.
    #[error("overlay format version {major}.{minor} is not supported (this build reads {FORMAT_MAJOR_OLDEST}.x to {FORMAT_MAJOR}.x)")]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
    },
    /// The header's own checksum does not match.
    #[error("overlay header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    /// The metadata does not match its hash.
    #[error("overlay metadata is corrupt (hash mismatch)")]
    MetaHash,
    /// A payload segment does not match its hash.
    #[error("overlay segment {segment} is corrupt (hash mismatch)")]
    SegmentHash {
        /// Segment number.
        segment: usize,
    },
    /// A segment does not decompress to its announced size.
    #[error("overlay segment {segment} is corrupt (does not decompress to {expected} bytes)")]
    SegmentSize {
        /// Segment number.
        segment: usize,
        /// Announced size.
        expected: u64,
    },
    /// The header declares more metadata than the overlay's layout can need (checked
    /// before that much is decompressed).
    #[error(
        "overlay metadata of {declared} bytes is larger than its layout allows ({bound} bytes)"
    )]
    MetaTooLarge {
        /// Decompressed length the header declares.
        declared: u64,
        /// Most the layout (or the absolute cap) allows.
        bound: u64,
    },
    /// A count in the metadata exceeds what the layout allows (checked before anything is
    /// sized by it).
    #[error("overlay metadata holds {count} {what}, more than the {bound} its layout allows")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// The count in the file.
        count: u64,
        /// Most allowed.
        bound: u64,
    },
    /// The overlay was made for another base (found from the first metadata bytes, before
    /// the rest is decompressed).
    #[error("overlay was made for another base")]
    WrongBase {
        /// Base id the overlay names.
        found: ChunkHash,
    },
    /// The overlay names the base but not its sizes (found from the first metadata
    /// bytes, before anything is sized by the overlay's layout).
    #[error("overlay does not fit its base: {found} {what}, the base has {expected}")]
    WrongShape {
        /// What differs ("disk bytes", "memory pages").
        what: &'static str,
        /// The overlay's figure.
        found: u64,
        /// The base's.
        expected: u64,
    },
    /// The metadata is inconsistent.
    #[error("overlay metadata is invalid: {0}")]
    Invalid(String),
    /// Bytes follow the last segment.
    #[error("overlay has trailing data after its last segment")]
    TrailingData,
    /// The memory layout in the metadata is invalid.
    #[error("overlay memory layout is invalid")]
    Layout(#[source] crate::savefile::SaveFileError),
}

impl FormatError {
    /// Whether the error means the overlay itself is bad (as opposed to a local I/O failure).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            FormatError::Io(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
            _ => true,
        }
    }

    pub(crate) fn read(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FormatError::Truncated { what }
            } else {
                FormatError::Io(e)
            }
        }
    }
}
