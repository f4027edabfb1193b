//! [`SaveFileWriter`]: writes a save file from a layout, pages and a device state.

use std::io::{self, Write};

use super::wire::{
    FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_ZERO, LIBVIRT_MAGIC,
    LIBVIRT_UNUSED_WORDS, MAX_IDSTR_BYTES, RAM_IDSTR, SECTION_END, SECTION_FOOTER, SECTION_PART,
    SECTION_START,
};
use super::{SaveFileError, SaveFileLayout, LIBVIRT_HEADER_BYTES};
use crate::chunk::{is_zero, Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};
use crate::limits::MAX_DEVICE_STATE_BYTES;

/// Streaming writer of a save file.
///
/// [`new`](Self::new) writes everything up to an open ram PART section;
/// [`write_page`](Self::write_page) appends one page record;
/// [`finish`](Self::finish) closes the ram section and appends the device state.
///
/// Every page of the layout should be written exactly once, in any order: this is the
/// caller's job and is not checked (a page written twice is loaded twice by QEMU, the last
/// copy winning; a page never written is left zero by QEMU; our reader refuses the
/// former). Writes are small, so pass a `BufWriter`.
pub struct SaveFileWriter<W: Write> {
    out: W,
    written: u64,
    section_id: u32,
    /// Block names, in layout order.
    names: Vec<Vec<u8>>,
    /// Global index of each block's first page.
    first_pages: Vec<u64>,
    total_pages: u64,
    /// Block of the previous page record (the next one in it gets CONTINUE).
    last_block: Option<usize>,
}

impl<W: Write> SaveFileWriter<W> {
    /// Writes the libvirt header and XML area (with `domain_xml` replacing the stored
    /// domain XML when given, see below), the QEMU preamble, the ram START section
    /// (MEM_SIZE, block list, EOS, footer), and opens a ram PART section.
    ///
    /// A replacement XML that fits before the cookie is written in place (the rest zeroed);
    /// otherwise the cookie moves to right after it, and `data_len` grows to the XML, the
    /// cookie and 64 KiB of zero padding when the area is too small, as libvirt does.
    /// The header's unused words are written as zero. The layout is validated first.
    pub fn new(
        writer: W,
        layout: &SaveFileLayout,
        domain_xml: Option<&str>,
    ) -> Result<Self, SaveFileError> {
        let prefix = prefix(layout, domain_xml)?;
        let mut w = Self::records_at(writer, layout, 0)?;
        w.put(&prefix)?;
        Ok(w)
    }

    /// A writer of page records (and [`finish`](Self::finish)'s tail) only, for the part
    /// of a save file that starts at byte `at`: the rest of the file is written by others,
    /// e.g. the [`prefix`] and other writers' records. Offsets returned count from the
    /// start of the file. The first record names its block.
    pub fn records_at(writer: W, layout: &SaveFileLayout, at: u64) -> Result<Self, SaveFileError> {
        layout.validate()?;
        let mut first_pages = Vec::with_capacity(layout.blocks.len());
        let mut next_first = 0u64;
        for block in &layout.blocks {
            first_pages.push(next_first);
            next_first += block.length / CHUNK_SIZE_U64;
        }
        Ok(SaveFileWriter {
            out: writer,
            written: at,
            section_id: layout.ram_section_id,
            names: layout
                .blocks
                .iter()
                .map(|b| b.name.as_bytes().to_vec())
                .collect(),
            first_pages,
            total_pages: next_first,
            last_block: None,
        })
    }

    /// Writes one page (by global index): a ZERO record if it is all zero, else a PAGE
    /// record; CONTINUE when the previous record was in the same block. Returns the byte
    /// offset in the output of the page's 4096 data bytes for a PAGE record, `None` for a
    /// ZERO record.
    pub fn write_page(
        &mut self,
        global_page: u64,
        data: &Chunk,
    ) -> Result<Option<u64>, SaveFileError> {
        self.write_record(global_page, (!is_zero(data)).then_some(data))
    }

