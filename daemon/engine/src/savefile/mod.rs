//! The libvirt + QEMU memory snapshot ("save file", written by `virsh save`): a streaming
//! parser into a canonical, page-indexed form and a writer that turns that form back into a
//! file `virsh restore` accepts.
//!
//! # Layout of a save file
//!
//! ```text
//! offset 0   libvirt header, 92 bytes, u32 little-endian:
//!              magic[16] "LibvirtQemudSave" ("LibvirtQemudPart": libvirt still writing)
//!              version (1 or 2) | data_len | was_running | compressed (0 = raw)
//!              cookieOffset | unused[14] (zero)
//! offset 92  XML area, data_len bytes:
//!              domain XML, NUL | ... | cookie XML at cookieOffset, NUL | zero padding
//! 92+data_len QEMU migration stream, integers big-endian:
//!   preamble   u32 "QEVM" | u32 3
//!              [0x07 CONFIGURATION: u32 len + machine type
//!                 (0x05 subsection: u8 len + name, u32 version, fields)*]
//!   ram START  0x01 | u32 section_id | u8 len + "ram" | u32 instance_id | u32 version_id (4)
//!              u64 total | MEM_SIZE (0x04)
//!              (u8 len + block idstr | u64 block length)*   until the lengths add up
//!              u64 EOS (0x10)
//!              0x7e | u32 section_id                        (footer)
//!   ram PART*  0x02 | u32 section_id | record* | u64 EOS | 0x7e | u32 section_id
//!   ram END    0x03 | u32 section_id | record* | u64 EOS | 0x7e | u32 section_id
//!   records    u64 address_in_block | flags (flags are the low 12 bits)
//!              [u8 len + block idstr, absent when CONTINUE (0x20) is set]
//!              ZERO (0x02): u8 fill byte | PAGE (0x08): 4096 bytes of page data
//!   device     everything after the ram END footer (FULL sections of every device,
//!   state      QEMU's EOF marker, the JSON VM description): kept as one opaque blob
//! ```
//!
//! # Canonical form
//!
//! [`SaveFileLayout`] holds everything but the pages and the device state: the libvirt
//! header fields and XML area, the QEMU preamble verbatim, the ram section's ids and its
//! block list. Pages are addressed by a *global page index*: blocks are concatenated in
//! block-list order, so page `p` (address `p * 4096`) of block `i` has index
//! `sum(pages of blocks 0..i) + p`. Every block length must be a multiple of 4096.
//!
//! [`SaveFileReader`] yields pages one at a time in stream order and then the device state;
//! [`SaveFileWriter`] writes a layout, then pages one at a time, then the device state.
//! Neither ever holds more than one page of RAM in memory. Records may be listed in any
//! order, so a file can also be written in parts side by side: the [`prefix`], then runs
//! of records whose lengths are known in advance ([`records_len`]), each run by a writer
//! made with [`SaveFileWriter::records_at`], the last one ending the file.
//!
//! # Assumptions (what libvirt's plain `virsh save` produces; anything else is refused)
//!
//! * The save image is raw (`compressed == 0`): gzip/xz/… and the `sparse` (mapped-ram)
//!   format are refused with [`SaveFileError::Compressed`].
//! * No migration capability that changes the ram format is on: with postcopy-ram or
//!   x-ignore-shared QEMU writes extra per-block fields in the ram START section, and with
//!   xbzrle, compression or multifd it writes other record kinds. libvirt's save enables
//!   none of them; their records are refused as [`SaveFileError::UnknownPageFlags`], and a
//!   capability listed in the configuration section as
//!   [`SaveFileError::UnsupportedCapability`].
//! * Section footers are present (every machine type since QEMU 2.4 sends them).
//! * The ram section is the first section and only ram sections come before its END;
//!   its START carries only MEM_SIZE, the block list and EOS.
//! * Every page is sent at most once (the VM is paused before the save, so this holds for
//!   `virsh save`); a page sent twice is refused with [`SaveFileError::DuplicatePage`]
//!   rather than silently keeping the later copy. A page never sent reads as zero to QEMU.
//! * The device state is opaque, so a file cut short inside it cannot be detected here;
//!   an empty device state is refused, since QEMU always ends the stream with a marker.

mod layout;
mod reader;
mod wire;
mod writer;

#[cfg(test)]
mod tests;

use std::io;

pub use layout::{RamBlock, SaveFileLayout};
pub use reader::SaveFileReader;
pub use wire::{LIBVIRT_MAGIC, LIBVIRT_PARTIAL_MAGIC};
pub use writer::{prefix, records_len, SaveFileWriter};

/// Size of libvirt's save header (magic, six u32 fields and 14 unused u32), in bytes.
pub const LIBVIRT_HEADER_BYTES: usize = 92;

