//! Reading an overlay: header and metadata are verified before anything is returned, so
//! an unverified index can never reach the decoder; segments are verified as they arrive.

use std::io::Read;

use crate::chunk::ChunkHash;
use crate::cursor::Cursor;
use crate::limits::{
    MAX_OVERLAY_META_BYTES, MAX_OVERLAY_META_DECOMPRESSED_BYTES, MAX_SEGMENT_BYTES,
};

use super::meta::{meta_prefix, MetaPrefix, OverlayMeta, SegmentEntry};
use super::{FormatError, FORMAT_MAJOR, FORMAT_MAJOR_OLDEST, HEADER_BYTES, MAGIC, MAX_PAYLOAD_PAD};

/// One verified, still compressed payload segment.
#[derive(Debug)]
pub struct Segment {
    /// Its number in the segment table.
    pub index: usize,
    /// Compressed bytes (hash already checked).
    pub compressed: Vec<u8>,
}

/// An overlay whose header and metadata have been read and verified, positioned at the
/// start of its payload.
#[derive(Debug)]
pub struct OverlayReader<R> {
    reader: R,
    meta: OverlayMeta,
    next_segment: usize,
    header_and_meta_len: u64,
    version: (u16, u16),
}

pub(crate) struct Header {
    pub major: u16,
    pub minor: u16,
    pub meta_compressed_len: u64,
    pub meta_len: u64,
    pub meta_hash: ChunkHash,
    /// Zero bytes between metadata and payload.
    pub pad: u64,
}

pub(crate) fn header_check(bytes: &[u8]) -> [u8; 8] {
    let mut check = [0u8; 8];
    check.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    check
}

fn parse_header(h: &[u8; HEADER_BYTES]) -> Result<Header, FormatError> {
    if &h[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if h[64..72] != header_check(&h[..64]) {
        return Err(FormatError::HeaderChecksum);
    }
    // The fields follow the magic in this order; the array is long enough for all of them.
    let mut c = Cursor::at(h, MAGIC.len());
    let short = |_| FormatError::Invalid("header ends early".into());
    let (major, minor) = (c.u16_le().map_err(short)?, c.u16_le().map_err(short)?);
    if !(FORMAT_MAJOR_OLDEST..=FORMAT_MAJOR).contains(&major) {
        return Err(FormatError::UnsupportedVersion { major, minor });
    }
    // Version 1 reserved these bytes as zero flags, which reads as no padding.
    let pad = u64::from(c.u32_le().map_err(short)?);
    if pad > MAX_PAYLOAD_PAD {
        return Err(FormatError::Invalid(format!(
            "payload padding of {pad} bytes is larger than allowed"
        )));
    }
    Ok(Header {
        major,
        minor,
        meta_compressed_len: c.u64_le().map_err(short)?,
        meta_len: c.u64_le().map_err(short)?,
        meta_hash: c.array().map_err(short)?,
        pad,
    })
}

/// Metadata is decompressed this much at a time: the buffer grows only by bytes that
/// actually came out of the decompressor.
const META_READ_STEP: usize = 64 << 10;

/// What an overlay must agree with to apply to a base. The reader checks it from the first
/// bytes of the metadata, before the overlay's own layout sizes anything (an overlay
/// claiming an 8 TiB disk would otherwise get a 256 MiB chunk bitmap before any check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseShape {
    /// The base's identity.
    pub id: ChunkHash,
    /// Its disk size in bytes.
    pub disk_size: u64,
    /// Its memory pages (0 for a disk-only base).
    pub memory_pages: u64,
}

impl BaseShape {
    /// Refuses a metadata prefix whose sizes differ from the base's. A disk-only overlay
    /// applies to a base with memory (the VM boots from the disk).
    fn check(&self, prefix: &MetaPrefix) -> Result<(), FormatError> {
        let wrong = |what, found, expected| FormatError::WrongShape {
            what,
            found,
            expected,
        };
        if prefix.disk_size != self.disk_size {
            return Err(wrong("disk bytes", prefix.disk_size, self.disk_size));
        }
        match prefix.memory_pages {
            Some(pages) if pages != self.memory_pages => {
                Err(wrong("memory pages", pages, self.memory_pages))
            }
            _ => Ok(()),
        }
    }
}

