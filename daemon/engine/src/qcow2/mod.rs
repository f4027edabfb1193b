//! qcow2 images: reading the top layer of a customized disk, and writing a synthesized disk
//! as a qcow2 overlay on top of the raw base disk.
//!
//! # Reading ([`Qcow2Image`])
//!
//! Supported: format versions 2 and 3, cluster sizes from 512 B to 2 MiB, standard data
//! clusters, zero clusters (plain and preallocated, version 3), the backing file name and the
//! backing format header extension. The dirty bit (lazy refcounts) is tolerated because the
//! reader never looks at refcounts; the compression-type bit is tolerated because compressed
//! clusters are refused when met anyway. Internal snapshots are ignored: only the active L1
//! table is read. The backing chain is never followed: the reader reports what the image itself
//! defines ([`Qcow2Image::top_layer_extents`]) and reads exactly those ranges.
//!
//! Refused: encryption, compressed clusters, external data files, extended L2 entries
//! (subclusters), unknown incompatible feature bits, images flagged corrupt, clusters above
//! 2 MiB and L1 tables above 32 MiB (QEMU's own limits). Every offset read from the file is
//! checked against the file size before use: the L1 table and every L2 table it references
//! must lie inside the file (checked at open), a data cluster must start inside the file. Like
//! QEMU, bytes of a data cluster that extend past the end of the file read as zeros.
//!
//! Memory: the L1 table is kept (at most 32 MiB, one `u64` per entry); L2 tables are read one
//! at a time, and [`Qcow2Image::read_at`] reads single L2 entries with positional reads, so the
//! image can be shared between threads.
//!
//! # Writing ([`Qcow2Writer`])
//!
//! The writer produces a qcow2 version 3 image with 4 KiB clusters (one cluster per chunk, so
//! no data is ever copied from the base), 16-bit refcounts, no feature bits, header length
//! 104, and the backing file name and format in the header. Data clusters are appended in the
//! order chunks arrive; the writer remembers only guest chunk index → host cluster (a
//! `BTreeMap<u64, u32>` entry per written chunk, never the data). All metadata is written by
//! [`Qcow2Writer::finish`]:
//!
//! ```text
//! cluster 0            header (104 bytes), backing format extension, end-of-extensions
//!                      marker, backing file name, zero padding
//! clusters 1 ..= D     data clusters, one per distinct chunk written, in arrival order
//! next L2 clusters     one L2 table per 2 MiB guest region that has writes, in guest order
//! next L1 clusters     the L1 table, ceil(virtual_size / 2 MiB) entries (none, and offset
//!                      0, for a zero-sized disk)
//! next RT clusters     the refcount table (512 entries per cluster)
//! next RB clusters     refcount blocks (2048 16-bit entries each) covering every cluster of
//!                      the file, including themselves; every used cluster has refcount 1
//! ```
//!
//! L1 and L2 entries carry the "copied" flag (refcount exactly one). The file length is
//! exactly the number of clusters above times 4096. Metadata is flushed to disk before the
//! header is written, and cluster 0 stays all zeros until then, so an unfinished file is never
//! mistaken for a valid image.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub use reader::Qcow2Image;
pub use writer::Qcow2Writer;

use std::io;

/// `QFI\xfb`, the first four bytes of every qcow2 image.
const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Header length of a version 2 image (fixed).
const V2_HEADER_LEN: u32 = 72;
/// Minimum header length of a version 3 image (without the compression type field).
const V3_HEADER_LEN: u32 = 104;
/// Smallest cluster size the format allows: 512 bytes.
const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size QEMU supports: 2 MiB.
const MAX_CLUSTER_BITS: u32 = 21;
/// Bits 9..=55 of an L1 or L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: the referenced cluster has refcount exactly one.
const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of L2 entries (version 3): the cluster reads as zeros.
const OFLAG_ZERO: u64 = 1;
/// Header extension type: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension type: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Longest backing file name the format allows.
const MAX_BACKING_NAME_BYTES: usize = 1023;
/// QEMU's limit on the size of the active L1 table.
const MAX_L1_BYTES: u64 = 32 << 20;

/// Incompatible feature bit 0: refcounts may be stale (harmless for reading the mapping).
const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is flagged corrupt.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: non-zlib compression type (only matters for compressed
/// clusters, which are refused anyway).
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Every incompatible feature bit this module knows.
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

/// Errors from reading or writing qcow2 images.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Reading or writing the file failed.
    #[error("qcow2 file i/o failed")]
    Io(#[from] io::Error),
    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image")]
    NotQcow2,
    /// The header names a format version other than 2 or 3.
    #[error("unsupported qcow2 version {0}")]
    UnsupportedVersion(u32),
    /// The image uses a feature this module does not implement.
    #[error("unsupported qcow2 feature: {feature}")]
    Unsupported {
        /// The feature, e.g. "encryption" or "compressed clusters".
        feature: &'static str,
    },
    /// The image's metadata is inconsistent or points outside the file.
    #[error("corrupt qcow2 image: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// A read touched a guest range the image does not define itself (it would come from the
    /// backing file, which this reader does not follow).
    #[error("guest offset {offset} is not allocated in the qcow2 top layer")]
    Unallocated {
        /// First unallocated guest offset of the read.
        offset: u64,
    },
    /// A guest range lies (partly) beyond the virtual disk.
    #[error(
        "guest range of {length} bytes at offset {offset} exceeds the virtual size {virtual_size}"
    )]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        length: u64,
        /// The image's virtual size.
        virtual_size: u64,
    },
    /// An argument given to the writer is unusable (name too long, size unsupported, ...).
    #[error("invalid qcow2 writer argument: {what}")]
    InvalidArgument {
        /// What is wrong.
        what: String,
    },
}

impl Qcow2Error {
    /// True when the error is caused by the input — the image's content, or an argument the
    /// caller passed — rather than by the system: everything except [`Qcow2Error::Io`].
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, Qcow2Error::Io(_))
    }

    fn corrupt(what: impl Into<String>) -> Self {
        Qcow2Error::Corrupt { what: what.into() }
    }

    fn invalid_argument(what: impl Into<String>) -> Self {
        Qcow2Error::InvalidArgument { what: what.into() }
    }
}

/// What a guest range defined by the image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data stored in the image file.
    Data,
    /// Marked as reading zeros (e.g. after a guest discard): modified, to zeros.
    Zero,
}

/// A guest range defined by the image itself (not by its backing file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset of the first byte.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub length: u64,
    /// What the range holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// Guest offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// Appends `extent` to a sorted list, merging it into the last extent when they touch and
/// have the same kind.
fn push_extent(extents: &mut Vec<Extent>, extent: Extent) {
    if let Some(last) = extents.last_mut() {
        if last.kind == extent.kind && last.end() == extent.offset {
            last.length += extent.length;
            return;
        }
    }
    extents.push(extent);
}

/// The big-endian `u64` entries of a table (a trailing partial entry is ignored).
fn table_entries(buf: &[u8]) -> impl Iterator<Item = u64> + '_ {
    buf.chunks_exact(8).map(|entry| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(entry);
        u64::from_be_bytes(bytes)
    })
}

/// `value` as a `usize`, or a corruption error naming `what`.
fn to_usize(value: u64, what: &str) -> Result<usize, Qcow2Error> {
    usize::try_from(value).map_err(|_| Qcow2Error::corrupt(format!("{what} too large")))
}