/// Everything that can go wrong reading or writing a save file or a serialized layout.
#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    /// Reading or writing failed.
    #[error("i/o error on save file")]
    Io(#[source] io::Error),
    /// The input ends before a structure it announces.
    #[error("input ends inside {what}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
    },
    /// The file does not start with libvirt's save magic.
    #[error("not a libvirt save file (bad magic)")]
    BadMagic,
    /// The file starts with libvirt's "partial" magic.
    #[error("save file is incomplete (libvirt was still writing it)")]
    Incomplete,
    /// A format version this code does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which format.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// The image is compressed (or in another non-raw libvirt format).
    #[error("compressed save images are not supported; set save_image_format = \"raw\"")]
    Compressed {
        /// libvirt's format code (1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse).
        format: u32,
    },
    /// The QEMU stream after the XML area does not start with "QEVM".
    #[error("qemu migration stream has bad magic {found:#010x}")]
    BadQemuMagic {
        /// The four bytes found, big-endian.
        found: u32,
    },
    /// The QEMU configuration section says something this code cannot honour.
    #[error("unsupported qemu configuration at offset {offset}: {reason}")]
    BadConfiguration {
        /// What is wrong.
        reason: &'static str,
        /// Byte offset in the file (or in the preamble, for a serialized layout).
        offset: u64,
    },
    /// A configuration subsection this code does not know.
    #[error("unknown qemu configuration subsection {name:?} at offset {offset}")]
    UnknownSubsection {
        /// The subsection's name (lossily decoded).
        name: String,
        /// Byte offset in the file (or in the preamble, for a serialized layout).
        offset: u64,
    },
    /// The stream was saved with a migration capability that changes the ram format.
    #[error("migration capability {name:?} changes the ram format and is not supported")]
    UnsupportedCapability {
        /// The capability's name (lossily decoded).
        name: String,
    },
    /// A section type where it is not allowed (e.g. a device section before the ram END).
    #[error("unexpected section type {type_byte:#04x} at offset {offset}")]
    UnexpectedSection {
        /// The section type byte.
        type_byte: u8,
        /// Byte offset of the type byte.
        offset: u64,
    },
    /// The first section of the stream is not the ram section.
    #[error("first section is {idstr:?} at offset {offset}, expected \"ram\"")]
    NotRamSection {
        /// The section's idstr (lossily decoded).
        idstr: String,
        /// Byte offset of the idstr.
        offset: u64,
    },
    /// A PART or END section of another section than ram.
    #[error("section id {found} at offset {offset}, expected the ram section's {expected}")]
    WrongSectionId {
        /// The ram section's id.
        expected: u32,
        /// The id found.
        found: u32,
        /// Byte offset of the id.
        offset: u64,
    },
    /// The footer (0x7e + section id) after a section is missing or names another section.
    #[error("missing or wrong footer for section {section_id} at offset {offset}")]
    BadFooter {
        /// The section that should be closed.
        section_id: u32,
        /// Byte offset where the footer should be.
        offset: u64,
    },
    /// A ram record with flag bits this code does not know (xbzrle, compression, multifd …).
    #[error("unknown ram record flags {flags:#x} at offset {offset}")]
    UnknownPageFlags {
        /// The record's flag bits (low 12 bits of its header).
        flags: u64,
        /// Byte offset of the record.
        offset: u64,
    },
    /// A ram record of a known kind where it is not allowed (e.g. a page in START, MEM_SIZE
    /// in a PART, flags combined).
    #[error("ram record with flags {flags:#x} not allowed at offset {offset}")]
    UnexpectedRecord {
        /// The record's flag bits.
        flags: u64,
        /// Byte offset of the record.
        offset: u64,
    },
    /// Sizes that must agree do not (block lengths vs MEM_SIZE, …).
    #[error("{what}: expected {expected}, found {found}")]
    SizeMismatch {
        /// Which sizes.
        what: &'static str,
        /// The size announced.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A page record names a block that is not in the block list.
    #[error("page record for unknown ram block {name:?}")]
    BadBlock {
        /// The name in the record (lossily decoded).
        name: String,
    },
    /// The block list names a block twice.
    #[error("ram block {name:?} is listed twice")]
    DuplicateBlock {
        /// The block's name.
        name: String,
    },
    /// A block name in the block list is empty, longer than 255 bytes or not UTF-8.
    #[error("bad ram block name at offset {offset}")]
    BadBlockName {
        /// Byte offset of the name (0 for a layout built in memory).
        offset: u64,
    },
    /// A page record with CONTINUE before any record named a block.
    #[error("ram record at offset {offset} continues a block but none was named before")]
    ContinueWithoutBlock {
        /// Byte offset of the record.
        offset: u64,
    },
    /// A page record's address lies beyond its block.
    #[error(
        "page address {address:#x} at offset {offset} is beyond block {block:?} of {length} bytes"
    )]
    AddressOutOfRange {
        /// The block's name.
        block: String,
        /// The address in the record.
        address: u64,
        /// The block's length.
        length: u64,
        /// Byte offset of the record.
        offset: u64,
    },
    /// A global page index beyond the layout's pages.
    #[error("page {index} is out of range (the layout has {pages} pages)")]
    PageOutOfRange {
        /// The index.
        index: u64,
        /// Pages in the layout.
        pages: u64,
    },
    /// A size over one of the limits in [`crate::limits`].
    #[error("{what} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size (for a stream read with a cap: at least this).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A page was sent twice; refused (a paused VM's save sends each page once).
    #[error("page {index} appears twice in the save file")]
    DuplicatePage {
        /// Global page index.
        index: u64,
    },
    /// A ram block's length is not a multiple of 4096.
    #[error("ram block {name:?} length {length} is not a multiple of 4096")]
    BlockNotPageAligned {
        /// The block's name.
        name: String,
        /// Its length.
        length: u64,
    },
    /// The XML area or a replacement domain XML is unusable.
    #[error("bad domain xml: {reason}")]
    BadXml {
        /// What is wrong.
        reason: &'static str,
    },
    /// The device state is empty (a QEMU stream always ends with at least its EOF marker).
    #[error("save file has no device state after the ram section")]
    EmptyDeviceState,
    /// A serialized layout ([`SaveFileLayout::from_bytes`]) is damaged.
    #[error("bad serialized save file layout: {reason}")]
    BadLayoutBlob {
        /// What is wrong.
        reason: &'static str,
    },
}

impl SaveFileError {
    /// Whether the error is the input's fault (a damaged, unsupported or truncated file)
    /// rather than the system's: false only for I/O errors other than an unexpected EOF.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            SaveFileError::Io(e) => e.kind() == io::ErrorKind::UnexpectedEof,
            _ => true,
        }
    }
}
