//! [`SaveFileLayout`]: everything in a save file but the pages and the device state, its
//! validation, the XML area rewrite and its own serialization.
//!
//! Serialized layout (little-endian, every length checked against [`crate::limits`]):
//!
//! ```text
//! magic "CLDSAVL1" (8) | libvirt_version u32 | was_running u32 | cookie_offset u32
//! ram_section_id u32 | ram_instance_id u32 | ram_version_id u32
//! xml_area_len u32 | xml_area | qemu_preamble_len u32 | qemu_preamble
//! block_count u32 | (name_len u32 | name | length u64) * block_count
//! ```

use std::collections::HashSet;
use std::io::Read;

use super::wire::{
    self, Input, LIBVIRT_MAX_VERSION, MAX_IDSTR_BYTES, RAM_VERSION, SECTION_START,
    XML_PADDING_BYTES,
};
use super::SaveFileError;
use crate::chunk::CHUNK_SIZE_U64;
use crate::cursor;
use crate::limits::{MAX_QEMU_CONFIG_BYTES, MAX_RAM_BLOCKS, MAX_RAM_BYTES, MAX_SAVE_XML_BYTES};

const LAYOUT_MAGIC: &[u8; 8] = b"CLDSAVL1";

/// One RAM block of the guest, as listed in the ram START section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    /// QEMU's idstr for the block (`pc.ram`, `pc.bios`, `vga.vram`, …).
    pub name: String,
    /// Length in bytes, a multiple of 4096.
    pub length: u64,
}

/// A save file without its pages and device state: what is needed to write one back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveFileLayout {
    /// libvirt header version (1 or 2).
    pub libvirt_version: u32,
    /// libvirt's `was_running` flag: whether the domain runs after restore by default.
    pub was_running: u32,
    /// The `data_len` bytes after the 92-byte header: domain XML (NUL-terminated), the
    /// cookie at `cookie_offset`, zero padding.
    pub xml_area: Vec<u8>,
    /// Offset of the cookie XML in `xml_area` (0: no cookie).
    pub cookie_offset: u32,
    /// QEVM magic + version and the configuration section, verbatim, up to the first
    /// section.
    pub qemu_preamble: Vec<u8>,
    /// The ram section's section id.
    pub ram_section_id: u32,
    /// The ram section's instance id.
    pub ram_instance_id: u32,
    /// The ram section's version id (4).
    pub ram_version_id: u32,
    /// RAM blocks in stream order.
    pub blocks: Vec<RamBlock>,
}

impl SaveFileLayout {
    /// The domain XML: the XML area's text up to its first NUL (before the cookie).
    pub fn domain_xml(&self) -> Result<&str, SaveFileError> {
        let region = if self.cookie_offset == 0 {
            self.xml_area.as_slice()
        } else {
            usize::try_from(self.cookie_offset)
                .ok()
                .and_then(|end| self.xml_area.get(..end))
                .ok_or(SaveFileError::BadXml {
                    reason: "cookie offset lies outside the xml area",
                })?
        };
        let end = region
            .iter()
            .position(|&b| b == 0)
            .ok_or(SaveFileError::BadXml {
                reason: "domain xml is not nul-terminated",
            })?;
        let text = region.get(..end).unwrap_or_default();
        std::str::from_utf8(text).map_err(|_| SaveFileError::BadXml {
            reason: "domain xml is not utf-8",
        })
    }

    /// The cookie XML libvirt stores after the domain XML (without its NUL), if any.
    pub fn cookie(&self) -> Option<&[u8]> {
        if self.cookie_offset == 0 {
            return None;
        }
        let tail = self
            .xml_area
            .get(usize::try_from(self.cookie_offset).ok()?..)?;
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        tail.get(..end)
    }