/// Decompresses verified metadata that the header says is `meta_len` bytes long. As soon
/// as its first bytes fix the layout, a `meta_len` beyond what that layout can need is
/// refused; output beyond `meta_len` is refused as it appears. With `base`, an overlay
/// for another base is refused once its first 32 bytes are out, and one whose sizes are
/// not the base's once its layout is.
fn decompress_meta(
    compressed: &[u8],
    meta_len: u64,
    base: Option<&BaseShape>,
) -> Result<Vec<u8>, FormatError> {
    let undecodable = |_| FormatError::Invalid("metadata does not decompress".into());
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed).map_err(undecodable)?;
    // One byte past the declared length is enough to know the header lied.
    let mut decoder = (&mut decoder).take(meta_len.saturating_add(1));
    let mut bytes = Vec::new();
    let mut step = vec![0u8; META_READ_STEP];
    let mut bound_checked = false;
    let mut base_checked = base.is_none();
    loop {
        let n = match decoder.read(&mut step) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(undecodable(e)),
        };
        bytes.extend_from_slice(step.get(..n).unwrap_or_default());
        if bytes.len() as u64 > meta_len {
            return Err(FormatError::Invalid(
                "metadata decompresses to more than its declared length".into(),
            ));
        }
        if !base_checked {
            if let (Some(base), Some(found)) = (base, bytes.first_chunk::<32>()) {
                if found != &base.id {
                    return Err(FormatError::WrongBase { found: *found });
                }
                base_checked = true;
            }
        }
        if !bound_checked {
            if let Some(prefix) = meta_prefix(&bytes)? {
                if let Some(base) = base {
                    base.check(&prefix)?;
                }
                if meta_len > prefix.len_bound {
                    return Err(FormatError::MetaTooLarge {
                        declared: meta_len,
                        bound: prefix.len_bound,
                    });
                }
                bound_checked = true;
            }
        }
    }
    if bytes.len() as u64 != meta_len {
        return Err(FormatError::Invalid("metadata size mismatch".into()));
    }
    Ok(bytes)
}

impl<R: Read> OverlayReader<R> {
    /// Reads and verifies the header and metadata.
    pub fn open(reader: R) -> Result<Self, FormatError> {
        Self::open_inner(reader, None)
    }

    /// Like [`OverlayReader::open`], but refuses an overlay made for another base than
    /// `base` ([`FormatError::WrongBase`]) as soon as the first 32 bytes of its
    /// (verified) metadata are decompressed, before the rest is, and one whose disk or
    /// memory size differs from the base's ([`FormatError::WrongShape`]) as soon as its
    /// layout is, before anything is sized by that layout. The base id is the first
    /// field of the compressed metadata, not of the header, so this is the earliest
    /// point it can be known.
    pub fn open_for_base(reader: R, base: &BaseShape) -> Result<Self, FormatError> {
        Self::open_inner(reader, Some(base))
    }