    /// Writes one page record as asked: a PAGE record with `data` (even if it is all zero),
    /// or a ZERO record for `None`. Returns what [`write_page`](Self::write_page) returns.
    pub fn write_record(
        &mut self,
        global_page: u64,
        data: Option<&Chunk>,
    ) -> Result<Option<u64>, SaveFileError> {
        let out_of_range = SaveFileError::PageOutOfRange {
            index: global_page,
            pages: self.total_pages,
        };
        if global_page >= self.total_pages {
            return Err(out_of_range);
        }
        // The last block starting at or before the page: never an empty one, since an
        // empty block shares its start with the next block.
        let block = self
            .first_pages
            .partition_point(|&first| first <= global_page)
            .checked_sub(1)
            .ok_or(out_of_range)?;
        let first = self.first_pages.get(block).copied().unwrap_or_default();
        let address = (global_page - first) * CHUNK_SIZE_U64;
        let mut header = address | if data.is_some() { FLAG_PAGE } else { FLAG_ZERO };
        let continues = self.last_block == Some(block);
        if continues {
            header |= FLAG_CONTINUE;
        }
        // Header, optional name, optional fill byte: at most 8 + 1 + 255 + 1 bytes.
        let mut rec = [0u8; 8 + 1 + MAX_IDSTR_BYTES + 1];
        let mut len = 8;
        rec[..8].copy_from_slice(&header.to_be_bytes());
        if !continues {
            let name = self.names.get(block).map(Vec::as_slice).unwrap_or_default();
            let name = name.get(..MAX_IDSTR_BYTES).unwrap_or(name);
            rec[8] = u8::try_from(name.len()).unwrap_or(u8::MAX);
            rec[9..9 + name.len()].copy_from_slice(name);
            len += 1 + name.len();
        }
        if data.is_none() {
            len += 1; // fill byte 0, already there
        }
        self.put(&rec[..len])?;
        self.last_block = Some(block);
        let Some(data) = data else {
            return Ok(None);
        };
        let offset = self.written;
        self.put(data)?;
        Ok(Some(offset))
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The inner writer (e.g. to flush it and read back a page already written). Do not
    /// write through it: the stream and the offsets [`write_page`](Self::write_page)
    /// returns would no longer match.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The inner writer, without the tail [`finish`](Self::finish) writes (for a part of a
    /// file that others end).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Closes the PART section (EOS, footer), writes an empty ram END section (EOS,
    /// footer), then the device state verbatim; returns the inner writer, not flushed.
    /// The device state must be non-empty and at most [`MAX_DEVICE_STATE_BYTES`], as the
    /// reader requires.
    pub fn finish(mut self, device_state: &[u8]) -> Result<W, SaveFileError> {
        if device_state.is_empty() {
            return Err(SaveFileError::EmptyDeviceState);
        }
        if device_state.len() as u64 > MAX_DEVICE_STATE_BYTES {
            return Err(SaveFileError::TooLarge {
                what: "device state",
                size: device_state.len() as u64,
                limit: MAX_DEVICE_STATE_BYTES,
            });
        }
        let id = self.section_id;
        let mut tail = Vec::with_capacity(32);
        tail.extend_from_slice(&FLAG_EOS.to_be_bytes());
        push_footer(&mut tail, id);
        tail.push(SECTION_END);
        tail.extend_from_slice(&id.to_be_bytes());
        tail.extend_from_slice(&FLAG_EOS.to_be_bytes());
        push_footer(&mut tail, id);
        self.put(&tail)?;
        self.put(device_state)?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SaveFileError> {
        self.out.write_all(bytes).map_err(SaveFileError::Io)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// A u8 length and the name (validated layouts have names of 1 to 255 bytes).
fn push_name(out: &mut Vec<u8>, name: &[u8]) {
    let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(name.get(..usize::from(len)).unwrap_or(name));
}

fn push_footer(out: &mut Vec<u8>, section_id: u32) {
    out.push(SECTION_FOOTER);
    out.extend_from_slice(&section_id.to_be_bytes());
}

/// Length of the records one writer writes for `pages` (global index, and whether it gets
/// a PAGE record rather than a ZERO record), in this order.
pub fn records_len(
    layout: &SaveFileLayout,
    pages: impl IntoIterator<Item = (u64, bool)>,
) -> Result<u64, SaveFileError> {
    let mut w = SaveFileWriter::records_at(io::sink(), layout, 0)?;
    let data = [0u8; CHUNK_SIZE_BYTES];
    for (page, has_data) in pages {
        w.write_record(page, has_data.then_some(&data))?;
    }
    Ok(w.bytes_written())
}

/// Everything before the first page record of a save file: the libvirt header and XML
/// area (see [`SaveFileWriter::new`]), the QEMU preamble, the ram START section and the
/// opening of a ram PART section. The layout is validated first.
pub fn prefix(layout: &SaveFileLayout, domain_xml: Option<&str>) -> Result<Vec<u8>, SaveFileError> {
    layout.validate()?;
    let rebuilt = domain_xml
        .map(|xml| layout.rebuilt_xml_area(xml))
        .transpose()?;
    let (xml_area, cookie_offset) = match &rebuilt {
        Some((area, offset)) => (area.as_slice(), *offset),
        None => (layout.xml_area.as_slice(), layout.cookie_offset),
    };
    let data_len = u32::try_from(xml_area.len()).map_err(|_| SaveFileError::TooLarge {
        what: "xml area",
        size: xml_area.len() as u64,
        limit: u64::from(u32::MAX),
    })?;

    let mut out = Vec::with_capacity(LIBVIRT_HEADER_BYTES + xml_area.len() + 4096);
    out.extend_from_slice(LIBVIRT_MAGIC);
    for v in [
        layout.libvirt_version,
        data_len,
        layout.was_running,
        0,
        cookie_offset,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.resize(out.len() + LIBVIRT_UNUSED_WORDS * 4, 0);
    debug_assert_eq!(out.len(), LIBVIRT_HEADER_BYTES);
    out.extend_from_slice(xml_area);
    out.extend_from_slice(&layout.qemu_preamble);

    let id = layout.ram_section_id;
    out.push(SECTION_START);
    out.extend_from_slice(&id.to_be_bytes());
    push_name(&mut out, RAM_IDSTR);
    out.extend_from_slice(&layout.ram_instance_id.to_be_bytes());
    out.extend_from_slice(&layout.ram_version_id.to_be_bytes());
    out.extend_from_slice(&(layout.ram_bytes() | FLAG_MEM_SIZE).to_be_bytes());
    for block in &layout.blocks {
        push_name(&mut out, block.name.as_bytes());
        out.extend_from_slice(&block.length.to_be_bytes());
    }
    out.extend_from_slice(&FLAG_EOS.to_be_bytes());
    push_footer(&mut out, id);
    out.push(SECTION_PART);
    out.extend_from_slice(&id.to_be_bytes());
    Ok(out)
}