    /// Total pages over all blocks.
    pub fn page_count(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.length / CHUNK_SIZE_U64)
            .fold(0, u64::saturating_add)
    }

    /// Total guest RAM in bytes (the MEM_SIZE of the ram section).
    pub fn ram_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.length)
            .fold(0, u64::saturating_add)
    }

    /// The block holding a global page index and the page's byte address in that block;
    /// `None` past the last page.
    pub fn locate(&self, global_page: u64) -> Option<(usize, u64)> {
        let mut rest = global_page;
        for (i, block) in self.blocks.iter().enumerate() {
            let pages = block.length / CHUNK_SIZE_U64;
            if rest < pages {
                return Some((i, rest * CHUNK_SIZE_U64));
            }
            rest -= pages;
        }
        None
    }

    /// Same RAM block list (names and lengths, in order).
    pub fn same_ram_layout(&self, other: &Self) -> bool {
        self.blocks == other.blocks
    }

    /// Whether a QEMU that read `self`'s stream up to its first page record reads
    /// `other`'s the same way: same libvirt flags and cookie, QEMU preamble and ram
    /// section (the domain XML, read by libvirt before QEMU starts, is the caller's to
    /// compare).
    pub fn same_stream_start(&self, other: &Self) -> bool {
        self.was_running == other.was_running
            && self.cookie() == other.cookie()
            && self.qemu_preamble == other.qemu_preamble
            && (
                self.ram_section_id,
                self.ram_instance_id,
                self.ram_version_id,
            ) == (
                other.ram_section_id,
                other.ram_instance_id,
                other.ram_version_id,
            )
            && self.same_ram_layout(other)
    }

    /// Serializes the layout (format in the module doc). A layout that
    /// [`SaveFileLayout::from_bytes`] would refuse serializes to a blob it refuses.
    pub fn to_bytes(&self) -> Vec<u8> {
        let names: usize = self.blocks.iter().map(|b| b.name.len() + 12).sum();
        let mut out =
            Vec::with_capacity(44 + self.xml_area.len() + self.qemu_preamble.len() + names);
        out.extend_from_slice(LAYOUT_MAGIC);
        for v in [
            self.libvirt_version,
            self.was_running,
            self.cookie_offset,
            self.ram_section_id,
            self.ram_instance_id,
            self.ram_version_id,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(&mut out, &self.xml_area);
        put_bytes(&mut out, &self.qemu_preamble);
        out.extend_from_slice(&len_u32(self.blocks.len()).to_le_bytes());
        for block in &self.blocks {
            put_bytes(&mut out, block.name.as_bytes());
            out.extend_from_slice(&block.length.to_le_bytes());
        }
        out
    }

    /// Parses a blob written by [`SaveFileLayout::to_bytes`] and validates it as the
    /// reader validates a save file. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SaveFileError> {
        let mut cur = Cursor(cursor::Cursor::new(bytes));
        if cur.take(LAYOUT_MAGIC.len(), "layout magic")? != LAYOUT_MAGIC {
            return Err(SaveFileError::BadLayoutBlob {
                reason: "bad magic",
            });
        }
        let libvirt_version = cur.le32("layout header")?;
        let was_running = cur.le32("layout header")?;
        let cookie_offset = cur.le32("layout header")?;
        let ram_section_id = cur.le32("layout header")?;
        let ram_instance_id = cur.le32("layout header")?;
        let ram_version_id = cur.le32("layout header")?;
        let xml_area = cur.sized("xml area", MAX_SAVE_XML_BYTES)?.to_vec();
        let qemu_preamble = cur.sized("qemu preamble", MAX_QEMU_CONFIG_BYTES)?.to_vec();
        let count = cur.le32("block count")?;
        if usize::try_from(count).map_or(true, |c| c > MAX_RAM_BLOCKS) {
            return Err(SaveFileError::TooLarge {
                what: "ram block count",
                size: u64::from(count),
                limit: MAX_RAM_BLOCKS as u64,
            });
        }
        let mut blocks = Vec::new();
        for _ in 0..count {
            let name_bytes = cur.sized("block name", MAX_IDSTR_BYTES as u64)?;
            let name = std::str::from_utf8(name_bytes)
                .map_err(|_| SaveFileError::BadBlockName { offset: 0 })?
                .to_owned();
            let length = cur.le64("block length")?;
            blocks.push(RamBlock { name, length });
        }
        if cur.0.remaining() != 0 {
            return Err(SaveFileError::BadLayoutBlob {
                reason: "trailing bytes",
            });
        }
        let layout = SaveFileLayout {
            libvirt_version,
            was_running,
            xml_area,
            cookie_offset,
            qemu_preamble,
            ram_section_id,
            ram_instance_id,
            ram_version_id,
            blocks,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Checks everything the reader checks in a save file (versions, XML area, preamble,
    /// block names, alignment and limits): a layout that passes can be written by
    /// [`SaveFileWriter`](super::SaveFileWriter) and read back.
    pub fn validate(&self) -> Result<(), SaveFileError> {
        check_libvirt_version(self.libvirt_version)?;
        check_xml_area(self.xml_area.len() as u64, self.cookie_offset)?;
        self.domain_xml()?;
        validate_preamble(&self.qemu_preamble)?;
        if self.ram_version_id != RAM_VERSION {
            return Err(SaveFileError::UnsupportedVersion {
                what: "ram section",
                version: self.ram_version_id,
            });
        }
        if self.blocks.len() > MAX_RAM_BLOCKS {
            return Err(SaveFileError::TooLarge {
                what: "ram block count",
                size: self.blocks.len() as u64,
                limit: MAX_RAM_BLOCKS as u64,
            });
        }
        let mut names = HashSet::new();
        let mut total: u64 = 0;
        for block in &self.blocks {
            if block.name.is_empty() || block.name.len() > MAX_IDSTR_BYTES {
                return Err(SaveFileError::BadBlockName { offset: 0 });
            }
            check_block(&block.name, block.length)?;
            if !names.insert(block.name.as_str()) {
                return Err(SaveFileError::DuplicateBlock {
                    name: block.name.clone(),
                });
            }
            total = total.saturating_add(block.length);
        }
        check_ram_total(total)
    }

    /// The XML area and cookie offset to write when `new_xml` replaces the domain XML.
    ///
    /// The cookie stays where it is when the new XML (and its NUL) fits before it;
    /// otherwise it moves to right after the new XML, as libvirt does, and `data_len`
    /// grows if needed, to the new contents plus libvirt's 64 KiB of zero padding.
    pub(super) fn rebuilt_xml_area(&self, new_xml: &str) -> Result<(Vec<u8>, u32), SaveFileError> {
        if new_xml.as_bytes().contains(&0) {
            return Err(SaveFileError::BadXml {
                reason: "replacement xml contains a nul byte",
            });
        }
        let xml_len = new_xml.len() + 1;
        let old_len = self.xml_area.len();
        let cookie_at = usize::try_from(self.cookie_offset).map_err(|_| SaveFileError::BadXml {
            reason: "cookie offset lies outside the xml area",
        })?;
        let cookie: Option<&[u8]> = if self.cookie_offset == 0 {
            None
        } else {
            let tail = self
                .xml_area
                .get(cookie_at..)
                .ok_or(SaveFileError::BadXml {
                    reason: "cookie offset lies outside the xml area",
                })?;
            // The cookie with its NUL (all of the tail if it has none).
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .map_or(tail.len(), |p| p + 1);
            tail.get(..end)
        };
        let fits_in_place = match cookie {
            Some(_) => xml_len <= cookie_at,
            None => xml_len <= old_len,
        };
        let (area, cookie_offset) = if fits_in_place {
            let mut area = self.xml_area.clone();
            let xml_end = if cookie.is_some() { cookie_at } else { old_len };
            if let Some(region) = area.get_mut(..xml_end) {
                region.fill(0);
                if let Some(dst) = region.get_mut(..new_xml.len()) {
                    dst.copy_from_slice(new_xml.as_bytes());
                }
            }
            (area, self.cookie_offset)
        } else {
            let cookie = cookie.unwrap_or_default();
            let needed = xml_len + cookie.len();
            let data_len = if needed <= old_len {
                old_len
            } else {
                needed + XML_PADDING_BYTES
            };
            let mut area = Vec::with_capacity(data_len);
            area.extend_from_slice(new_xml.as_bytes());
            area.push(0);
            area.extend_from_slice(cookie);
            area.resize(data_len, 0);
            let offset = if cookie.is_empty() {
                0
            } else {
                len_u32(xml_len)
            };
            (area, offset)
        };
        check_xml_area(area.len() as u64, cookie_offset)?;
        Ok((area, cookie_offset))
    }
}

pub(super) fn check_libvirt_version(version: u32) -> Result<(), SaveFileError> {
    if version == 0 || version > LIBVIRT_MAX_VERSION {
        return Err(SaveFileError::UnsupportedVersion {
            what: "libvirt save header",
            version,
        });
    }
    Ok(())
}

/// Checks `data_len` and the cookie offset.
pub(super) fn check_xml_area(data_len: u64, cookie_offset: u32) -> Result<(), SaveFileError> {
    if data_len == 0 {
        return Err(SaveFileError::BadXml {
            reason: "xml area is empty",
        });
    }
    if data_len > MAX_SAVE_XML_BYTES {
        return Err(SaveFileError::TooLarge {
            what: "xml area",
            size: data_len,
            limit: MAX_SAVE_XML_BYTES,
        });
    }
    if u64::from(cookie_offset) > data_len {
        return Err(SaveFileError::BadXml {
            reason: "cookie offset lies outside the xml area",
        });
    }
    Ok(())
}

/// Checks one block of the block list.
pub(super) fn check_block(name: &str, length: u64) -> Result<(), SaveFileError> {
    if length % CHUNK_SIZE_U64 != 0 {
        return Err(SaveFileError::BlockNotPageAligned {
            name: name.to_owned(),
            length,
        });
    }
    Ok(())
}

pub(super) fn check_ram_total(total: u64) -> Result<(), SaveFileError> {
    if total > MAX_RAM_BYTES {
        return Err(SaveFileError::TooLarge {
            what: "guest ram",
            size: total,
            limit: MAX_RAM_BYTES,
        });
    }
    Ok(())
}

/// Checks a preamble as the reader would: it parses whole, up to where the ram START
/// section begins.
fn validate_preamble(preamble: &[u8]) -> Result<(), SaveFileError> {
    if preamble.len() as u64 > MAX_QEMU_CONFIG_BYTES {
        return Err(SaveFileError::TooLarge {
            what: "qemu preamble",
            size: preamble.len() as u64,
            limit: MAX_QEMU_CONFIG_BYTES,
        });
    }
    let start = [SECTION_START];
    let mut input = Input::new(preamble.chain(&start[..]));
    let type_byte = wire::read_preamble(&mut input)?;
    if type_byte != SECTION_START || input.pos() != preamble.len() as u64 + 1 {
        return Err(SaveFileError::BadLayoutBlob {
            reason: "qemu preamble has extra bytes",
        });
    }
    Ok(())
}

/// A length as the u32 our formats store (saturated: the result then fails validation).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len_u32(bytes.len()).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn truncated(what: &'static str) -> impl FnOnce(cursor::Truncated) -> SaveFileError {
    move |_| SaveFileError::Truncated { what }
}

/// The crate's cursor, naming what was being read when a serialized layout ends early.
struct Cursor<'a>(cursor::Cursor<'a>);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SaveFileError> {
        self.0.bytes(n).map_err(truncated(what))
    }

    fn le32(&mut self, what: &'static str) -> Result<u32, SaveFileError> {
        self.0.u32_le().map_err(truncated(what))
    }

    fn le64(&mut self, what: &'static str) -> Result<u64, SaveFileError> {
        self.0.u64_le().map_err(truncated(what))
    }

    /// A u32 length (checked against `limit`) and that many bytes.
    fn sized(&mut self, what: &'static str, limit: u64) -> Result<&'a [u8], SaveFileError> {
        let len = self.le32(what)?;
        if u64::from(len) > limit {
            return Err(SaveFileError::TooLarge {
                what,
                size: u64::from(len),
                limit,
            });
        }
        let len = usize::try_from(len).map_err(|_| SaveFileError::Truncated { what })?;
        self.take(len, what)
    }
}