    fn open_inner(mut reader: R, base: Option<&BaseShape>) -> Result<Self, FormatError> {
        let mut h = [0u8; HEADER_BYTES];
        reader
            .read_exact(&mut h)
            .map_err(FormatError::read("header"))?;
        let header = parse_header(&h)?;
        if header.meta_compressed_len > MAX_OVERLAY_META_BYTES {
            return Err(FormatError::Invalid("metadata larger than allowed".into()));
        }
        // The declared length never sizes a buffer; this cap and the layout's bound
        // (in decompress_meta) keep what decompression may produce in proportion.
        if header.meta_len > MAX_OVERLAY_META_DECOMPRESSED_BYTES {
            return Err(FormatError::MetaTooLarge {
                declared: header.meta_len,
                bound: MAX_OVERLAY_META_DECOMPRESSED_BYTES,
            });
        }
        // Grows as bytes arrive, so a lying length cannot allocate before data backs it.
        let mut compressed = Vec::new();
        (&mut reader)
            .take(header.meta_compressed_len)
            .read_to_end(&mut compressed)
            .map_err(FormatError::Io)?;
        if compressed.len() as u64 != header.meta_compressed_len {
            return Err(FormatError::Truncated { what: "metadata" });
        }
        if *blake3::hash(&compressed).as_bytes() != header.meta_hash {
            return Err(FormatError::MetaHash);
        }
        let bytes = decompress_meta(&compressed, header.meta_len, base)?;
        let meta = OverlayMeta::from_bytes(&bytes, header.major)?;
        // The padding is not hashed: it must be zero, so nothing can hide in it.
        // header.pad ≤ MAX_PAYLOAD_PAD (checked in parse_header).
        let mut pad = vec![0u8; usize::try_from(header.pad).unwrap_or(0)];
        reader
            .read_exact(&mut pad)
            .map_err(FormatError::read("padding"))?;
        if pad.iter().any(|&b| b != 0) {
            return Err(FormatError::Invalid("payload padding is not zero".into()));
        }
        Ok(Self {
            reader,
            meta,
            next_segment: 0,
            header_and_meta_len: HEADER_BYTES as u64 + header.meta_compressed_len + header.pad,
            version: (header.major, header.minor),
        })
    }

    /// The file's format version, as "major.minor".
    pub fn format_version(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// The verified metadata.
    pub fn meta(&self) -> &OverlayMeta {
        &self.meta
    }

    /// Bytes of the whole file (header + metadata + payload).
    pub fn file_len(&self) -> u64 {
        self.header_and_meta_len + self.meta.payload_len()
    }

    /// Reads and verifies the next segment; `None` after the last one.
    pub fn next_segment(&mut self) -> Result<Option<Segment>, FormatError> {
        let index = self.next_segment;
        let Some(entry) = self.meta.segments.get(index) else {
            return Ok(None);
        };
        if u64::from(entry.compressed_len) > MAX_SEGMENT_BYTES
            || u64::from(entry.uncompressed_len) > MAX_SEGMENT_BYTES
        {
            return Err(FormatError::Invalid(format!(
                "segment {index} larger than allowed"
            )));
        }
        let mut compressed = vec![0u8; entry.compressed_len as usize];
        self.reader
            .read_exact(&mut compressed)
            .map_err(FormatError::read("payload"))?;
        if *blake3::hash(&compressed).as_bytes() != entry.hash {
            return Err(FormatError::SegmentHash { segment: index });
        }
        self.next_segment += 1;
        Ok(Some(Segment { index, compressed }))
    }

    /// Checks nothing follows the last segment and returns the inner reader.
    pub fn finish(mut self) -> Result<R, FormatError> {
        if self.next_segment < self.meta.segments.len() {
            return Err(FormatError::Invalid(
                "finished before the last segment".into(),
            ));
        }
        let mut probe = [0u8; 1];
        loop {
            match self.reader.read(&mut probe) {
                Ok(0) => return Ok(self.reader),
                Ok(_) => return Err(FormatError::TrailingData),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::Io(e)),
            }
        }
    }
}

/// Decompresses a verified segment and checks its size.
pub fn decompress_segment(entry: &SegmentEntry, segment: &Segment) -> Result<Vec<u8>, FormatError> {
    let expected = entry.uncompressed_len as usize;
    if expected == 0 {
        return if segment.compressed.is_empty() {
            Ok(Vec::new())
        } else {
            Err(FormatError::SegmentSize {
                segment: segment.index,
                expected: 0,
            })
        };
    }
    match super::zstd_ctx::decompress(&segment.compressed, expected) {
        Ok(bytes) if bytes.len() == expected => Ok(bytes),
        _ => Err(FormatError::SegmentSize {
            segment: segment.index,
            expected: expected as u64,
        }),
    }
}
